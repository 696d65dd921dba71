//! The JSON Schema of the pipeline format, generated from the model types.
//!
//! Editors use it for completion and inline checks (e.g. with
//! `# yaml-language-server: $schema=...`). The copy committed in the book
//! is compared with this one by a test, so it cannot drift.

use schemars::{Schema, SchemaGenerator, json_schema};

/// The schema as pretty-printed JSON, ending with a newline.
pub fn pipeline_schema_json() -> String {
    let schema = schemars::schema_for!(crate::Pipeline);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// `retries:` is a count or a `{count, backoff}` mapping.
pub(crate) fn retries(generator: &mut SchemaGenerator) -> Schema {
    let full = generator.subschema_for::<crate::Retries>();
    json_schema!({
        "description": "How often to retry a failed attempt: a count, or `{count, backoff}`.",
        "anyOf": [ { "type": "integer", "minimum": 0, "maximum": 100 }, full ]
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
}
