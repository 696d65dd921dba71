//! The agents' API: `airlock agent` processes of the policy's pools claim
//! jobs (sandboxed steps) here, fetch what a job names by digest, upload
//! its outputs, renew their lease on it and complete it.
//!
//! An agent presents its pool's token (`Authorization: Bearer`) and its
//! own name (`x-airlock-agent`); the token is checked from the headers
//! before any body is read. An agent may fetch only the blobs its job
//! names, upload only for a job it holds, and complete a job only with
//! the fence it claimed it with: one whose lease expired and went to
//! another agent is refused (409 `lease_lost`). Every upload is checked
//! against the digest it is sent under before it is kept (422
//! `digest_mismatch`), and a completion naming an output that is not
//! there is refused (422 `missing_output`).

use crate::conn::RequestBody;
use crate::{App, Body, body_error, conn, error, json, read_json};
use airlock_runner::agent::{JobResult, JobSpec};
use airlock_store::{JobRecord, JobRefusal, JobState};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The longest a claim waits for a job before it answers 204.
const LONGEST_WAIT: Duration = Duration::from_secs(20);
/// Largest claim request.
const CLAIM_BYTES: usize = 16 << 10;
/// Largest renewal.
const RENEW_BYTES: usize = 1 << 10;

/// An agent, as its request says and its token proves.
struct Agent {
    /// `POOL/NAME`.
    id: String,
    pool: String,
    labels: Vec<String>,
}

/// What a claim asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    /// The labels the agent has (all of them its pool's).
    #[serde(default)]
    labels: Vec<String>,
    /// How long to wait for a job, in milliseconds (at most 20 s).
    #[serde(default)]
    wait_ms: u64,
}

/// A job handed to an agent.
#[derive(Serialize)]
struct Claimed {
    job: String,
    fence: u64,
    lease_ms: u64,
    spec: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    fence: u64,
}

#[derive(Serialize)]
struct Renewed {
    lease_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    fence: u64,
    result: JobResult,
}

#[derive(Serialize)]
struct Completed {
    job: String,
}

/// The agent a request comes from, or the refusal.
fn agent(app: &App, req: &Request<RequestBody>) -> Result<Agent, Response<Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthenticated = || {
        error(StatusCode::UNAUTHORIZED, "unauthenticated", "give the pool's token: `Authorization: Bearer …`".into())
    };
    let Some(token) = token else { return Err(unauthenticated()) };
    let digest = airlock_store::user_token_digest(token);
    let Some((pool, spec)) = app.agents.iter().find(|(_, p)| p.token_sha256 == digest) else {
        return Err(unauthenticated());
    };
    let name = req.headers().get("x-airlock-agent").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !valid {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_agent_name",
            "name the agent in `x-airlock-agent`: 1 to 64 letters, digits, `.`, `-` or `_`".into(),
        ));
    }
    Ok(Agent { id: format!("{pool}/{name}"), pool: pool.clone(), labels: spec.labels.clone() })
}

/// Answers a request under `/api/v1/agent/`; `parts` is the path after it.
pub(crate) async fn route(app: &App, parts: &[&str], req: Request<RequestBody>) -> Response<Body> {
    let agent = match agent(app, &req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let method = req.method().clone();
    match (method.as_str(), parts) {
        ("POST", ["claim"]) => claim(app, &agent, req).await,
        (m, ["jobs", run, step, attempt, rest @ ..]) => {
            let id = format!("{run}/{step}/{attempt}");
            if let ("POST", ["complete"]) = (m, rest)
                && let Some(log_limit) = app.claimed_here(&id, &agent.id)
            {
                return complete(app, &agent, &id, log_limit, req).await;
            }
            let job = match held(app, &agent, &id) {
                Ok(job) => job,
                Err(r) => return r,
            };
            match (m, rest) {
                ("GET", ["blobs", sha]) => fetch(app, &job, sha).await,
                ("PUT", ["blobs", sha]) => upload(app, &job, sha, req).await,
                ("POST", ["renew"]) => renew(app, &agent, &job, req).await,
                ("POST", ["complete"]) => match spec_of(&job) {
                    Ok(spec) => complete(app, &agent, &job.id, spec.log_limit, req).await,
                    Err(r) => r,
                },
                _ => not_found(parts),
            }
        }
        _ => not_found(parts),
    }
}

fn not_found(parts: &[&str]) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", format!("no agent call `{}`", parts.join("/")))
}

/// The job `id`, if `agent` holds it.
fn held(app: &App, agent: &Agent, id: &str) -> Result<JobRecord, Response<Body>> {
    match app.store.job(id) {
        Ok(Some(job)) if job.state == JobState::Leased && job.agent.as_deref() == Some(agent.id.as_str()) => Ok(job),
        Ok(Some(_)) => Err(lease_lost(&JobRefusal::NotYours(id.to_owned()))),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "no_job", JobRefusal::Unknown(id.to_owned()).to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())),
    }
}

fn lease_lost(e: &JobRefusal) -> Response<Body> {
    match e {
        JobRefusal::Unknown(_) => error(StatusCode::NOT_FOUND, "no_job", e.to_string()),
        JobRefusal::NotYours(_) => error(StatusCode::CONFLICT, "lease_lost", e.to_string()),
    }
}

fn spec_of(job: &JobRecord) -> Result<JobSpec, Response<Body>> {
    serde_json::from_value(job.spec.clone())
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "bad_job", format!("job `{}`: {e}", job.id)))
}

async fn claim(app: &App, agent: &Agent, req: Request<RequestBody>) -> Response<Body> {
    let body: ClaimBody = match read_json(app, req, CLAIM_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(label) = body.labels.iter().find(|l| !agent.labels.contains(l)) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "label `{label}` is not one of pool `{}`'s; the policy's `agents:` gives a pool its labels",
                agent.pool
            ),
        );
    }
    app.agent_seen(&agent.id, &body.labels);
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms).min(LONGEST_WAIT);
    let ttl = u64::try_from(app.store.lease_time().as_millis()).unwrap_or(u64::MAX);
    let mut signals = app.store.signals();
    let claimed = |job: JobRecord| {
        tracing::info!("job {} claimed by agent {}", job.id, agent.id);
        if let Ok(spec) = spec_of(&job) {
            app.claimed(&job.id, &agent.id, spec.log_limit);
        }
        json(StatusCode::OK, &Claimed { job: job.id, fence: job.fence, lease_ms: ttl, spec: job.spec })
    };
    loop {
        let (store, id, pool, labels) = (app.store.clone(), agent.id.clone(), agent.pool.clone(), body.labels.clone());
        match tokio::task::spawn_blocking(move || store.claim_job(&id, &pool, &labels, ttl)).await {
            Ok(Ok(Some(job))) => return claimed(job),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut r = Response::new(crate::full(Vec::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        // A job this server offers meanwhile comes straight to a waiting
        // claim, already leased to it. A job offered by another server
        // signals; an expired lease does not, so look again now and then.
        // Other signals (a job done, a run cancelled) bring nothing to
        // claim: waking every waiting agent's claim for them would only
        // make each read the queue again. `Work` comes after a lost
        // connection to the database, when signals may be lost.
        let mut waiting = app.store.wait_for_job(&agent.id, &agent.pool, &body.labels);
        let handed = tokio::time::timeout(left.min(Duration::from_secs(1)), async {
            loop {
                tokio::select! {
                    job = waiting.job() => return Some(job),
                    signal = signals.recv() => match signal {
                        Ok(airlock_store::Signal::Job | airlock_store::Signal::Work)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return None,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Some(waiting.job().await),
                    },
                }
            }
        })
        .await;
        let handed = match handed {
            Ok(Some(job)) => Some(job),
            _ => waiting.finish().await,
        };
        if let Some(job) = handed {
            return claimed(job);
        }
    }
}

async fn fetch(app: &App, job: &JobRecord, sha: &str) -> Response<Body> {
    let spec = match spec_of(job) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !spec.digests().any(|d| d == sha) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("job `{}` names no blob `{}`; an agent fetches only what its job names", job.id, crate::short(sha)),
        );
    }
    crate::api::artifact(app, sha).await
}

async fn upload(app: &App, job: &JobRecord, sha: &str, req: Request<RequestBody>) -> Response<Body> {
    let Some(artifacts) = app.artifacts.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_runs", "this server runs no pipelines".into());
    };
    let spec = match spec_of(job) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let length =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let Some(length) = length else {
        return error(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "an upload states its length (`Content-Length`)".into(),
        );
    };
    // An output is a file of the workspace, which its quota bounds.
    if length > spec.disk {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
            format!("{length} bytes is more than the step's workspace may hold ({} bytes)", spec.disk),
        );
    }
    let writer = match artifacts.writer(Some((sha, length))) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_digest", e.to_string()),
    };
    let mut body = req.into_body();
    let mut writer = Some(writer);
    let mut pending = bytes::BytesMut::new();
    let mut received = 0u64;
    loop {
        let chunk = match conn::next_chunk(&mut body, app.limits.body_timeout).await {
            Ok(c) => c,
            Err(e) => return body_error(e),
        };
        let last = chunk.is_none();
        if let Some(chunk) = chunk {
            received += chunk.len() as u64;
            if received > length {
                return error(StatusCode::BAD_REQUEST, "bad_length", format!("more than the {length} bytes stated"));
            }
            pending.extend_from_slice(&chunk);
        }
        if pending.len() >= 256 << 10 || (last && !pending.is_empty()) {
            let (mut w, bytes) = (writer.take().expect("a writer between chunks"), pending.split().freeze());
            match tokio::task::spawn_blocking(move || w.write(&bytes).map(|()| w)).await {
                Ok(Ok(w)) => writer = Some(w),
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
            }
        }
        if last {
            break;
        }
    }
    let Some(w) = writer else { return error(StatusCode::INTERNAL_SERVER_ERROR, "store", "no writer".into()) };
    // Kept only if the bytes are those of the digest (else deleted).
    match tokio::task::spawn_blocking(move || w.finish()).await {
        Ok(Ok((digest, size, _))) if digest == sha && size == length => {
            json(StatusCode::OK, &serde_json::json!({ "sha256": sha, "size": length }))
        }
        Ok(Ok((digest, size, _))) => {
            tracing::warn!("job {}: an upload sent as {sha} was {size} bytes hashing to {digest}; refused", job.id);
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                format!("the {size} bytes sent as `{sha}` hash to `{digest}`; nothing was kept"),
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

async fn renew(app: &App, agent: &Agent, job: &JobRecord, req: Request<RequestBody>) -> Response<Body> {
    let body: RenewBody = match read_json(app, req, RENEW_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ttl = u64::try_from(app.store.lease_time().as_millis()).unwrap_or(u64::MAX);
    match app.store.renew_job(&job.id, &agent.id, body.fence, ttl) {
        Ok(Ok(_)) => json(StatusCode::OK, &Renewed { lease_ms: ttl }),
        Ok(Err(refusal)) => lease_lost(&refusal),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

/// Completes job `id`, whose log may be `log_limit` bytes long.
async fn complete(app: &App, agent: &Agent, id: &str, log_limit: u64, req: Request<RequestBody>) -> Response<Body> {
    let Some(artifacts) = app.artifacts.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_runs", "this server runs no pipelines".into());
    };
    // The log, in base64, and the list of outputs and requests.
    let limit = usize::try_from(log_limit.saturating_mul(2)).unwrap_or(usize::MAX).saturating_add(1 << 20);
    let body: CompleteBody = match read_json(app, req, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Here or, with a shared object store, uploaded through another
    // server (asking it is a request per output: off the server's threads).
    let outputs: Vec<(String, u64)> = body.result.outputs.iter().map(|o| (o.sha256.clone(), o.size)).collect();
    let missing = match outputs.is_empty() {
        true => None,
        false => tokio::task::spawn_blocking(move || {
            outputs.iter().position(|(sha, size)| artifacts.size(sha).ok().flatten() != Some(*size))
        })
        .await
        .unwrap_or(Some(0)),
    };
    if let Some(output) = missing.and_then(|i| body.result.outputs.get(i)) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_output",
            format!(
                "output `{}` ({}) was not uploaded with its bytes; upload every output before completing",
                airlock_model::text::one_line(&output.path, 200),
                crate::short(&output.sha256)
            ),
        );
    }
    let result = match serde_json::to_value(&body.result) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
    };
    let (store, job, by, fence) = (app.store.clone(), id.to_owned(), agent.id.clone(), body.fence);
    let done = tokio::task::spawn_blocking(move || store.complete_job(&job, &by, fence, result)).await;
    match done {
        Ok(Ok(Ok(_))) => {
            app.forget_claim(id);
            tracing::info!("job {id} completed by agent {}", agent.id);
            json(StatusCode::OK, &Completed { job: id.to_owned() })
        }
        Ok(Ok(Err(refusal))) => {
            app.forget_claim(id);
            tracing::warn!("job {id}: a completion from agent {} was refused: {refusal}", agent.id);
            lease_lost(&refusal)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

/// At most this many claims are remembered (see `App::claims`); past
/// that, a completion reads its job first.
const CLAIMS_KEPT: usize = 10_000;

/// Agents that asked for work within this long count as there.
const SEEN_WITHIN: Duration = Duration::from_secs(60);

impl App {
    fn claimed(&self, job: &str, agent: &str, log_limit: u64) {
        let mut claims = self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if claims.len() >= CLAIMS_KEPT {
            // Those of agents lost long ago, whose jobs went elsewhere.
            claims.retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(3600));
        }
        if claims.len() < CLAIMS_KEPT || claims.contains_key(job) {
            claims.insert(job.to_owned(), (agent.to_owned(), log_limit, Instant::now()));
        }
    }

    /// The log limit of job `job`, if `agent` claimed it through here.
    fn claimed_here(&self, job: &str, agent: &str) -> Option<u64> {
        let claims = self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        claims.get(job).filter(|(by, _, _)| by == agent).map(|(_, limit, _)| *limit)
    }

    fn forget_claim(&self, job: &str) {
        self.claims.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(job);
    }

    fn agent_seen(&self, id: &str, labels: &[String]) {
        let mut seen = self.agents_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded by the pools' agents that asked lately: those gone a
        // while are forgotten.
        seen.retain(|_, (_, at)| at.elapsed() < SEEN_WITHIN);
        if seen.len() < 10_000 || seen.contains_key(id) {
            seen.insert(id.to_owned(), (labels.to_vec(), Instant::now()));
        }
    }

    /// The agents that asked this server for work lately, by name: their
    /// labels, and how long ago they last asked.
    pub(crate) fn agents_lately(&self) -> Vec<(String, Vec<String>, Duration)> {
        let seen = self.agents_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut lately: Vec<_> = seen
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < SEEN_WITHIN)
            .map(|(id, (labels, at))| (id.clone(), labels.clone(), at.elapsed()))
            .collect();
        lately.sort();
        lately
    }

    /// How many agents asked this server for work lately.
    pub(crate) fn agents_here(&self) -> usize {
        let seen = self.agents_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.values().filter(|(_, at)| at.elapsed() < SEEN_WITHIN).count()
    }
}
