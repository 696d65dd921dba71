//! The JSON Schema of the pipeline format, generated from the model types.
//!
//! Editors use it for completion and inline checks (e.g. with
//! `# yaml-language-server: $schema=...`). The copy committed in the book
//! is compared with this one by a test, so it cannot drift.
//!
//! The same schemas tell the parsers which keys each mapping may have
//! (`keys`, `variant_keys`), so a field added to a type is a key the
//! parser knows, and there is no second list to forget.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

/// The schema as pretty-printed JSON, ending with a newline.
pub fn pipeline_schema_json() -> String {
    let schema = schemars::schema_for!(crate::Pipeline);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The keys of a YAML mapping read as a `T`, as its serde attributes name
/// them: the properties of its JSON Schema, with those of its flattened
/// parts, in the schema's (alphabetical) order. Meant for statics: the
/// names live as long as the program.
pub(crate) fn keys<T: JsonSchema>() -> Vec<&'static str> {
    let mut out = Vec::new();
    collect(&inline::<T>(), true, &mut out);
    out
}

/// The keys `T` declares itself, without those of its flattened parts.
pub(crate) fn own_keys<T: JsonSchema>() -> Vec<&'static str> {
    let mut out = Vec::new();
    collect(&inline::<T>(), false, &mut out);
    out
}

/// For an enum `T` tagged with the key `tag`, the keys of the variant
/// whose tag is `value` (the tag among them); empty if it has none.
pub(crate) fn variant_keys<T: JsonSchema>(tag: &str, value: &str) -> Vec<&'static str> {
    let schema = inline::<T>();
    let mut out = Vec::new();
    let variants = ["oneOf", "anyOf"].iter().filter_map(|k| schema.get(*k)?.as_array()).flatten();
    for variant in variants {
        let t = variant.pointer(&format!("/properties/{tag}"));
        let names = t
            .and_then(|t| t.get("const"))
            .into_iter()
            .chain(t.and_then(|t| t.get("enum")?.as_array()).into_iter().flatten());
        if names.into_iter().any(|n| n.as_str() == Some(value)) {
            collect(variant, true, &mut out);
        }
    }
    out
}

/// The schema of `T` as JSON, with every subschema written in place.
fn inline<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

fn collect(schema: &Value, deep: bool, out: &mut Vec<&'static str>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for name in properties.keys() {
            if !out.contains(&name.as_str()) {
                out.push(Box::leak(name.clone().into_boxed_str()));
            }
        }
    }
    if deep {
        for parts in ["allOf", "anyOf", "oneOf"].iter().filter_map(|k| schema.get(*k)?.as_array()) {
            for part in parts {
                collect(part, deep, out);
            }
        }
    }
}

/// A list of names or patterns; one alone may be written without the
/// brackets, as the parser reads it.
pub(crate) fn list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" } } ]
    })
}

/// `retries:` is a count or a `{count, backoff}` mapping.
pub(crate) fn retries(generator: &mut SchemaGenerator) -> Schema {
    let full = generator.subschema_for::<crate::Retries>();
    json_schema!({
        "description": "How often to retry a failed attempt: a count, or `{count, backoff}`.",
        "anyOf": [ { "type": "integer", "minimum": 0, "maximum": 100 }, full ]
    })
}

/// `on:` is an event, a list of events, or a mapping of events to their
/// filters (empty for none).
pub(crate) fn triggers(generator: &mut SchemaGenerator) -> Schema {
    let full = generator.subschema_for::<crate::Triggers>();
    let event = json_schema!({ "enum": ["push", "pull_request", "manual"] });
    json_schema!({
        "description": "The events of its repository that start the pipeline: `push`, `pull_request`, `manual`, each with its filters.",
        "anyOf": [ event, { "type": "array", "items": event }, full ]
    })
}

/// Each parameter is a full spec or a bare default (a string parameter).
pub(crate) fn params(generator: &mut SchemaGenerator) -> Schema {
    let spec = generator.subschema_for::<crate::ParamSpec>();
    json_schema!({
        "description": "Parameters a run can set with `--param NAME=VALUE`, used as `${{ params.NAME }}`. A bare value is a string parameter with that default.",
        "type": "object",
        "additionalProperties": { "anyOf": [ { "type": ["string", "number", "boolean"] }, spec ] }
    })
}

#[cfg(test)]
mod tests {
    /// The committed copy in the book is what editors load; it must be
    /// what the types say. `AIRLOCK_BLESS=1` rewrites it.
    #[test]
    fn committed_schema_matches_the_types() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src/reference/pipeline.schema.json");
        let generated = super::pipeline_schema_json();
        if std::env::var_os("AIRLOCK_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date; run `AIRLOCK_BLESS=1 cargo test -p airlock-model schema` and commit it",
            path.display()
        );
    }

    /// The schema as a validator sees it, from the committed text.
    fn validator() -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(&super::pipeline_schema_json()).expect("schema is JSON");
        jsonschema::draft202012::new(&schema).expect("a valid draft 2020-12 schema")
    }

    fn as_json(src: &str) -> serde_json::Value {
        let (root, errors) = crate::yaml::parse(src);
        assert!(errors.is_empty(), "{errors:?}");
        crate::parse::to_json(&root.expect("a document"))
    }

    /// What the parser accepts, an editor using the schema accepts too:
    /// every pipeline in the repository.
    #[test]
    fn the_pipelines_of_the_repository_satisfy_the_schema() {
        let validator = validator();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("pipelines dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let doc = as_json(&std::fs::read_to_string(&path).expect("read"));
            let errors: Vec<String> =
                validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{}: {}", path.display(), errors.join("; "));
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} pipelines found in {}", dir.display());
    }

    /// Each kind of step has its own keys, in the schema as in the parser.
    #[test]
    fn the_schema_refuses_keys_of_another_kind_of_step() {
        let validator = validator();
        let ok = "name: p\nsteps:\n  b:\n    uses: b.wasm\n    retries: 2\n    outputs: dist/**\n  s:\n    needs: b\n    timeout: 1m\n    publish: { target: t, from: b }\n";
        assert!(validator.is_valid(&as_json(ok)));
        for bad in [
            // A publish step has no sandbox to retry or to limit.
            "name: p\nsteps:\n  s:\n    retries: 2\n    publish: { target: t, from: [b] }\n",
            "name: p\nsteps:\n  s:\n    limits: { memory: 1MiB }\n    deploy: { environment: e, from: [b] }\n",
            // A step is something: a plugin, or a host step.
            "name: p\nsteps:\n  s:\n    needs: [b]\n",
            "name: p\nsteps:\n  s:\n    uses: b.wasm\n    colour: blue\n",
        ] {
            assert!(!validator.is_valid(&as_json(bad)), "the schema accepts:\n{bad}");
        }
    }
}
