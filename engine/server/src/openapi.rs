//! The OpenAPI document of the run API, made from the table the router
//! uses ([`crate::api::ENDPOINTS`]) and the types the handlers answer
//! with, so that it cannot say something the server does not do. A
//! committed copy (`book/src/reference/openapi.json`) is checked against
//! it by a test.

use crate::api::{ENDPOINTS, ErrorBody};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// The document, as JSON.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error = generator.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(e.operation));
        op.insert("summary".into(), json!(e.summary));
        op.insert("x-airlock-role".into(), json!(e.need.as_str()));
        let parameters: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !parameters.is_empty() {
            op.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(request) = e.request {
            let schema = request(&mut generator);
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema}}}),
            );
        }
        let success = match e.response {
            Some(response) => json!({"schema": response(&mut generator)}),
            None => json!({"schema": {"type": "string", "format": "binary"}}),
        };
        let mut responses = Map::new();
        for (status, description) in e.success {
            responses.insert(status.to_string(), json!({"description": description, "content": {e.produces: success}}));
        }
        responses.insert(
            "default".into(),
            json!({"description": "an error, with a stable code", "content": {"application/json": {"schema": error}}}),
        );
        op.insert("responses".into(), Value::Object(responses));
        let path = paths.entry(e.path).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = path {
            methods.insert(e.method.to_ascii_lowercase(), Value::Object(op));
        }
    }
    let mut schemas = Value::Object(generator.take_definitions(true));
    bound_integers(&mut schemas);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "airlock run API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs, logs, artifacts, approvals and tokens of an `airlock serve`. Every call \
                            authenticates a user of the admin policy with `Authorization: Bearer alu_...`; \
                            `x-airlock-role` names the role each call needs (`admin` may call anything)."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"user": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"user": []}]
    })
}

/// Gives every integer the bounds of the Rust type it is read into (the
/// generator says `format: uint64` and a minimum of 0, no maximum): a
/// value past them is refused by the server, so the document says so.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let most = match map.get("format").and_then(Value::as_str) {
                Some("uint64") => Some(u64::MAX),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint8") => Some(u64::from(u8::MAX)),
                _ => None,
            };
            if let Some(most) = most {
                map.entry("maximum").or_insert(json!(most));
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    /// The committed copy is what the server describes; `AIRLOCK_BLESS=1
    /// cargo test -p airlock-server openapi` writes it anew.
    #[test]
    fn the_committed_openapi_document_has_not_drifted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src/reference/openapi.json");
        let mut made = serde_json::to_string_pretty(&super::document()).expect("json");
        made.push('\n');
        if std::env::var_os("AIRLOCK_BLESS").is_some() {
            std::fs::write(&path, &made).expect("write openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == made,
            "book/src/reference/openapi.json differs from what the server describes; \
             run `AIRLOCK_BLESS=1 cargo test -p airlock-server openapi` and commit it"
        );
    }

    /// Every endpoint answers JSON errors with the shared error schema, and
    /// every path variable is declared.
    #[test]
    fn every_operation_has_a_role_and_its_parameters() {
        let doc = super::document();
        for (path, methods) in doc["paths"].as_object().expect("paths") {
            for (method, op) in methods.as_object().expect("methods") {
                assert!(op["x-airlock-role"].is_string(), "{method} {path}");
                let vars = path.matches('{').count();
                let declared = op["parameters"].as_array().map(Vec::len).unwrap_or(0);
                assert_eq!(vars, declared, "{method} {path}");
            }
        }
    }

    /// The book's table of calls lists every endpoint with its role, so
    /// the reference cannot leave one out.
    #[test]
    fn the_book_lists_every_call_with_its_role() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/src/reference/api.md");
        let book = std::fs::read_to_string(path).expect("api.md");
        for e in crate::api::ENDPOINTS {
            let row = format!("| `{} {}` | {} |", e.method, e.path, e.need.as_str());
            assert!(book.contains(&row), "book/src/reference/api.md has no row starting `{row}`");
        }
    }
}
