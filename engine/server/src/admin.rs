//! The admin API: token management while the server holds the state.
//!
//! It is served only on a Unix socket in the state directory
//! (`STATE_DIR/run/serve.sock`, in a directory only the server's user may
//! enter), never on the network: whoever can open the socket could open
//! the state directory itself, so the file system's permissions are its
//! authentication. `airlock token create|list|revoke` use it when a server
//! is running on their state directory.
//!
//! | call | body | answer |
//! |------|------|--------|
//! | `POST /admin/v1/tokens` | [`CreateToken`] | `201` `{"token": "alk_...", "record": {...}}` |
//! | `GET /admin/v1/tokens` | | `{"tokens": [...]}` |
//! | `POST /admin/v1/tokens/ID/revoke` | | `{"record": {...}}` |

use crate::{App, Body, error, json, read_json};
use airlock_store::{Scope, StoreError, TokenSpec};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

/// Where the admin socket of a state directory is.
pub fn socket_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("run").join("serve.sock")
}

/// A token to create, as the admin API takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `ACTION:TARGET/PREFIX`.
    pub scope: String,
    /// Lifetime in ms.
    pub ttl_ms: u64,
    /// Not usable before (ms since the epoch).
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    /// Uses at most.
    #[serde(default)]
    pub max_calls: Option<u64>,
    /// Files at most.
    #[serde(default)]
    pub max_files: Option<u64>,
    /// Bytes at most.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Source addresses, e.g. `10.0.0.0/8`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// For the record.
    #[serde(default)]
    pub note: Option<String>,
}

const MAX_BODY: usize = 64 << 10;

pub(crate) async fn route(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::POST, ["tokens"]) => create(app, req).await,
        (Method::GET, ["tokens"]) => match app.store.tokens() {
            Ok(tokens) => json(StatusCode::OK, &serde_json::json!({ "tokens": tokens })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        },
        (Method::POST, ["tokens", id, "revoke"]) => match app.store.revoke_token(id) {
            Ok(record) => json(StatusCode::OK, &serde_json::json!({ "record": record })),
            Err(e @ StoreError::NoToken(_)) => error(StatusCode::NOT_FOUND, "no_token", e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        },
        _ => error(StatusCode::NOT_FOUND, "not_found", format!("no admin call `{} {path}`", req.method())),
    }
}

async fn create(app: &App, req: Request<Incoming>) -> Response<Body> {
    let body: CreateToken = match read_json(req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let scope = match Scope::parse(&body.scope) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_scope", e),
    };
    if !app.targets.contains_key(&scope.target) {
        let names: Vec<&str> = app.targets.keys().map(String::as_str).collect();
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_target",
            format!("no publish target `{}` on this server; it has: {}", scope.target, names.join(", ")),
        );
    }
    let cidr = match body.cidr.as_deref().map(str::parse::<ipnet::IpNet>).transpose() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_cidr", format!("`cidr`: {e}")),
    };
    let mut spec = TokenSpec::new(scope, body.ttl_ms);
    spec.not_before_ms = body.not_before_ms;
    spec.max_calls = body.max_calls;
    spec.max_files = body.max_files;
    spec.max_bytes = body.max_bytes;
    spec.cidr = cidr;
    spec.note = body.note;
    match app.store.create_token(&spec) {
        Ok((token, record)) => json(StatusCode::CREATED, &serde_json::json!({ "token": token, "record": record })),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "bad_token", e),
    }
}
