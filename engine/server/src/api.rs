//! The run API: submit, follow, cancel and inspect runs, decide
//! approvals and manage tokens, for the users of the admin policy.
//!
//! Every call names its user with `Authorization: Bearer alu_...` (the
//! API token `airlock user token` makes; the policy keeps its sha256), or
//! with the session cookie the web pages' sign-in sets. What a user may
//! call follows from their roles, in one table ([`ENDPOINTS`]): the
//! router finds the endpoint there and checks the role before any
//! handler runs, so an endpoint without a role cannot exist. The same
//! table makes the OpenAPI document ([`crate::openapi`]).
//!
//! Errors are JSON with stable codes, as in the publish API.

use crate::conn::RequestBody;
use crate::views::{self, Approval, RunState, Step, Token};
use crate::{App, Body, error, full, json};
use airlock_model::policy::Role;
use airlock_store::RunRecord;
use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who may call an endpoint. Every role may read; `admin` may do anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any user of the policy.
    Viewer,
    /// Users with `runner` (or `admin`).
    Runner,
    /// Users with `approver` (or `admin`); the environment's approver
    /// groups still decide whose decision counts.
    Approver,
    /// Users with `admin`.
    Admin,
}

impl Need {
    /// Whether a user with `roles` may call it.
    pub fn allows(self, roles: &[Role]) -> bool {
        let has = |r: Role| roles.contains(&r) || roles.contains(&Role::Admin);
        match self {
            Need::Viewer => !roles.is_empty(),
            Need::Runner => has(Role::Runner),
            Need::Approver => has(Role::Approver),
            Need::Admin => has(Role::Admin),
        }
    }

    /// The role's name, for errors and the API document.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Viewer => "viewer",
            Need::Runner => "runner",
            Need::Approver => "approver",
            Need::Admin => "admin",
        }
    }
}

/// What an endpoint takes or gives, for the API document.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// One call of the API.
pub struct Endpoint {
    /// `GET`, `POST`…
    pub method: &'static str,
    /// The path, with `{name}` for each variable part.
    pub path: &'static str,
    /// A stable name (the OpenAPI `operationId`).
    pub operation: &'static str,
    /// Who may call it.
    pub need: Need,
    /// What it does, in a line.
    pub summary: &'static str,
    /// The JSON body it takes.
    pub request: Option<SchemaFn>,
    /// What it answers with on success: a JSON schema, or none for text
    /// and bytes (`produces` says which).
    pub response: Option<SchemaFn>,
    /// The content type of a success.
    pub produces: &'static str,
    /// The statuses a success answers with, each with what it means.
    pub success: &'static [(u16, &'static str)],
}

/// What most calls answer when they succeed.
const OK: &[(u16, &str)] = &[(200, "success")];

fn schema<T: JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// Every call of the run API.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "GET",
        path: "/api/v1/whoami",
        operation: "whoami",
        need: Need::Viewer,
        summary: "The user the request authenticates as, with their roles.",
        request: None,
        response: Some(schema::<WhoAmI>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/metrics",
        operation: "getMetrics",
        need: Need::Viewer,
        summary: "The server's metrics for Prometheus, in the OpenMetrics text format: runs waiting and held over \
                  every server on the database, this server's runs, claims and take-overs, its steps' ends and \
                  durations. Scrape it with a viewer's token.",
        request: None,
        response: None,
        produces: airlock_runner::metrics::CONTENT_TYPE,
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/pipelines",
        operation: "listPipelines",
        need: Need::Viewer,
        summary: "The pipeline files this server runs.",
        request: None,
        response: Some(schema::<PipelineList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/runs",
        operation: "listRuns",
        need: Need::Viewer,
        summary: "Runs, newest first (`?limit=N`, default 100).",
        request: None,
        response: Some(schema::<RunList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/runs",
        operation: "submitRun",
        need: Need::Runner,
        summary: "Queues a run of a pipeline file of the server. With an `Idempotency-Key` header, sending the same \
                  key again answers the same run (200) instead of making another (201).",
        request: Some(schema::<SubmitBody>),
        response: Some(schema::<Submitted>),
        produces: "application/json",
        success: &[(201, "the run, queued now"), (200, "the run this idempotency key made before")],
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/runs/{run}",
        operation: "getRun",
        need: Need::Viewer,
        summary: "A run with each step's state, the DAG's edges and its approval requests. The one-time codes of \
                  waiting approvals are shown to the user who submitted the run and to no one else.",
        request: None,
        response: Some(schema::<RunDetail>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/runs/{run}/cancel",
        operation: "cancelRun",
        need: Need::Runner,
        summary: "Cancels a run that has not ended.",
        request: None,
        response: Some(schema::<RunOnly>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/runs/{run}/steps/{step}/log",
        operation: "getLog",
        need: Need::Viewer,
        summary: "A step's log, every attempt in order, from byte `?offset=N`. With `?follow=true` the answer goes \
                  on while the step runs and ends with it.",
        request: None,
        response: None,
        produces: "text/plain; charset=utf-8",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/runs/{run}/steps/{step}/provenance",
        operation: "getProvenance",
        need: Need::Viewer,
        summary: "The signed provenance of what a publish or deploy step published or deployed: a DSSE envelope of \
                  an in-toto statement with a SLSA provenance predicate (for a publish, as served beside the tree).",
        request: None,
        response: None,
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/runs/{run}/artifacts",
        operation: "listArtifacts",
        need: Need::Viewer,
        summary: "The outputs of a run's steps, with their digests.",
        request: None,
        response: Some(schema::<ArtifactList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/artifacts/{sha256}",
        operation: "getArtifact",
        need: Need::Viewer,
        summary: "An artifact's bytes, hashed as they are sent: a damaged artifact is cut off before its end.",
        request: None,
        response: None,
        produces: "application/octet-stream",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/approvals",
        operation: "listApprovals",
        need: Need::Viewer,
        summary: "Approval requests waiting for decisions.",
        request: None,
        response: Some(schema::<PendingList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/runs/{run}/approvals/{step}",
        operation: "decideApproval",
        need: Need::Approver,
        summary: "Approves or denies a waiting request with its one-time code, as the calling user.",
        request: Some(schema::<DecideBody>),
        response: Some(schema::<Decided>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/repositories/{repository}/runs",
        operation: "triggerRepository",
        need: Need::Runner,
        summary: "Runs the pipelines of a repository of the policy whose `on:` has `manual`, at the commit a branch \
                  or tag points at when the server asks the forge (moments later, as for a webhook). Trusted as a \
                  push of that ref would be. With an `Idempotency-Key` header, sending the same key again answers \
                  the same delivery. Follow it with `getDelivery`.",
        request: Some(schema::<TriggerBody>),
        response: Some(schema::<Triggered>),
        produces: "application/json",
        success: &[(202, "recorded; its runs start once the commit is fetched")],
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/repositories/{repository}/deliveries",
        operation: "listDeliveries",
        need: Need::Viewer,
        summary: "A repository's webhook deliveries and runs asked for by hand, newest first (`?limit=N`, default \
                  100; `?state=waiting` for those held for approval).",
        request: None,
        response: Some(schema::<DeliveryList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/repositories/{repository}/deliveries/{delivery}/approve",
        operation: "approveDelivery",
        need: Need::Runner,
        summary: "Lets a delivery held for approval (a first-time contributor's pull request, under the policy's \
                  `first_time_contributors: approve`) start its runs, as the calling user.",
        request: None,
        response: Some(schema::<views::Delivery>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/repositories/{repository}/deliveries/{delivery}",
        operation: "getDelivery",
        need: Need::Viewer,
        summary: "A webhook delivery or a run asked for by hand, and what it became: its runs, or why none started.",
        request: None,
        response: Some(schema::<views::Delivery>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "GET",
        path: "/api/v1/tokens",
        operation: "listTokens",
        need: Need::Admin,
        summary: "Publish tokens (never their secrets).",
        request: None,
        response: Some(schema::<TokenList>),
        produces: "application/json",
        success: OK,
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/tokens",
        operation: "createToken",
        need: Need::Admin,
        summary: "Makes a publish token; its secret is in this answer and nowhere else.",
        request: Some(schema::<crate::admin::CreateToken>),
        response: Some(schema::<TokenCreated>),
        produces: "application/json",
        success: &[(201, "the new token")],
    },
    Endpoint {
        method: "POST",
        path: "/api/v1/tokens/{id}/revoke",
        operation: "revokeToken",
        need: Need::Admin,
        summary: "Revokes a publish token.",
        request: None,
        response: Some(schema::<TokenOnly>),
        produces: "application/json",
        success: OK,
    },
];

/// `GET /api/v1/whoami`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct WhoAmI {
    /// The user's name in the policy.
    pub user: String,
    /// Their roles.
    pub roles: Vec<String>,
}

/// `GET /api/v1/pipelines`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PipelineList {
    /// Paths relative to the server's pipelines directory.
    pub pipelines: Vec<String>,
}

/// `GET /api/v1/runs`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

/// A run in a list: its record without the submitted source.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    /// Its id.
    pub id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline file.
    pub file: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: RunState,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Who submitted it, for runs submitted to a server.
    pub requester: Option<String>,
    /// The repository event that started it, for runs of a
    /// repository's pipelines.
    pub origin: Option<views::Origin>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        Self {
            id: r.id.clone(),
            pipeline: r.pipeline.clone(),
            file: r.file.clone(),
            state: r.state.into(),
            created_ms: r.created_ms,
            ended_ms: r.ended_ms,
            reason: r.reason.clone(),
            requester: r.submission.as_ref().map(|s| s.requester.clone()),
            origin: r.submission.as_ref().and_then(|s| s.origin.as_ref()).map(views::Origin::from),
        }
    }
}

/// `POST /api/v1/runs`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The pipeline file, relative to the server's pipelines directory.
    pub pipeline: String,
    /// Parameters, `NAME: VALUE`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// `POST /api/v1/repositories/{repository}/runs`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// The branch (`main`, or `refs/heads/main`) or tag (`refs/tags/v1.2`)
    /// whose commit runs.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// The answer to a run asked for by hand.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Triggered {
    /// The delivery that stands for it; its runs are listed there once
    /// they start.
    pub delivery: crate::views::Delivery,
    /// Whether this idempotency key asked before: then nothing new starts.
    pub duplicate: bool,
}

/// `GET /api/v1/repositories/{repository}/deliveries`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<views::Delivery>,
}

/// The answer to a submission.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Submitted {
    /// The run.
    pub run: RunSummary,
    /// False when the idempotency key had made this run before.
    pub created: bool,
}

/// `GET /api/v1/runs/{run}`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunDetail {
    /// The run.
    pub run: RunSummary,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Its steps in pipeline order.
    pub steps: Vec<Step>,
    /// For each step, the steps it needs (empty for runs of `airlock run`).
    pub needs: BTreeMap<String, Vec<String>>,
    /// Its approval requests.
    pub approvals: Vec<Approval>,
    /// One-time codes of waiting approvals, by step: only for the user
    /// who submitted the run.
    pub codes: BTreeMap<String, String>,
    /// What the forge was last told of the commit, for runs of a
    /// repository with a token.
    pub forge_status: Option<views::ForgeStatus>,
}

/// A run alone.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunOnly {
    /// The run.
    pub run: RunSummary,
}

/// `GET /api/v1/runs/{run}/artifacts`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactList {
    /// Every output of every step that succeeded.
    pub artifacts: Vec<RunArtifact>,
}

/// One output of a step.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunArtifact {
    /// The step.
    pub step: String,
    /// Its path in the step's workspace.
    pub path: String,
    /// sha256, hex: `GET /api/v1/artifacts/{sha256}` downloads it.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /api/v1/approvals`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PendingList {
    /// Requests waiting for decisions.
    pub pending: Vec<Approval>,
}

/// `POST /api/v1/runs/{run}/approvals/{step}`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// The request's one-time code.
    pub code: String,
    /// Approve (or deny).
    pub approve: bool,
    /// Why, for the audit.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A request with a decision.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Decided {
    /// The request as it is now.
    pub record: Approval,
}

/// `GET /api/v1/tokens`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    /// Every token.
    pub tokens: Vec<Token>,
}

/// A new token.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenCreated {
    /// The secret: shown once.
    pub token: String,
    /// Its record.
    pub record: Token,
}

/// A token's record.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TokenOnly {
    /// Its record.
    pub record: Token,
}

/// Every error of the API.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable code and a message for people.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// e.g. `forbidden`, `no_run`, `invalid_pipeline`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Largest JSON body the run API reads.
const MAX_BODY: usize = 64 << 10;
/// How often a followed log is looked at.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Runs listed at most.
pub(crate) const MAX_LIST: usize = 1000;

/// The endpoint a request is for, and the values of its path's variables.
pub fn find<'a>(method: &Method, path: &'a str) -> Option<(&'static Endpoint, Vec<&'a str>)> {
    ENDPOINTS.iter().find_map(|e| {
        if e.method != method.as_str() && !(method == Method::HEAD && e.method == "GET") {
            return None;
        }
        Some((e, path_values(e.path, path)?))
    })
}

/// The values of a path's variables, if it has the shape of `template`.
fn path_values<'a>(template: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let (template, parts): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    if template.len() != parts.len() {
        return None;
    }
    let mut values = Vec::new();
    for (t, p) in template.iter().zip(&parts) {
        if t.starts_with('{') {
            if p.is_empty() {
                return None;
            }
            values.push(*p);
        } else if t != p {
            return None;
        }
    }
    Some(values)
}

/// The methods a path answers (`HEAD` wherever `GET`), for `Allow`.
fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut methods: Vec<&str> =
        ENDPOINTS.iter().filter(|e| path_values(e.path, path).is_some()).map(|e| e.method).collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// A user of the policy, as the server knows them.
#[derive(Debug, Clone)]
pub struct ApiUser {
    /// Their name.
    pub name: String,
    /// sha256 of their API token.
    pub token_sha256: String,
    /// What they may do.
    pub roles: Vec<Role>,
}

/// Whether a path is the run API's (the publish API shares `/api/v1`).
pub fn is_run_api(path: &str) -> bool {
    [
        "/api/v1/whoami",
        "/api/v1/metrics",
        "/api/v1/pipelines",
        "/api/v1/runs",
        "/api/v1/artifacts",
        "/api/v1/approvals",
        "/api/v1/repositories",
        "/api/v1/tokens",
    ]
    .iter()
    .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Answers a run API request: finds the endpoint, authenticates, checks
/// the role, then calls the handler.
pub async fn route(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let Some((endpoint, vars)) = find(req.method(), &path) else {
        let allowed = allowed_methods(&path);
        if allowed.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no API call `{} {}`", crate::short(req.method().as_str()), crate::short(&path)),
            );
        }
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "`{}` answers {}, not {}",
                crate::short(&path),
                allowed.join(", "),
                crate::short(req.method().as_str())
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    };
    let user = match app.authenticate(req.headers()) {
        Some(u) => u,
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this call needs a user: send `Authorization: Bearer alu_...` (`airlock user token` makes one for \
                 the policy)"
                    .into(),
            );
        }
    };
    if !endpoint.need.allows(&user.roles) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "`{}` needs the `{}` role; user `{}` does not have it",
                endpoint.operation,
                endpoint.need.as_str(),
                user.name
            ),
        );
    }
    // A call that changes something, made with the web pages' cookie, must
    // carry a header no other site's page can send without our consent.
    if endpoint.method != "GET" && user.by_cookie && !req.headers().contains_key("x-airlock-csrf") {
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "a call made with the session cookie needs `x-airlock-csrf: 1`".into(),
        );
    }
    let var = |i: usize| vars.get(i).copied().unwrap_or_default().to_owned();
    match endpoint.operation {
        "whoami" => json(
            StatusCode::OK,
            &WhoAmI { user: user.name.clone(), roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect() },
        ),
        "listPipelines" => with_runs(app, |q| {
            json(StatusCode::OK, &PipelineList { pipelines: q.pipelines_dir().map(list_pipelines).unwrap_or_default() })
        }),
        "listRuns" => list_runs(app, req.uri().query()),
        "getMetrics" => {
            let working = app.runs.as_ref().map_or(0, |q| q.working());
            match app.metrics.encode(&app.store, working, app.agents_here()) {
                Ok(text) => {
                    let mut r = Response::new(full(text));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(airlock_runner::metrics::CONTENT_TYPE));
                    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
                Err(e) => store_error(&e),
            }
        }
        "submitRun" => submit(app, &user.name, req).await,
        "getRun" => get_run(app, &var(0), &user.name, req.headers()).await,
        "cancelRun" => with_runs(app, |q| match q.cancel(&var(0)) {
            Ok(run) => json(StatusCode::OK, &RunOnly { run: (&run).into() }),
            Err(e) => queue_error(&e),
        }),
        "getLog" => log(app, &var(0), &var(1), &req).await,
        "getProvenance" => provenance(app, &var(0), &var(1)),
        "listArtifacts" => list_artifacts(app, &var(0)),
        "getArtifact" => artifact(app, &var(0)).await,
        "listApprovals" => match app.store.pending_approvals() {
            Ok(pending) => json(StatusCode::OK, &PendingList { pending: pending.iter().map(Approval::from).collect() }),
            Err(e) => store_error(&e),
        },
        "decideApproval" => decide(app, &var(0), &var(1), &user.name, req).await,
        "triggerRepository" => crate::hooks::trigger(app, &var(0), &user.name, req).await,
        "getDelivery" => crate::hooks::get_delivery(app, &var(0), &var(1)),
        "listDeliveries" => crate::hooks::list_deliveries(app, &var(0), req.uri().query()),
        "approveDelivery" => crate::hooks::approve_delivery(app, &var(0), &var(1), &user.name).await,
        "listTokens" => match crate::admin::list_tokens(app) {
            Ok(tokens) => json(StatusCode::OK, &TokenList { tokens: tokens.iter().map(Token::from).collect() }),
            Err(r) => r,
        },
        "createToken" => {
            let created = match crate::read_json(app, req, MAX_BODY).await {
                Ok(body) => crate::admin::create_token(app, body),
                Err(r) => return r,
            };
            match created {
                Ok((token, record)) => json(StatusCode::CREATED, &TokenCreated { token, record: Token::from(&record) }),
                Err(r) => r,
            }
        }
        "revokeToken" => match crate::admin::revoke_token(app, &var(0)) {
            Ok(record) => json(StatusCode::OK, &TokenOnly { record: Token::from(&record) }),
            Err(r) => r,
        },
        other => error(StatusCode::NOT_IMPLEMENTED, "not_implemented", format!("`{other}` has no handler")),
    }
}

/// Who made a request.
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) roles: Vec<Role>,
    pub(crate) by_cookie: bool,
}

fn with_runs(app: &App, f: impl FnOnce(&airlock_runner::queue::RunQueue) -> Response<Body>) -> Response<Body> {
    match &app.runs {
        Some(q) => f(q),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no_runs", "this server runs no pipelines".into()),
    }
}

fn store_error(e: &airlock_store::StoreError) -> Response<Body> {
    use airlock_store::StoreError as E;
    match e {
        E::NoRun(_) | E::Ambiguous { .. } => error(StatusCode::NOT_FOUND, "no_run", e.to_string()),
        E::NoStep { .. } => error(StatusCode::NOT_FOUND, "no_step", e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

fn queue_error(e: &airlock_runner::queue::QueueError) -> Response<Body> {
    use airlock_runner::queue::QueueError as E;
    let (status, code) = match e {
        E::NoPipeline(_) => (StatusCode::NOT_FOUND, "no_pipeline"),
        E::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_pipeline"),
        E::Params(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_params"),
        E::Policy(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy"),
        E::Ended(_) => (StatusCode::CONFLICT, "run_ended"),
        E::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        E::Runner(airlock_runner::RunnerError::Store(s)) => return store_error(s),
        E::Runner(_) => (StatusCode::INTERNAL_SERVER_ERROR, "engine"),
    };
    error(status, code, e.to_string())
}

/// The `.yaml` files of the pipelines directory and its subdirectories
/// (one level down; `admin/` holds policies, not pipelines).
fn list_pipelines(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let yaml = |p: &std::path::Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && yaml(&path) {
            found.push(name);
        }
    }
    found.sort();
    found
}

pub(crate) fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn list_runs(app: &App, query: Option<&str>) -> Response<Body> {
    let limit = query_value(query, "limit").and_then(|v| v.parse().ok()).unwrap_or(100).min(MAX_LIST);
    match app.store.runs() {
        Ok(runs) => json(StatusCode::OK, &RunList { runs: runs.iter().take(limit).map(RunSummary::from).collect() }),
        Err(e) => store_error(&e),
    }
}

/// The request's `Idempotency-Key`, if it sent one; a bad one is
/// answered 400.
pub(crate) fn idempotency_key(req: &Request<RequestBody>) -> Result<Option<String>, Response<Body>> {
    match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= 200 => Ok(Some(k.to_owned())),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            "`Idempotency-Key` must be 1 to 200 visible ASCII characters".into(),
        )),
    }
}

async fn submit(app: &App, user: &str, req: Request<RequestBody>) -> Response<Body> {
    let Some(queue) = app.runs.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_runs", "this server runs no pipelines".into());
    };
    let key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let body: SubmitBody = match crate::read_json(app, req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let submit = airlock_runner::queue::Submit {
        pipeline: body.pipeline,
        params: body.params.into_iter().collect(),
        requester: user.to_owned(),
        key,
    };
    // Validation reads the pipeline file and checks plugins on disk.
    match tokio::task::spawn_blocking(move || queue.submit(submit)).await {
        Ok(Ok((run, created))) => {
            json(if created { StatusCode::CREATED } else { StatusCode::OK }, &Submitted { run: (&run).into(), created })
        }
        Ok(Err(e)) => queue_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "engine", e.to_string()),
    }
}

/// Every step's `needs`, from the source the run was submitted with.
fn needs_of(run: &RunRecord) -> BTreeMap<String, Vec<String>> {
    let Some(submission) = &run.submission else { return BTreeMap::new() };
    match airlock_model::load(&submission.pipeline, &submission.source, &airlock_model::NoLookup) {
        Ok(p) => p.steps.iter().map(|(name, step)| (name.clone(), step.needs.clone())).collect(),
        Err(_) => BTreeMap::new(),
    }
}

fn run_detail(app: &App, id: &str, user: &str) -> Result<RunDetail, Response<Body>> {
    let run = app.store.find_run(id).map_err(|e| store_error(&e))?;
    let steps = app.store.steps(&run).map_err(|e| store_error(&e))?;
    let approvals = app.store.approvals(&run.id).map_err(|e| store_error(&e))?;
    let mut codes = BTreeMap::new();
    if let (Some(queue), Some(s)) = (&app.runs, &run.submission)
        && s.requester == user
    {
        for a in approvals.iter().filter(|a| a.state == airlock_store::ApprovalState::Pending) {
            if let Some(code) = queue.approval_code(&run.id, &a.step) {
                codes.insert(a.step.clone(), code);
            }
        }
    }
    Ok(RunDetail {
        run: (&run).into(),
        params: run.params.clone(),
        needs: app.needs(&run, needs_of),
        steps: steps.iter().map(Step::from).collect(),
        approvals: approvals.iter().map(Approval::from).collect(),
        codes,
        forge_status: app.store.forge_status(&run.id).ok().flatten().map(views::ForgeStatus::from),
    })
}

/// Bytes of a run's detail taken from the server holding it, at most.
const MAX_FORWARDED_RUN: usize = 8 << 20;

/// [`run_detail`], with the one-time codes this server does not have
/// asked of the server holding the run (see [`crate::peers`]): the
/// holder shows them only to the user who may see them.
pub(crate) async fn run_detail_anywhere(
    app: &App,
    id: &str,
    user: &str,
    headers: &hyper::HeaderMap,
) -> Result<RunDetail, Response<Body>> {
    let mut detail = run_detail(app, id, user)?;
    let missing = detail.approvals.iter().any(|a| {
        a.state == views::ApprovalState::Pending && a.requester == user && !detail.codes.contains_key(&a.step)
    });
    if missing {
        let path = format!("/api/v1/runs/{}", crate::peers::segment(&detail.run.id));
        let credential = crate::peers::Credential::of(headers);
        if let Some(body) =
            app.peers.ask_holder(&app.store, &detail.run.id, &path, &credential, MAX_FORWARDED_RUN).await
        {
            match serde_json::from_slice::<RunDetail>(&body) {
                Ok(theirs) => {
                    for (step, code) in theirs.codes {
                        detail.codes.entry(step).or_insert(code);
                    }
                }
                Err(e) => tracing::warn!(run = detail.run.id, "the server holding the run answered no run: {e}"),
            }
        }
    }
    Ok(detail)
}

async fn get_run(app: &App, id: &str, user: &str, headers: &hyper::HeaderMap) -> Response<Body> {
    match run_detail_anywhere(app, id, user, headers).await {
        Ok(detail) => json(StatusCode::OK, &detail),
        Err(r) => r,
    }
}

fn provenance(app: &App, id: &str, step: &str) -> Response<Body> {
    let record = match app.store.find_run(id).and_then(|run| app.store.step(&run.id, step)) {
        Ok(r) => r,
        Err(e) => return store_error(&e),
    };
    let none = |why: String| error(StatusCode::NOT_FOUND, "no_provenance", why);
    if let Some(digest) = record.deployed.and_then(|d| d.provenance) {
        return match app.artifacts.as_ref().map(|a| a.read_verified(&digest)) {
            Some(Ok(bytes)) => crate::respond(StatusCode::OK, "application/json", bytes),
            Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "artifact_missing", e.to_string()),
            None => none("this server keeps no artifacts".into()),
        };
    }
    let Some(published) = record.published.filter(|p| p.provenance.is_some()) else {
        return none(format!(
            "step `{}` published or deployed nothing signed (provenance is made for publish and deploy steps \
             when the policy has `provenance:`)",
            crate::short(step)
        ));
    };
    let Some(target) = app.targets.get(&published.target) else {
        return none(format!("this server does not serve target `{}`", published.target));
    };
    match target.provenance(&published.build) {
        Ok(Some(bytes)) => crate::respond(StatusCode::OK, "application/json", bytes),
        Ok(None) => none(format!("`{}/{}` has no provenance", published.target, published.build)),
        Err(e) => crate::publish_error(&e),
    }
}

fn list_artifacts(app: &App, id: &str) -> Response<Body> {
    let run = match app.store.find_run(id) {
        Ok(r) => r,
        Err(e) => return store_error(&e),
    };
    match app.store.steps(&run) {
        Ok(steps) => {
            let artifacts = steps
                .iter()
                .flat_map(|s| {
                    s.outputs.iter().map(|o| RunArtifact {
                        step: s.name.clone(),
                        path: o.path.clone(),
                        sha256: o.sha256.clone(),
                        size: o.size,
                    })
                })
                .collect();
            json(StatusCode::OK, &ArtifactList { artifacts })
        }
        Err(e) => store_error(&e),
    }
}

pub(crate) async fn artifact(app: &App, sha256: &str) -> Response<Body> {
    let Some(artifacts) = app.artifacts.clone() else {
        return error(StatusCode::NOT_FOUND, "no_artifact", "this server keeps no artifacts".into());
    };
    let record = match app.store.artifact(sha256) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, "no_artifact", format!("no artifact `{}`", crate::short(sha256)));
        }
        Err(e) => return store_error(&e),
    };
    // Streamed, and hashed as it goes: an artifact of any size costs a
    // chunk of memory, and a damaged one is cut before its last chunk.
    // From a shared object store this is a download: off the server's
    // threads.
    let sha = sha256.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        artifacts.local(&sha).map_err(|e| e.to_string()).and_then(|path| {
            std::fs::File::open(&path).map_err(|e| format!("artifact `{sha}` is indexed but cannot be read: {e}"))
        })
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match file {
        Ok(file) => {
            let mut r = Response::new(crate::send_blob(file, sha256.to_owned()));
            let headers = r.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(record.size));
            if let Ok(v) = HeaderValue::from_str(sha256) {
                headers.insert("x-airlock-sha256", v);
            }
            r
        }
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "artifact_missing", message),
    }
}

/// Where a step's log is read from: the store, the attempts running on
/// this server, and the server holding the run, when another one holds
/// it and the step is running there (see [`crate::peers`]).
#[derive(Clone)]
pub(crate) struct LogSource {
    pub(crate) store: airlock_store::Store,
    pub(crate) live: Option<airlock_runner::LiveLogs>,
    pub(crate) peers: crate::peers::Peers,
    pub(crate) credential: crate::peers::Credential,
}

/// Bytes of a step's log taken from the server holding its run, at most.
const MAX_FORWARDED_LOG: usize = 64 << 20;

impl LogSource {
    /// A step's log from byte `from` on: the stored attempts, then the
    /// one running now; and whether the step has ended. Only bytes from
    /// `from` on are copied, so following a long log costs what it grew
    /// by.
    pub(crate) async fn read(&self, run: &str, step: &str, from: usize) -> Result<(Vec<u8>, bool), Response<Body>> {
        let (text, state, here) = log_from(&self.store, self.live.as_ref(), run, step, from)?;
        if state == airlock_store::StepState::Running && !here {
            let path = format!(
                "/api/v1/runs/{}/steps/{}/log?offset={from}",
                crate::peers::segment(run),
                crate::peers::segment(step),
            );
            if let Some(theirs) =
                self.peers.ask_holder(&self.store, run, &path, &self.credential, MAX_FORWARDED_LOG).await
            {
                // The holder's answer is the stored attempts and its
                // running one: all of ours and more.
                if theirs.len() >= text.len() {
                    return Ok((theirs.into(), false));
                }
            }
        }
        Ok((text, state.is_final()))
    }
}

/// A step's log from byte `from` on as this server knows it: the stored
/// attempts, then the one running here; the step's state; and whether
/// the attempt running now runs here.
fn log_from(
    store: &airlock_store::Store,
    live: Option<&airlock_runner::LiveLogs>,
    run: &str,
    step: &str,
    from: usize,
) -> Result<(Vec<u8>, airlock_store::StepState, bool), Response<Body>> {
    let record = store.step(run, step).map_err(|e| store_error(&e))?;
    let stored = store.logs(run, step).map_err(|e| store_error(&e))?;
    let last_stored = stored.last().map(|l| l.attempt).unwrap_or(0);
    let mut text = Vec::new();
    // Where the log so far ends.
    let mut at = 0;
    for l in stored {
        text.extend_from_slice(l.bytes.get(from.saturating_sub(at)..).unwrap_or_default());
        at += l.bytes.len();
    }
    let mut here = false;
    if let Some((attempt, bytes, _)) = live.and_then(|live| live.read(run, step, from.saturating_sub(at)))
        && attempt > last_stored
    {
        text.extend_from_slice(&bytes);
        here = true;
    }
    Ok((text, record.state, here))
}

async fn log(app: &App, id: &str, step: &str, req: &Request<RequestBody>) -> Response<Body> {
    let run = match app.store.find_run(id) {
        Ok(r) => r.id,
        Err(e) => return store_error(&e),
    };
    let query = req.uri().query();
    let offset: usize = query_value(query, "offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let follow = query_value(query, "follow") == Some("true");
    let source = app.log_source(req.headers());
    let (first, ended) = match source.read(&run, step, offset).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let text_response = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    if !follow || ended {
        return text_response(full(first));
    }
    // Follow: send what there is, then what comes, until the step ends.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    tokio::spawn(follow_log(source, run, step.to_owned(), offset, first, sender));
    text_response(crate::channel_body(receiver))
}

/// Sends a followed log on `sender`: `first` (the log from `offset`),
/// then what the step writes, until the step ends or the follower goes
/// away, whichever is first: a closed connection drops the receiver, and
/// the poll stops at once rather than when the step ends.
pub(crate) async fn follow_log(
    source: LogSource,
    run: String,
    step: String,
    offset: usize,
    first: Vec<u8>,
    sender: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    let mut sent = offset + first.len();
    if !first.is_empty() && sender.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let Ok((more, ended)) = source.read(&run, &step, sent).await else { return };
        if !more.is_empty() {
            sent += more.len();
            if sender.send(Ok(Frame::data(Bytes::from(more)))).await.is_err() {
                return;
            }
        }
        if ended {
            return;
        }
    }
}

async fn decide(app: &App, run: &str, step: &str, user: &str, req: Request<RequestBody>) -> Response<Body> {
    let body: DecideBody = match crate::read_json(app, req, MAX_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let run = match app.store.find_run(run) {
        Ok(r) => r.id,
        Err(e) => return store_error(&e),
    };
    match crate::admin::decision(app, &run, step, user, &body.code, body.approve, body.reason.as_deref()) {
        Ok(record) => json(StatusCode::OK, &Decided { record: Approval::from(&record) }),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one run whose one step, `s`, is running.
    fn running_step() -> (tempfile::TempDir, airlock_store::Store, airlock_store::RunRecord) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = airlock_store::Store::open(dir.path()).expect("store");
        let run = store.create_run("p", "p.yaml", BTreeMap::new(), &["s".to_owned()]).expect("run");
        store.update_step(&run.id, "s", None, |s| s.state = airlock_store::StepState::Running).expect("running");
        (dir, store, run)
    }

    /// The log as a server that runs nothing reads it.
    fn source(store: &airlock_store::Store) -> LogSource {
        LogSource {
            store: store.clone(),
            live: None,
            peers: crate::peers::Peers::default(),
            credential: crate::peers::Credential::default(),
        }
    }

    /// Issue 12, item 3: a follower that went away kept its task polling
    /// the store until the step ended, however long that took.
    #[tokio::test]
    async fn a_follower_that_goes_away_stops_the_poll() {
        let (_dir, store, run) = running_step();
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let task =
            tokio::spawn(follow_log(source(&store), run.id.clone(), "s".into(), 0, b"tick 1\n".to_vec(), sender));
        drop(receiver);
        // The step runs on; the task must end by itself, promptly.
        let ended = tokio::time::timeout(FOLLOW_POLL * 5, task).await;
        assert!(ended.is_ok(), "the follower's task still polls a step whose follower is gone");
    }

    /// While the follower is there, the task goes on as long as the step.
    #[tokio::test]
    async fn a_follower_that_stays_is_sent_the_log_until_the_step_ends() {
        let (_dir, store, run) = running_step();
        let (sender, mut receiver) = tokio::sync::mpsc::channel(8);
        let task =
            tokio::spawn(follow_log(source(&store), run.id.clone(), "s".into(), 0, b"tick 1\n".to_vec(), sender));
        let first = receiver.recv().await.expect("first").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"tick 1\n"));
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        assert!(!task.is_finished(), "the follower's task ended while the step runs");
        store.update_step(&run.id, "s", None, |s| s.state = airlock_store::StepState::Succeeded).expect("done");
        tokio::time::timeout(FOLLOW_POLL * 5, task).await.expect("ends with the step").expect("task");
    }
}
