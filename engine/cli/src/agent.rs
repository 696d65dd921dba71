//! `airlock agent`: runs sandboxed steps for an `airlock serve`, on this
//! machine. It asks the server for a job its labels fit (waiting up to
//! 20 seconds at a time), fetches what the job names by digest (checking
//! each), runs the step in the same sandbox as a server, uploads the
//! outputs and completes the job with the fence it claimed it with,
//! renewing its lease as it works. It holds no credential but its pool's
//! token, and no address but the servers'. Given several servers (that
//! share a database), it keeps to one and turns to the next when that one
//! cannot be reached.

use crate::exit;
use crate::http::{Body, CallError, Server, bytes_body, error_of};
use airlock_host::ArtifactStore;
use airlock_runner::agent::{JobResult, JobSpec, Plugins, run_job};
use airlock_runner::metrics::AgentMetrics;
use futures_util::TryStreamExt as _;
use http_body_util::BodyExt as _;
use hyper::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A line of the agent's log on stderr. A log nobody reads any more (a
/// supervisor's pipe closed) must not stop the agent: a failed write is
/// dropped, where `eprintln!` would panic the task that wrote it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// What `airlock agent` asks for.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The `airlock serve` to take jobs from (e.g. http://127.0.0.1:8480).
    /// Repeat it for servers that share a database: the agent turns to
    /// the next when one cannot be reached.
    #[arg(long = "server", value_name = "URL", required = true)]
    servers: Vec<String>,
    /// This agent's name among its pool's (letters, digits, `.`, `-`,
    /// `_`) [default: the host's name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A label this agent has (repeat for more); each must be one of its
    /// pool's in the server's policy. A step that `runs_on` labels runs
    /// on an agent with all of them.
    #[arg(long = "label", value_name = "LABEL")]
    labels: Vec<String>,
    /// Jobs at once, at most [default: number of cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Serve this agent's metrics for Prometheus at
    /// `http://ADDR/metrics` (OpenMetrics text, no token: bind it to an
    /// address only the monitoring system reaches, e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Stop after this many jobs (for tests and one-shot machines)
    /// [default: never].
    #[arg(long, value_name = "N", hide = true)]
    max_jobs: Option<u64>,
}

/// How the server answered a claim.
#[derive(serde::Deserialize)]
struct Claimed {
    job: String,
    fence: u64,
    lease_ms: u64,
    spec: JobSpec,
}

/// Runs jobs until stopped (Ctrl-C, SIGTERM).
pub async fn agent(state_dir: &Path, args: AgentArgs) -> anyhow::Result<u8> {
    let Some(token) = std::env::var("AIRLOCK_AGENT_TOKEN").ok().filter(|t| !t.trim().is_empty()) else {
        say!("error: `airlock agent` needs its pool's token");
        say!("hint: set AIRLOCK_AGENT_TOKEN to the token whose sha256 is the pool's `token_sha256` in the policy");
        return Ok(exit::USAGE);
    };
    let cache_limit = crate::artifact_cache_limit()?;
    let mut list = Vec::with_capacity(args.servers.len());
    for url in &args.servers {
        match Server::new(url, token.trim(), 4) {
            Ok(s) => list.push(s),
            Err(bad) => {
                say!("error: {}", bad.message);
                say!("hint: {}", bad.hint);
                return Ok(exit::USAGE);
            }
        }
    }
    let metrics = Arc::new(AgentMetrics::default());
    let server = Arc::new(Servers { list, at: AtomicUsize::new(0), metrics: metrics.clone() });
    drop(token);
    let name = match args.name.clone() {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
    };
    let root = state_dir.join("agent");
    std::fs::create_dir_all(&root).map_err(|e| anyhow::anyhow!("cannot make `{}`: {e}", root.display()))?;
    // One agent per state directory: it owns what is in `jobs/`, so what
    // an agent killed there left behind goes now.
    let lock_path = root.join("agent.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("cannot open `{}`: {e}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            say!("error: another airlock agent is using the state directory `{}`", state_dir.display());
            say!("hint: give each agent a state directory of its own (--state-dir)");
            return Ok(exit::USAGE);
        }
        Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock `{}`: {e}", lock_path.display()),
    }
    match std::fs::remove_dir_all(root.join("jobs")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove the jobs a stopped agent left in `{}`: {e}", root.display()),
    }
    let blobs = ArtifactStore::new(root.join("blobs"));
    let sandbox = Arc::new(airlock_sandbox::Sandbox::new(Some(state_dir.join("cache")))?);
    let stop = airlock_runner::CancellationToken::new();
    crate::serve::cancel_on_stop_signals(stop.clone());
    // The agent's blobs are copies of its server's: a cache.
    crate::cache::keep_trimmed(blobs.clone(), cache_limit, stop.clone());
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        let at = listener.local_addr()?;
        tokio::spawn(serve_metrics(listener, metrics, stop.clone()));
        say!("agent {name}: metrics at http://{at}/metrics");
    }
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| airlock_runner::RunOptions::default().jobs);
    say!(
        "agent {name} takes jobs from {} ({jobs} at once; labels: {})",
        server.list.iter().map(Server::base).collect::<Vec<_>>().join(", "),
        if args.labels.is_empty() { "none".into() } else { args.labels.join(", ") }
    );
    let worker = Arc::new(Worker {
        server,
        name,
        claim: serde_json::json!({ "labels": args.labels, "wait_ms": 20_000 }).to_string(),
        sandbox,
        plugins: Plugins::default(),
        dirs: JobDirs::new(root.join("jobs")),
        blobs,
        stop,
        left: args.max_jobs.map(std::sync::atomic::AtomicU64::new),
        turn: tokio::sync::Mutex::new(()),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..jobs {
        workers.spawn(worker.clone().work());
    }
    let mut code = exit::OK;
    while let Some(done) = workers.join_next().await {
        if let Ok(c) = done
            && c != exit::OK
        {
            code = c;
            worker.stop.cancel();
        }
    }
    Ok(code)
}

/// The servers an agent talks to: one at a time, the next when that one
/// cannot be reached. Any of them answers for any job, since they share
/// the database.
struct Servers {
    list: Vec<Server>,
    at: AtomicUsize,
    metrics: Arc<AgentMetrics>,
}

impl Servers {
    /// The server in use, and its place in the list.
    fn current(&self) -> (usize, &Server) {
        let i = self.at.load(Ordering::Relaxed) % self.list.len();
        (i, &self.list[i])
    }

    /// Turns from server `i`, which could not be reached, to the next
    /// (unless another call turned already).
    fn failed(&self, i: usize) {
        self.metrics.unreachable();
        let _ = self.at.compare_exchange(i, (i + 1) % self.list.len(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// [`Server::call`] on the server in use, then on each other in turn
    /// while they cannot be reached.
    async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, bytes::Bytes), CallError> {
        let mut last = CallError::Unreachable("no server".into());
        for _ in 0..self.list.len() {
            let (i, server) = self.current();
            match server.call(method.clone(), path, json.clone(), headers).await {
                Err(e @ CallError::Unreachable(_)) => {
                    self.failed(i);
                    last = e;
                }
                answer => return answer,
            }
        }
        Err(last)
    }
}

/// What the agent's workers share; each claims and runs one job at a time.
struct Worker {
    server: Arc<Servers>,
    name: String,
    claim: String,
    sandbox: Arc<airlock_sandbox::Sandbox>,
    plugins: Plugins,
    dirs: JobDirs,
    blobs: ArtifactStore,
    stop: airlock_runner::CancellationToken,
    /// Jobs left to take, when bounded.
    left: Option<std::sync::atomic::AtomicU64>,
    /// Held by the worker whose claim is out.
    turn: tokio::sync::Mutex<()>,
}

impl Worker {
    /// Claims and runs jobs until stopped; answers the exit code.
    async fn work(self: Arc<Self>) -> u8 {
        use std::sync::atomic::Ordering::SeqCst;
        let name = self.name.as_str();
        let headers = [("x-airlock-agent", name)];
        let mut quiet = Duration::from_millis(200);
        while !self.stop.is_cancelled() {
            if let Some(left) = &self.left
                && left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_err()
            {
                break;
            }
            // One claim at a time waits at the server, whatever the
            // number of workers: a new job wakes one claim, not one per
            // idle worker, and only one asks the database.
            let turn = tokio::select! {
                t = self.turn.lock() => t,
                () = self.stop.cancelled() => break,
            };
            let claim = Some(self.claim.clone().into_bytes());
            let answer = tokio::select! {
                a = self.server.call(Method::POST, "/api/v1/agent/claim", claim, &headers) => a,
                () = self.stop.cancelled() => break,
            };
            let (status, body) = match answer {
                Ok(a) => a,
                Err(e) => {
                    // The server is restarting, or out of reach: try again.
                    say!("agent {name}: {e}; trying again in {} ms", quiet.as_millis());
                    tokio::time::sleep(quiet).await;
                    quiet = (quiet * 2).min(Duration::from_secs(5));
                    self.give_back();
                    continue;
                }
            };
            quiet = Duration::from_millis(200);
            match status {
                StatusCode::OK => {}
                StatusCode::NO_CONTENT => {
                    self.give_back();
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST => {
                    let why = error_of(&body)
                        .map(|e| e.message)
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    say!("error: the server refuses this agent: {why}");
                    return exit::USAGE;
                }
                other => {
                    let why = error_of(&body).map(|e| e.message).unwrap_or_default();
                    say!("agent {name}: the server answered {other} to a claim: {why}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.give_back();
                    continue;
                }
            }
            let claimed: Claimed = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => {
                    say!("agent {name}: the server's job cannot be read: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            drop(turn);
            let job = Job { server: self.server.clone(), name: self.name.clone(), claimed };
            job.work(&self.sandbox, &self.plugins, &self.dirs, &self.blobs).await;
        }
        exit::OK
    }

    /// A claim that brought no job does not count against `--max-jobs`.
    fn give_back(&self) {
        if let Some(left) = &self.left {
            left.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// One claimed job.
struct Job {
    server: Arc<Servers>,
    name: String,
    claimed: Claimed,
}

impl Job {
    fn path(&self, rest: &str) -> String {
        format!("/api/v1/agent/jobs/{}/{rest}", self.claimed.job)
    }

    async fn work(
        &self,
        sandbox: &Arc<airlock_sandbox::Sandbox>,
        plugins: &Plugins,
        dirs: &JobDirs,
        blobs: &ArtifactStore,
    ) {
        let id = &self.claimed.job;
        say!("job {id}: claimed (fence {})", self.claimed.fence);
        let (metrics, began) = (self.server.metrics.clone(), std::time::Instant::now());
        metrics.job_started();
        let ended = |outcome| metrics.job_ended(outcome, began.elapsed().as_secs_f64());
        let lost = airlock_runner::CancellationToken::new();
        let renewing = tokio::spawn(renew(
            self.server.clone(),
            self.name.clone(),
            self.path("renew"),
            self.claimed.fence,
            self.claimed.lease_ms,
            lost.clone(),
        ));
        // A directory of this claim's own: a job whose lease expired may
        // be claimed again, by another worker of this same agent, while
        // the first still runs it.
        let dir = dirs.take();
        let outcome = async {
            for sha in self.claimed.spec.digests() {
                // A blob here is marked used, so the cache keeps it.
                if blobs.local(sha).is_err() {
                    self.fetch(blobs, sha).await?;
                }
            }
            let result = run_job(sandbox, plugins, &dir, blobs, &self.claimed.spec).await;
            for output in &result.outputs {
                self.upload(blobs, &output.sha256, output.size).await?;
            }
            Ok::<JobResult, Failed>(result)
        };
        let result = tokio::select! {
            r = outcome => r,
            () = lost.cancelled() => Err(Failed::Lost),
        };
        let result = match result {
            Ok(r) => r,
            Err(Failed::Lost) => {
                say!("job {id}: the lease went to another agent; this agent drops the job");
                renewing.abort();
                dirs.give_back(dir, false);
                ended("dropped");
                return;
            }
            Err(Failed::Unreachable(why) | Failed::Other(why)) => JobResult {
                failure: Some(format!("step `{}`: on agent `{}`: {why}", self.claimed.spec.step, self.name)),
                log: String::new(),
                log_written: 0,
                outputs: Vec::new(),
                deploy_requests: Vec::new(),
            },
        };
        // The outputs are in the agent's store and uploaded: the workspace
        // goes, in the background (a tree of files takes a while), or, if
        // empty, waits for the next job, which may come as soon as the
        // server has the completion.
        dirs.give_back(dir, result.failure.is_none());
        let body = serde_json::json!({ "fence": self.claimed.fence, "result": result }).to_string();
        let answer = self
            .server
            .call(Method::POST, &self.path("complete"), Some(body.into_bytes()), &[("x-airlock-agent", &self.name)])
            .await;
        renewing.abort();
        match answer {
            Ok((StatusCode::OK, _)) => {
                let outcome = if result.failure.is_some() { "failed" } else { "succeeded" };
                say!("job {id}: completed ({outcome})");
                ended(outcome);
            }
            Ok((status, body)) => {
                let why = error_of(&body).map(|e| e.message).unwrap_or_default();
                say!("job {id}: the completion was refused ({status}): {why}");
                ended("refused");
            }
            Err(e) => {
                say!("job {id}: the completion was not delivered: {e}");
                ended("undelivered");
            }
        }
    }

    /// Fetches a blob the job names into `blobs`, checked against its
    /// digest, from the server in use or, if it cannot be reached, the next.
    async fn fetch(&self, blobs: &ArtifactStore, sha: &str) -> Result<(), Failed> {
        let mut last = String::new();
        for _ in 0..self.server.list.len() {
            let (i, server) = self.server.current();
            match self.fetch_from(server, blobs, sha).await {
                Err(Failed::Unreachable(e)) => {
                    self.server.failed(i);
                    last = e;
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        Err(Failed::Unreachable(last))
    }

    async fn fetch_from(&self, server: &Server, blobs: &ArtifactStore, sha: &str) -> Result<(), Failed> {
        let req = server
            .request(Method::GET, &self.path(&format!("blobs/{sha}")))
            .header("x-airlock-agent", &self.name)
            .body(bytes_body(Vec::new()))
            .map_err(|e| Failed::Other(e.to_string()))?;
        let resp = server.open(req).await.map_err(Failed::from)?;
        if resp.status() == StatusCode::CONFLICT {
            return Err(Failed::Lost);
        }
        if resp.status() != StatusCode::OK {
            return Err(Failed::Other(format!("the server answered {} for blob {sha}", resp.status())));
        }
        let mut writer = blobs.writer(None).map_err(|e| Failed::Other(e.to_string()))?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            // A server that dies half-way: the next sends it all again.
            let frame = frame.map_err(|e| Failed::Unreachable(format!("blob {sha}: {e}")))?;
            if let Some(data) = frame.data_ref() {
                writer.write(data).map_err(|e| Failed::Other(e.to_string()))?;
            }
        }
        let (got, size, _) = writer.finish().map_err(|e| Failed::Other(e.to_string()))?;
        if got != sha {
            return Err(Failed::Other(format!("blob {sha} arrived as other bytes ({got})")));
        }
        self.server.metrics.fetched(size);
        Ok(())
    }

    /// Uploads an output from `blobs` to the server in use or, if it
    /// cannot be reached, the next.
    async fn upload(&self, blobs: &ArtifactStore, sha: &str, size: u64) -> Result<(), Failed> {
        let mut last = String::new();
        for _ in 0..self.server.list.len() {
            let (i, server) = self.server.current();
            match self.upload_to(server, blobs, sha, size).await {
                Err(Failed::Unreachable(e)) => {
                    self.server.failed(i);
                    last = e;
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
        Err(Failed::Unreachable(last))
    }

    async fn upload_to(&self, server: &Server, blobs: &ArtifactStore, sha: &str, size: u64) -> Result<(), Failed> {
        let path = blobs.path(sha).map_err(|e| Failed::Other(e.to_string()))?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| Failed::Other(format!("{}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::new(file).map_ok(hyper::body::Frame::data);
        let body: Body = http_body_util::StreamBody::new(stream).boxed();
        let req = server
            .request(Method::PUT, &self.path(&format!("blobs/{sha}")))
            .header("x-airlock-agent", &self.name)
            .header(hyper::header::CONTENT_LENGTH, size)
            .body(body)
            .map_err(|e| Failed::Other(e.to_string()))?;
        let (status, answer) = server.send(req).await.map_err(Failed::from)?;
        if status == StatusCode::CONFLICT {
            return Err(Failed::Lost);
        }
        if status != StatusCode::OK {
            let why = error_of(&answer).map(|e| e.message).unwrap_or_default();
            return Err(Failed::Other(format!("the upload of output {sha} was refused ({status}): {why}")));
        }
        self.server.metrics.uploaded(size);
        Ok(())
    }
}

/// Why a job's fetch or upload failed: a server that could not be
/// reached (the next may be), the job no longer this agent's (409), or
/// anything else (no server will do better).
enum Failed {
    Unreachable(String),
    Lost,
    Other(String),
}

impl From<CallError> for Failed {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(_) | CallError::BrokenAnswer(_) => Self::Unreachable(e.to_string()),
            CallError::BadRequest(_) => Self::Other(e.to_string()),
        }
    }
}

/// The directories jobs run in, under `jobs/`: each job its own, with
/// its `workspace/`, `tmp/` and `inputs/`. One a job that succeeded left
/// empty waits for the next job, as a server's workspaces do: making
/// directories is most of what a short step costs once many were deleted
/// (ext4 skips inodes freed lately), here 2 ms of a no-op step's 3. The
/// rest are removed in the background; what an agent stopped before it
/// was done leaves is removed when the agent next starts.
struct JobDirs {
    root: PathBuf,
    spare: std::sync::Mutex<Vec<PathBuf>>,
    next: std::sync::atomic::AtomicU64,
}

impl JobDirs {
    fn new(root: PathBuf) -> Self {
        Self { root, spare: std::sync::Mutex::default(), next: std::sync::atomic::AtomicU64::new(0) }
    }

    /// An empty directory for a job: a spare one, or a name not used yet
    /// (made as the job is laid out).
    fn take(&self) -> PathBuf {
        if let Some(dir) = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop() {
            return dir;
        }
        self.root.join(self.next.fetch_add(1, Ordering::Relaxed).to_string())
    }

    /// Takes a job's directory back: kept for the next job if the job
    /// `succeeded` and left it as it came (an empty workspace, scratch
    /// and inputs, no mounts), else removed in the background. A job
    /// that failed may leave wasmtime finishing a file operation there.
    fn give_back(&self, dir: PathBuf, succeeded: bool) {
        let empty = |sub: &str| std::fs::read_dir(dir.join(sub)).is_ok_and(|mut e| e.next().is_none());
        if succeeded && empty("workspace") && empty("tmp") && empty("inputs") && !dir.join("mounts").exists() {
            self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(dir);
            return;
        }
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
    }
}

/// Renews the lease every third of it until aborted; cancels `lost` when
/// the server says the job is no longer this agent's.
async fn renew(
    server: Arc<Servers>,
    name: String,
    path: String,
    fence: u64,
    lease_ms: u64,
    lost: airlock_runner::CancellationToken,
) {
    let body = serde_json::json!({ "fence": fence }).to_string();
    loop {
        tokio::time::sleep(Duration::from_millis((lease_ms / 3).max(50))).await;
        match server.call(Method::POST, &path, Some(body.clone().into_bytes()), &[("x-airlock-agent", &name)]).await {
            Ok((StatusCode::OK, _)) => {}
            Ok((StatusCode::CONFLICT | StatusCode::NOT_FOUND, _)) => {
                lost.cancel();
                return;
            }
            Ok((status, _)) => say!("agent {name}: renewing answered {status}; trying again"),
            Err(e) => say!("agent {name}: cannot renew: {e}; trying again"),
        }
    }
}

/// Most connections to the metrics address at once; more wait to be
/// accepted.
const METRICS_CONNECTIONS: usize = 8;

/// Answers `GET /metrics` on `listener` until `stop`: a few connections
/// at a time, each given a few seconds, whatever a client sends.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    stop: airlock_runner::CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, kind, text) = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => {
                            (StatusCode::OK, airlock_runner::metrics::CONTENT_TYPE, metrics.encode())
                        }
                        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "GET /metrics\n".to_owned()),
                    };
                    hyper::Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, kind)
                        .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            drop(slot);
        });
    }
}
