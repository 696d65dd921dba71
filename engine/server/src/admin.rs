//! The admin API: what other commands need from the process that holds
//! the state directory (an `airlock serve`, or an `airlock run` waiting
//! for approvals): tokens, and decisions on approval requests.
//!
//! It is served only on a Unix socket in the state directory
//! (`STATE_DIR/run/admin.sock`, in a directory only the engine's user may
//! enter), never on the network: whoever can open the socket could open
//! the state directory itself, so the file system's permissions are its
//! authentication. `airlock token create|list|revoke` and `airlock
//! approve` use it when such a process is running.
//!
//! | call | body | answer |
//! |------|------|--------|
//! | `POST /admin/v1/tokens` | [`CreateToken`] | `201` `{"token": "alk_...", "record": {...}}` |
//! | `GET /admin/v1/tokens` | | `{"tokens": [...]}` |
//! | `POST /admin/v1/tokens/ID/revoke` | | `{"record": {...}}` |
//! | `GET /admin/v1/approvals` | | `{"pending": [...]}`: requests waiting for decisions |
//! | `POST /admin/v1/approvals/RUN/STEP` | [`Decide`] | `{"record": {...}}`: the request with the decision |
//!
//! A decision names its user by their API token, checked against the
//! policy the engine holds, not by a name the caller could choose.

use crate::conn::RequestBody;
use crate::{App, Body, error, json, read_json};
use airlock_store::{Scope, StoreError, TokenRecord, TokenSpec};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

/// Where the admin socket of a state directory is.
pub fn socket_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("run").join("admin.sock")
}

/// A token to create, as the admin API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `ACTION:TARGET/PREFIX`, e.g. `publish:snapshots/pr-481-`.
    #[schemars(regex(pattern = r"^publish:[A-Za-z0-9_-]+(/[A-Za-z0-9_-][A-Za-z0-9_.-]*\*?|/\*?)?$"))]
    pub scope: String,
    /// Lifetime in ms: 30 days at most.
    #[schemars(range(min = 1, max = 2_592_000_000u64))]
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

/// A decision on an approval request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// The deciding user's API token (see `airlock user token`).
    pub token: String,
    /// The request's one-time code.
    pub code: String,
    /// Approve (or deny).
    pub approve: bool,
    /// Why, for the audit.
    #[serde(default)]
    pub reason: Option<String>,
}

const MAX_BODY: usize = 64 << 10;

pub(crate) async fn route(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::POST, ["tokens"]) => create(app, req).await,
        // This socket is for the user who owns the state directory, and
        // who could read it whole: it answers the store's records.
        (Method::GET, ["tokens"]) => answer(list_tokens(app), |tokens| serde_json::json!({ "tokens": tokens })),
        (Method::POST, ["tokens", id, "revoke"]) => {
            answer(revoke_token(app, id), |record| serde_json::json!({ "record": record }))
        }
        (Method::GET, ["approvals"]) => match app.store.pending_approvals() {
            Ok(pending) => json(StatusCode::OK, &serde_json::json!({ "pending": pending })),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        },
        (Method::POST, ["approvals", run, step]) => {
            let (run, step) = (run.to_string(), step.to_string());
            decide(app, &run, &step, req).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", format!("no admin call `{} {path}`", req.method())),
    }
}

async fn decide(app: &App, run: &str, step: &str, req: Request<RequestBody>) -> Response<Body> {
    let body: Decide = match read_json(app, req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // A run may be named by a prefix of its id, or `last`.
    let run = match app.store.find_run(run) {
        Ok(r) => r.id,
        Err(e) => return error(StatusCode::NOT_FOUND, "no_run", e.to_string()),
    };
    let Some(user) = app.user_of(&body.token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unknown_user",
            "that token is no user's in the engine's policy; `airlock user token` makes one for the policy".into(),
        );
    };
    answer(
        decision(app, &run, step, &user, &body.code, body.approve, body.reason.as_deref()),
        |record| serde_json::json!({ "record": record }),
    )
}

/// A success as `shape` makes it, or the refusal.
pub(crate) fn answer<T>(
    result: Result<T, Response<Body>>,
    shape: impl FnOnce(T) -> serde_json::Value,
) -> Response<Body> {
    match result {
        Ok(value) => json(StatusCode::OK, &shape(value)),
        Err(r) => r,
    }
}

/// Records `user`'s decision on the request of `run`'s `step`.
pub(crate) fn decision(
    app: &App,
    run: &str,
    step: &str,
    user: &str,
    code: &str,
    approve: bool,
    reason: Option<&str>,
) -> Result<airlock_store::ApprovalRecord, Response<Body>> {
    let reason = reason.map(|r| airlock_model::text::one_line(r, 1000));
    match app.store.decide(run, step, user, code, approve, reason.as_deref()) {
        Ok(record) => Ok(record),
        Err(e) => {
            use airlock_store::ApprovalError as E;
            let (status, code) = match &e {
                E::NoRequest { .. } => (StatusCode::NOT_FOUND, "no_request"),
                E::NotApprover { .. } => (StatusCode::FORBIDDEN, "not_approver"),
                E::Requester { .. } => (StatusCode::FORBIDDEN, "requester_may_not_approve"),
                E::WrongCode { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code"),
                E::AlreadyDecided { .. } => (StatusCode::CONFLICT, "already_decided"),
                E::AlreadyVoted { .. } => (StatusCode::CONFLICT, "already_voted"),
                E::TimedOut => (StatusCode::GONE, "timed_out"),
                E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
            };
            Err(error(status, code, e.to_string()))
        }
    }
}

/// Every token.
pub(crate) fn list_tokens(app: &App) -> Result<Vec<TokenRecord>, Response<Body>> {
    app.store.tokens().map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))
}

/// Revokes a token.
pub(crate) fn revoke_token(app: &App, id: &str) -> Result<TokenRecord, Response<Body>> {
    app.store.revoke_token(id).map_err(|e| match e {
        StoreError::NoToken(_) => error(StatusCode::NOT_FOUND, "no_token", e.to_string()),
        StoreError::AmbiguousToken { .. } => error(StatusCode::CONFLICT, "ambiguous_token", e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    })
}

async fn create(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let created = match read_json(app, req, MAX_BODY).await {
        Ok(body) => create_token(app, body),
        Err(r) => return r,
    };
    match created {
        Ok((token, record)) => json(StatusCode::CREATED, &serde_json::json!({ "token": token, "record": record })),
        Err(r) => r,
    }
}

/// Makes a token as `body` says, checking its scope against the
/// targets; answers the secret and the record.
pub(crate) fn create_token(app: &App, body: CreateToken) -> Result<(String, TokenRecord), Response<Body>> {
    let scope = Scope::parse(&body.scope).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, "bad_scope", e))?;
    // A process without a policy (an `airlock run` of a pipeline that
    // publishes nothing) has no targets to check the scope against.
    if !app.targets.is_empty() && !app.targets.contains_key(&scope.target) {
        let names: Vec<&str> = app.targets.keys().map(String::as_str).collect();
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_target",
            format!("no publish target `{}` on this server; it has: {}", scope.target, names.join(", ")),
        ));
    }
    let cidr = body
        .cidr
        .as_deref()
        .map(str::parse::<ipnet::IpNet>)
        .transpose()
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, "bad_cidr", format!("`cidr`: {e}")))?;
    let mut spec = TokenSpec::new(scope, body.ttl_ms);
    spec.not_before_ms = body.not_before_ms;
    spec.max_calls = body.max_calls;
    spec.max_files = body.max_files;
    spec.max_bytes = body.max_bytes;
    spec.cidr = cidr;
    spec.note = body.note;
    app.store.create_token(&spec).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, "bad_token", e))
}
