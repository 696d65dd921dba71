//! `airlock serve`: the HTTP face of the engine and of the publish
//! targets.
//!
//! The run API ([`api`], described by [`openapi`]) and the web pages
//! under `/ui` serve the users of the admin policy, as their roles allow:
//! submitting runs to the engine's queue, following them, reading logs and
//! artifacts, deciding approvals, managing tokens.
//!
//! Anyone who can reach the server may browse and download published
//! trees (index pages, and every file with its sha256 in the
//! `x-airlock-sha256` header, checked again as it is sent). Publishing
//! takes a token (see `airlock token create`): every API call is checked
//! and charged against it, with the address the connection came from.
//!
//! The publish API, all under `/api/v1/targets/TARGET/builds/BUILD`:
//!
//! | call | body | does |
//! |------|------|------|
//! | `POST …/missing` | `{"digests": [...]}` | answers `{"missing": [...]}`: the blobs to upload |
//! | `POST …/blobs` | frames: 32-byte sha256, 8-byte big-endian length, bytes | stores each blob after checking its digest |
//! | `PUT …` | `{"files": [{"path", "sha256", "size"}]}` | publishes the tree, all at once |
//!
//! Errors are JSON, `{"error": {"code": "token_expired", "message": "..."}}`,
//! with stable codes. This crate never runs guest code and never logs a
//! token.
//!
//! ```no_run
//! # async fn demo(store: airlock_store::Store, targets: Vec<airlock_host::publish::TargetStore>) -> std::io::Result<()> {
//! let app = std::sync::Arc::new(airlock_server::App::new(store, targets));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8480").await?;
//! airlock_server::serve(listener, app, Default::default()).await
//! # }
//! ```

// Handlers return `Result<_, Response>` so an early answer (a refused
// token, a bad build id) is one `?`; the response is built once per
// request, so its size on the stack does not matter.
#![allow(clippy::result_large_err)]

pub mod admin;
mod agents;
pub mod api;
pub mod conn;
mod hooks;
pub mod openapi;
mod pages;
mod peers;
pub mod protocol;
mod publish;
mod ui;
pub mod views;

use airlock_host::publish::{PublishError, Published, TargetStore};
use airlock_store::{Store, now_ms};
use bytes::Bytes;
use conn::{BodyError, Limits, RequestBody};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use protocol::ErrorCode;
pub(crate) use publish::publish_error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The body of every response.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest `missing` request: a million digests as JSON.
const MAX_MISSING_BODY: usize = 80 << 20;
/// Largest manifest: 100,000 files with long paths.
const MAX_MANIFEST_BODY: usize = 128 << 20;
/// Manifests kept parsed in memory; they never change once published.
const MANIFEST_CACHE: usize = 256;
/// Bytes per chunk when a file is sent. With one chunk queued, one held
/// back and one in the connection's buffer, a download the client
/// stopped reading holds a few of them until the write timeout ends it.
const SEND_CHUNK: usize = 64 << 10;
/// The most a connection buffers on its own, reading or writing: room
/// for any request's headers, and little to hold for a stalled client.
const CONNECTION_BUFFER: usize = 64 << 10;
/// Bytes of an upload gathered before they are written to disk.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes a manifest may take per file it lists: a path of up to 1024
/// bytes, escaped, and the digest and size around it.
const MANIFEST_BYTES_PER_FILE: u64 = 2300;

/// How long a web sign-in lasts.
const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
/// Web sign-ins kept at most.
const MAX_SESSIONS: usize = 10_000;
/// Web sign-ins of one user kept at most; a new one ends their oldest.
const MAX_SESSIONS_PER_USER: usize = 16;
/// Runs whose DAG edges are kept parsed.
const NEEDS_CACHE: usize = 1024;

/// What the server serves: the state store (for tokens) and the targets.
pub struct App {
    store: Store,
    targets: BTreeMap<String, TargetStore>,
    manifests: Mutex<HashMap<(String, String), Arc<Published>>>,
    /// Users of the policy.
    users: Vec<api::ApiUser>,
    /// The run queue, when the server runs pipelines.
    runs: Option<Arc<airlock_runner::queue::RunQueue>>,
    artifacts: Option<airlock_host::ArtifactStore>,
    live: Option<airlock_runner::LiveLogs>,
    needs: Mutex<HashMap<String, BTreeMap<String, Vec<String>>>>,
    /// What one client may hold.
    limits: Limits,
    connections: Arc<conn::Connections>,
    /// KiB of request bodies that may be held in memory now.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// Repositories whose webhooks are taken, by name.
    repositories: BTreeMap<String, airlock_model::policy::Repository>,
    /// Where relative paths of the policy (secret files) start.
    policy_dir: std::path::PathBuf,
    /// Woken for each delivery recorded.
    deliveries: Arc<tokio::sync::Notify>,
    /// What it tells a monitoring system: its engine's, when it runs
    /// pipelines.
    metrics: Arc<airlock_runner::metrics::Metrics>,
    /// The policy's pools of agents, whose agents claim jobs here.
    agents: indexmap::IndexMap<String, airlock_model::policy::AgentPool>,
    /// The agents that asked for work, by `POOL/NAME`: their labels and
    /// when they last asked.
    agents_seen: Mutex<HashMap<String, (Vec<String>, std::time::Instant)>>,
    /// The jobs claimed through this server and not yet completed: which
    /// agent claimed each, and its log limit (which bounds the
    /// completion). A completion sent here needs no read of the job
    /// first: the store's change checks the agent and the fence itself.
    claims: Mutex<HashMap<String, (String, u64, std::time::Instant)>>,
    /// Asks the server holding a run for what only it has.
    peers: peers::Peers,
}

impl App {
    /// A server over `store` and `targets`.
    pub fn new(store: Store, targets: Vec<TargetStore>) -> Self {
        Self {
            store,
            targets: targets.into_iter().map(|t| (t.name().to_owned(), t)).collect(),
            manifests: Mutex::new(HashMap::new()),
            users: Vec::new(),
            runs: None,
            artifacts: None,
            live: None,
            needs: Mutex::new(HashMap::new()),
            body_budget: Arc::new(tokio::sync::Semaphore::new(Limits::default().body_budget >> 10)),
            limits: Limits::default(),
            connections: Arc::default(),
            repositories: BTreeMap::new(),
            policy_dir: std::path::PathBuf::from("."),
            deliveries: Arc::default(),
            metrics: Arc::default(),
            agents: indexmap::IndexMap::new(),
            agents_seen: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            peers: peers::Peers::default(),
        }
    }

    /// Takes the agents of these pools (the policy's `agents:`).
    pub fn with_agents(mut self, pools: indexmap::IndexMap<String, airlock_model::policy::AgentPool>) -> Self {
        self.agents = pools;
        self
    }

    /// Takes the webhooks of the policy's repositories at
    /// `/hooks/NAME`; `policy_dir` is where the policy's relative paths
    /// start.
    pub fn with_repositories(
        mut self,
        repositories: impl IntoIterator<Item = (String, airlock_model::policy::Repository)>,
        policy_dir: std::path::PathBuf,
    ) -> Self {
        self.repositories = repositories.into_iter().collect();
        self.policy_dir = policy_dir;
        self
    }

    /// Notified each time a delivery is recorded, for whatever turns
    /// deliveries into runs.
    pub fn deliveries_recorded(&self) -> Arc<tokio::sync::Notify> {
        self.deliveries.clone()
    }

    /// Bounds on connections and their phases, instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.body_budget = Arc::new(tokio::sync::Semaphore::new(limits.body_budget >> 10));
        self.limits = limits;
        self
    }

    /// The users of the policy: they use the run API and the web pages
    /// as their roles allow, and decide approvals.
    pub fn with_users(mut self, users: Vec<api::ApiUser>) -> Self {
        self.users = users;
        self
    }

    /// Serves the run API and pages over this queue and its engine.
    pub fn with_runs(mut self, queue: Arc<airlock_runner::queue::RunQueue>) -> Self {
        self.artifacts = Some(queue.engine().artifacts().clone());
        self.live = Some(queue.engine().live_logs().clone());
        self.metrics = queue.engine().metrics().clone();
        self.runs = Some(queue);
        self
    }

    /// The user whose API token this is.
    fn user_of(&self, token: &str) -> Option<String> {
        self.user_by_token(token).map(|u| u.name.clone())
    }

    fn user_by_token(&self, token: &str) -> Option<&api::ApiUser> {
        let digest = airlock_store::user_token_digest(token.trim());
        self.users.iter().find(|u| u.token_sha256 == digest)
    }

    /// Where a request with these headers reads a step's log.
    fn log_source(&self, headers: &hyper::HeaderMap) -> api::LogSource {
        api::LogSource {
            store: self.store.clone(),
            live: self.live.clone(),
            peers: self.peers.clone(),
            credential: peers::Credential::of(headers),
        }
    }

    /// The user a request comes from: its bearer token, or its session
    /// cookie.
    fn authenticate(&self, headers: &hyper::HeaderMap) -> Option<api::Caller> {
        if let Some(token) =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
        {
            let user = self.user_by_token(token)?;
            return Some(api::Caller { name: user.name.clone(), roles: user.roles.clone(), by_cookie: false });
        }
        let session = ui::session_cookie(headers)?;
        let name = match self.store.session(&airlock_store::user_token_digest(session)) {
            Ok(name) => name?,
            Err(e) => {
                tracing::warn!("cannot read the sign-ins: {e}");
                return None;
            }
        };
        let user = self.users.iter().find(|u| u.name == name)?;
        Some(api::Caller { name, roles: user.roles.clone(), by_cookie: true })
    }

    /// Starts a web session for the user of `token`; returns the
    /// cookie's value, or why there is none.
    ///
    /// Each user holds a few sessions at most (a new one ends their
    /// oldest), so signing in again and again only ever signs out the
    /// same user; a user with no role gets none, having nothing to see.
    fn sign_in(&self, token: &str) -> Result<String, &'static str> {
        let user = self.user_by_token(token).ok_or("that token is no user's in this server's policy")?;
        if user.roles.is_empty() {
            return Err("that user has no role in this server's policy, so there is nothing to sign in to");
        }
        let user = user.name.clone();
        let session = hex::encode(rand::random::<[u8; 32]>());
        let digest = airlock_store::user_token_digest(&session);
        // The policy names the users, so the store is full only with
        // more users than MAX_SESSIONS / MAX_SESSIONS_PER_USER.
        match self.store.start_session(&digest, &user, now_ms() + SESSION_TTL_MS, MAX_SESSIONS_PER_USER, MAX_SESSIONS) {
            Ok(Ok(())) => Ok(session),
            Ok(Err(airlock_store::SessionRefusal::Full)) => {
                Err("the server has as many sign-ins as it keeps; try again later")
            }
            Err(e) => {
                tracing::warn!("cannot record a sign-in: {e}");
                Err("the server cannot record the sign-in now; try again later")
            }
        }
    }

    /// Ends the web session of this cookie value.
    fn sign_out(&self, session: &str) {
        if let Err(e) = self.store.end_session(&airlock_store::user_token_digest(session)) {
            tracing::warn!("cannot end a sign-in: {e}");
        }
    }

    /// The DAG edges of a run, parsed once.
    fn needs(
        &self,
        run: &airlock_store::RunRecord,
        parse: impl FnOnce(&airlock_store::RunRecord) -> BTreeMap<String, Vec<String>>,
    ) -> BTreeMap<String, Vec<String>> {
        if let Some(n) = self.needs.lock().ok().and_then(|m| m.get(&run.id).cloned()) {
            return n;
        }
        let needs = parse(run);
        if let Ok(mut m) = self.needs.lock() {
            if m.len() >= NEEDS_CACHE {
                m.clear();
            }
            m.insert(run.id.clone(), needs.clone());
        }
        needs
    }

    fn manifest(&self, target: &TargetStore, build: &str) -> Result<Option<Arc<Published>>, PublishError> {
        let key = (target.name().to_owned(), build.to_owned());
        if let Some(p) = self.manifests.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(p));
        }
        let Some(published) = target.published(build)? else { return Ok(None) };
        let published = Arc::new(published);
        if let Ok(mut m) = self.manifests.lock() {
            if m.len() >= MANIFEST_CACHE {
                m.clear();
            }
            m.insert(key, published.clone());
        }
        Ok(Some(published))
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        match app.connections.admit(peer.ip(), &app.limits) {
            Ok(slot) => {
                let app = app.clone();
                tokio::spawn(async move {
                    connection(stream, app, Some(peer)).await;
                    drop(slot);
                });
            }
            Err(why) => {
                tracing::warn!(%peer, "connection refused: over a connection limit");
                tokio::spawn(conn::refuse(stream, why));
            }
        }
    }
}

/// Threads of the runtime [`serve_apart`] makes.
pub const HTTP_THREADS: usize = 2;

/// Like [`serve`], on a runtime of its own (threads named `airlock-http`),
/// started here and ended when `shutdown` is: answering a client never
/// waits for a worker busy with the engine's steps, which run on the
/// caller's runtime. Join the returned thread to wait for the end.
pub fn serve_apart(
    listener: std::net::TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_THREADS)
        .thread_name("airlock-http")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("airlock-http".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            serve(listener, app, shutdown).await
        })
    })
}

/// Serves the [`admin`] API on a Unix socket until `shutdown` is
/// cancelled. The socket's directory must be closed to other users.
pub async fn serve_admin(
    listener: tokio::net::UnixListener,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        tokio::spawn(connection(stream, app.clone(), None));
    }
}

/// One connection: from the network with its peer's address, or from
/// the admin socket with none.
async fn connection<IO>(stream: IO, app: Arc<App>, peer: Option<SocketAddr>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let in_flight = conn::InFlight::default();
    let limits = app.limits.clone();
    let io = hyper_util::rt::TokioIo::new(conn::Guarded::new(stream, in_flight.clone(), &limits));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        let busy = in_flight.begin();
        async move {
            let (parts, body) = req.into_parts();
            let (body, ended) = RequestBody::new(body);
            let mut response = handle(&app, peer, Request::from_parts(parts, body)).await;
            // An answer that leaves the body unread ends the connection,
            // and says so (see `RequestBody`).
            if !ended.load(std::sync::atomic::Ordering::SeqCst) {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| conn::Tracked { body, _busy: busy }))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(CONNECTION_BUFFER)
        .serve_connection(io, service)
        .without_shutdown()
        .await;
    match served {
        Ok(parts) => conn::linger(parts.io.into_inner()).await,
        Err(e) => tracing::debug!(?peer, "connection ended: {e}"),
    }
}

async fn handle(app: &App, peer: Option<SocketAddr>, req: Request<RequestBody>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match peer {
        Some(peer) => route(app, peer, req).await,
        None => admin::route(app, req).await,
    };
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match peer {
        Some(peer) => tracing::info!(%peer, %method, path, status, ms),
        None => tracing::info!(peer = "admin socket", %method, path, status, ms),
    }
    response
}

async fn route(app: &App, peer: SocketAddr, req: Request<RequestBody>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if api::is_run_api(&path) {
        return api::route(app, req).await;
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return ui::route(app, req).await;
    }
    if let Some(name) = path.strip_prefix("/hooks/") {
        let name = name.to_owned();
        return hooks::receive(app, &name, req).await;
    }
    if let Some(api) = path.strip_prefix("/api/v1/") {
        let parts: Vec<&str> = api.split('/').collect();
        if let ["agent", rest @ ..] = parts.as_slice() {
            return agents::route(app, rest, req).await;
        }
        return match (req.method(), parts.as_slice()) {
            (&Method::GET, ["targets"]) => publish::list_targets(app),
            (&Method::GET, ["targets", t, "builds"]) => with_target(app, t, publish::list_builds),
            (&Method::GET, ["targets", t, "builds", b]) => match target(app, t) {
                Ok(t) => publish::get_manifest(app, t, b),
                Err(r) => r,
            },
            (&Method::POST, ["targets", t, "builds", b, "missing"]) => publish::missing(app, peer, t, b, req).await,
            (&Method::POST, ["targets", t, "builds", b, "blobs"]) => publish::blobs(app, peer, t, b, req).await,
            (&Method::PUT, ["targets", t, "builds", b]) => publish::commit(app, peer, t, b, req).await,
            _ => error(StatusCode::NOT_FOUND, "not_found", format!("no API call `{} {path}`", req.method())),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "published trees are read-only".into());
    }
    let head = req.method() == Method::HEAD;
    pages::browse(app, &path, head).await
}

fn with_target(app: &App, name: &str, f: impl FnOnce(&TargetStore) -> Response<Body>) -> Response<Body> {
    match target(app, name) {
        Ok(t) => f(t),
        Err(r) => r,
    }
}

fn target<'a>(app: &'a App, name: &str) -> Result<&'a TargetStore, Response<Body>> {
    app.targets.get(name).ok_or_else(|| {
        let names: Vec<&str> = app.targets.keys().map(String::as_str).collect();
        refuse(
            ErrorCode::NoTarget,
            format!("no publish target `{}`; this server has: {}", short(name), names.join(", ")),
        )
    })
}

/// A value from a request, cut and escaped for an error message.
fn short(text: &str) -> String {
    airlock_model::text::one_line(text, 200)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    respond(status, "application/json", bytes)
}

/// A JSON error with a stable code.
fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json(status, &api::ErrorBody { error: api::ErrorDetail { code: code.to_owned(), message } })
}

/// A refusal of the publish protocol, with its code's status.
fn refuse(code: ErrorCode, message: String) -> Response<Body> {
    error(code.status(), code.as_str(), message)
}

/// The answer to a request body that could not be read.
fn body_error(e: BodyError) -> Response<Body> {
    match e {
        BodyError::TimedOut => refuse(
            ErrorCode::BodyTimeout,
            "the request body stopped arriving, or took too long; send it whole and promptly".into(),
        ),
        BodyError::TooLarge(limit) => {
            refuse(ErrorCode::BodyTooLarge, format!("the request body is over {limit} bytes"))
        }
        BodyError::Broken(e) => refuse(ErrorCode::BadBody, format!("the request body could not be read: {e}")),
    }
}

/// Reads a JSON body of at most `limit` bytes (see [`read_body`]).
async fn read_json<T: for<'de> Deserialize<'de>>(
    app: &App,
    req: Request<RequestBody>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let body = read_body(app, req, limit).await?;
    serde_json::from_slice(&body)
        .map_err(|e| refuse(ErrorCode::BadJson, format!("the request body is not what this call takes: {e}")))
}

/// Reads a body of at most `limit` bytes. Its bytes are held in memory
/// only within the server's body budget: a request that would go over
/// it is answered 503 at once, so many large bodies at the same time
/// cannot take the server's memory.
async fn read_body(app: &App, req: Request<RequestBody>, limit: usize) -> Result<Bytes, Response<Body>> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(body_error(BodyError::TooLarge(limit)));
    }
    let held = declared.map_or(limit, |n| n as usize);
    let kib = u32::try_from(held.div_ceil(1024)).unwrap_or(u32::MAX);
    let _permit = app.body_budget.clone().try_acquire_many_owned(kib).map_err(|_| {
        let mut r = refuse(
            ErrorCode::Busy,
            "the server holds as many request bodies as it may right now; try again shortly".into(),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    })?;
    conn::read_all(req.into_body(), held, &app.limits).await.map_err(body_error)
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response<Body>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| refuse(ErrorCode::Internal, format!("the server could not finish the call: {e}")))
}

/// Sends a blob, hashing it as it goes; if the bytes on disk no longer
/// match, the connection is cut before the last chunk so the client sees
/// a failed download, never a complete wrong file.
///
/// Each chunk is read and hashed on the blocking pool, then handed to
/// the connection here on the async side: a client that stops reading
/// holds no thread, only this task, until the write timeout ends it.
fn send_blob(file: std::fs::File, sha256: String) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        let mut state = Some((file, Sha256::new()));
        let mut pending: Option<Bytes> = None;
        loop {
            let Some((mut file, mut hasher)) = state.take() else { return };
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; SEND_CHUNK];
                let n = file.read(&mut buf)?;
                buf.truncate(n);
                hasher.update(&buf);
                Ok::<_, std::io::Error>((file, hasher, buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (file, hasher, buf) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if buf.is_empty() {
                let actual = hex::encode(hasher.finalize());
                if actual != sha256 {
                    tracing::error!(
                        "blob sha256:{sha256} is damaged on disk (hashes to sha256:{actual}); download cut"
                    );
                    let _ = tx.send(Err(std::io::Error::other("blob damaged on disk"))).await;
                    return;
                }
                if let Some(chunk) = pending {
                    let _ = tx.send(Ok(Frame::data(chunk))).await;
                }
                return;
            }
            // Hold one chunk back until the next is read, so the last one
            // goes out only after the whole file was checked.
            if let Some(chunk) = pending.replace(Bytes::from(buf))
                && tx.send(Ok(Frame::data(chunk))).await.is_err()
            {
                return;
            }
            state = Some((file, hasher));
        }
    });
    channel_body(rx)
}

/// A response body made of what arrives on a channel, until it closes;
/// an error ends the response early, so the client sees it broken off.
fn channel_body(mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>) -> Body {
    StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed()
}
