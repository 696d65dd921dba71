//! The scheduler: runs a validated pipeline to its end.
//!
//! It records the run and each step's transitions in the store before
//! acting on them, starts every step whose `needs` succeeded (at most
//! `jobs` at work at a time, and beside them up to `jobs` more fetching
//! or compiling their tools), runs each in the sandbox with exactly its workspace,
//! inputs, parameters and environment, takes its outputs into the artifact
//! store, hands them read-only to the steps downstream, retries what the
//! pipeline says to retry, and skips the dependants of a step that failed
//! while independent branches finish. Publish steps run here, in the
//! host: they publish upstream artifacts with a token minted for the step
//! and revoked when it ends, and no guest ever sees it.
//!
//! Runs submitted to `airlock serve` wait in its [`queue`]; a run the
//! store holds can be started, or resumed after its engine stopped, with
//! [`Engine::run_recorded`], which never runs a succeeded step again.
//!
//! It never passes a guest anything the pipeline did not declare, and it
//! never lets one step's failure stop the engine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use airlock_runner::{Engine, RunOptions};
//! let engine = Engine::open(".airlock".as_ref())?;
//! let src = std::fs::read_to_string("pipelines/site.yaml")?;
//! let lookup = airlock_runner::FsLookup::new("pipelines".as_ref());
//! let pipeline = airlock_model::load("pipelines/site.yaml", &src, &lookup).map_err(|_| "invalid")?;
//! let summary = engine
//!     .run(&pipeline, "pipelines".as_ref(), "pipelines/site.yaml", RunOptions::default(), |_| {}, Default::default())
//!     .await?;
//! println!("{} {}", summary.run.id, summary.run.state.as_str());
//! # Ok(()) }
//! ```

pub mod agent;
mod environments;
mod exec;
pub mod intake;
mod lookup;
pub mod metrics;
mod provenance;
mod publish;
pub mod queue;
mod statuses;

pub use exec::{Progress, RunSummary};
pub use lookup::FsLookup;

use airlock_host::ArtifactStore;
use airlock_host::publish::TargetStore;
use airlock_sandbox::Sandbox;
use airlock_store::{RunRecord, RunState, StepState, Store, now_ms};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use tokio_util::sync::CancellationToken;

/// Why a run could not be started or finished (a step failing is not
/// one of these: it is a run that ends `failed`).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] airlock_store::StoreError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] airlock_sandbox::SandboxError),
    /// Bad `--param` values.
    #[error("{}", .0.join("\n"))]
    Params(Vec<String>),
    /// The pipeline needs something of the admin policy it does not have.
    #[error("{0}")]
    Policy(String),
    /// The state directory is unusable.
    #[error("state directory `{}`: {source}", path.display())]
    StateDir {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

/// Ends a run whose engine stopped: every step that had not ended, and
/// every approval request still waiting, with the run.
pub(crate) fn end_orphan(store: &Store, run: &RunRecord) -> Result<(), RunnerError> {
    for step in store.steps(run)? {
        if step.state.is_final() {
            continue;
        }
        let reason = if step.state == StepState::Pending {
            "not started: the engine running it stopped"
        } else {
            "the engine running it stopped (killed or crashed) while it ran"
        };
        store.update_step(&run.id, &step.name, Some(reason.into()), |s| {
            s.state = if s.state == StepState::Pending { StepState::Cancelled } else { StepState::Failed };
            s.reason = Some(reason.into());
            s.ended_ms = Some(now_ms());
        })?;
        store.cancel_approval(&run.id, &step.name)?;
    }
    store.finish_run(
        &run.id,
        RunState::Failed,
        Some("the engine running it stopped (killed or crashed) before the run ended; start it again".into()),
    )?;
    store.flush()?;
    Ok(())
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps at work at once, at most. Steps still fetching or compiling
    /// their tool do not count: up to as many again prepare beside them.
    pub jobs: usize,
    /// `--param NAME=VALUE`, in the order given.
    pub params: Vec<(String, String)>,
    /// Keep step workspaces after the run (for debugging).
    pub keep_workspaces: bool,
    /// Who starts the run: a user of the policy, or `local:NAME`.
    pub requester: String,
    /// Why the run is untrusted (a pull request from a fork, a push of a
    /// branch the policy does not trust): its publish and deploy steps
    /// are refused with this reason. None for a trusted run.
    pub untrusted: Option<String>,
    /// Run every step, taking nothing from the step cache (what they make
    /// is still recorded for later runs).
    pub no_cache: bool,
    /// Whose untrusted step cache scope an untrusted run reads and writes
    /// (`untrusted:WHO`): the requester unless given. A repository's runs
    /// are all the forge's; they give the author of the push or pull
    /// request, so that one fork's runs never feed another's.
    pub untrusted_author: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            params: Vec::new(),
            keep_workspaces: false,
            requester: "local".into(),
            untrusted: None,
            no_cache: false,
            untrusted_author: None,
        }
    }
}

/// The engine: a state directory with its store, artifacts, compile cache
/// and the sandbox.
pub struct Engine {
    pub(crate) state_dir: PathBuf,
    pub(crate) store: Store,
    pub(crate) artifacts: ArtifactStore,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) targets: Arc<BTreeMap<String, TargetStore>>,
    pub(crate) policy: Option<Arc<(airlock_model::policy::Policy, PathBuf)>>,
    pub(crate) live: LiveLogs,
    pub(crate) tool_cache: airlock_host::tools::ToolCache,
    /// Trees that never change (a fetched tool's, a commit's checkout),
    /// by directory, as handed to agents: each file's digest, worked out
    /// once rather than on every attempt.
    pub(crate) handed_over: exec::HandedOver,
    /// What it tells a monitoring system.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Leases taken back at open, for the queue.
    reclaimed: std::sync::Mutex<Vec<airlock_store::Lease>>,
    /// The state directory's lock, held while the engine lives.
    _lock: std::fs::File,
}

/// Takes the state directory for this process: its `engine.lock`,
/// locked until the file is dropped.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, RunnerError> {
    let path = state_dir.join("engine.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| RunnerError::StateDir { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunnerError::StateDir {
            path: state_dir.to_owned(),
            source: std::io::Error::other(
                "another airlock engine (`airlock serve` or `airlock run`) is using it; \
                 give each engine a state directory of its own (--state-dir)",
            ),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(RunnerError::StateDir { path, source }),
    }
}

/// The state directory's name among the engines sharing a database,
/// made once: its host's name and a random part.
fn engine_name(state_dir: &Path) -> Result<String, RunnerError> {
    let path = state_dir.join("engine-name");
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RunnerError::StateDir { path, source }),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).take(40).collect();
    let name = format!("{}-{:08x}", if host.is_empty() { "engine" } else { &host }, rand::random::<u32>());
    // Written whole or not at all: a name must not change once used.
    let partial = state_dir.join(".engine-name.new");
    std::fs::write(&partial, &name)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|source| RunnerError::StateDir { path, source })?;
    Ok(name)
}

/// Removes half-written artifacts of an engine that was killed: all of
/// them when this process holds the store alone, else only those long
/// untouched (another engine may be writing into a shared directory).
fn remove_partial(artifacts: &ArtifactStore, store: &Store) {
    let untouched = if store.is_shared() { std::time::Duration::from_secs(600) } else { std::time::Duration::ZERO };
    match artifacts.remove_partial(untouched) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} partial artifacts left by an engine that stopped"),
        Err(e) => tracing::warn!("could not remove partial artifacts: {e}"),
    }
}

/// Running attempts by (run, step): the attempt's number and its log.
type LiveMap = std::collections::HashMap<(String, String), (u32, airlock_sandbox::LogSink)>;

/// The logs of the step attempts running now, by run and step, so a
/// server can show a step's output while it is being written. An attempt
/// leaves this map once its log is in the store.
#[derive(Clone, Default)]
pub struct LiveLogs(Arc<std::sync::Mutex<LiveMap>>);

impl LiveLogs {
    fn insert(&self, key: (String, String), attempt: u32, sink: airlock_sandbox::LogSink) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, (attempt, sink));
        }
    }

    fn remove(&self, key: &(String, String)) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }

    /// The running attempt of a step and its log from `offset` on: the
    /// bytes, and how many the guest has written in all.
    pub fn read(&self, run: &str, step: &str, offset: usize) -> Option<(u32, Vec<u8>, u64)> {
        let map = self.0.lock().ok()?;
        let (attempt, sink) = map.get(&(run.to_owned(), step.to_owned()))?;
        let (bytes, written) = sink.read_from(offset);
        Some((*attempt, bytes, written))
    }
}

impl Engine {
    /// Opens the engine on a state directory, creating it if needed.
    pub fn open(state_dir: &Path) -> Result<Self, RunnerError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| RunnerError::StateDir { path: state_dir.to_owned(), source })?;
        Self::open_on(state_dir, Store::open(state_dir)?)
    }

    /// Opens the engine on a state directory (artifacts, caches) and a
    /// store opened already (the state directory's own, or a database
    /// other engines may share), with leases of the default length.
    pub fn open_on(state_dir: &Path, store: Store) -> Result<Self, RunnerError> {
        Self::open_leased(state_dir, store, airlock_store::DEFAULT_LEASE)
    }

    /// Opens the engine as [`open_on`](Self::open_on) does, holding its
    /// runs with leases of `lease` (see [`airlock_store::Lease`]): another
    /// engine on the same database takes over a run whose engine has not
    /// renewed its lease for that long.
    ///
    /// The state directory is this process's alone while the engine
    /// lives (a lock on `engine.lock`), and its name in the leases is the
    /// state directory's: runs it held when it last stopped are taken back
    /// at once, and runs of `airlock run` among them, which nobody
    /// follows any more, end failed.
    pub fn open_leased(state_dir: &Path, store: Store, lease: std::time::Duration) -> Result<Self, RunnerError> {
        let lock = lock_state_dir(state_dir)?;
        store.identify(&engine_name(state_dir)?, lease);
        if !store.is_shared() {
            // This process holds the store alone: a run-minted token still
            // live now belongs to a run whose engine died, and dies too.
            for id in store.revoke_run_tokens(None)? {
                tracing::warn!("revoked token {id}: its run ended with its engine");
            }
            // Runs of `airlock run` still `running`: their engine was
            // killed or crashed (this process holds no lease yet).
            let orphans = store.runs()?.into_iter().filter(|r| r.state == RunState::Running && r.submission.is_none());
            for run in orphans {
                end_orphan(&store, &run)?;
                tracing::warn!("run {} was left running by an engine that stopped; recorded failed", run.id);
            }
        }
        // What this state directory's engine held when it stopped: runs
        // of `airlock run` end (nobody follows them again); submitted
        // runs go on when the queue starts.
        let mut reclaimed = Vec::new();
        for lease in store.reclaim_runs()? {
            match store.run(&lease.run)? {
                Some(run) if run.submission.is_none() && !run.state.is_final() => {
                    for id in store.revoke_run_tokens(Some(&run.id))? {
                        tracing::warn!("revoked token {id}: its run ended with its engine");
                    }
                    end_orphan(&store, &run)?;
                    tracing::warn!("run {} was left running by an engine that stopped; recorded failed", run.id);
                }
                _ => reclaimed.push(lease),
            }
        }
        let sandbox = Sandbox::new(Some(state_dir.join("cache")))?;
        let artifacts = ArtifactStore::new(state_dir.join("artifacts"));
        remove_partial(&artifacts, &store);
        let tools = state_dir.join("tools");
        let tool_cache = airlock_host::tools::ToolCache::open(&tools)
            .map_err(|source| RunnerError::StateDir { path: tools, source })?;
        Ok(Self {
            tool_cache,
            state_dir: state_dir.to_owned(),
            store,
            artifacts,
            sandbox: Arc::new(sandbox),
            targets: Arc::default(),
            policy: None,
            live: LiveLogs::default(),
            handed_over: exec::HandedOver::default(),
            metrics: Arc::default(),
            reclaimed: std::sync::Mutex::new(reclaimed),
            _lock: lock,
        })
    }

    /// Keeps artifacts in `dir` rather than the state directory's
    /// `artifacts/`: a directory the engines sharing a database share
    /// (on a shared filesystem), so that a run one engine began another
    /// can finish.
    pub fn with_artifacts(mut self, dir: &Path) -> Self {
        self.artifacts = ArtifactStore::new(dir.to_owned());
        remove_partial(&self.artifacts, &self.store);
        self
    }

    /// Keeps artifacts in a shared object store as well, with the state
    /// directory's `artifacts/` as the local cache in front of it: a step
    /// is recorded only once its outputs are there, so any engine sharing
    /// the database and the bucket can go on with its run.
    pub fn with_shared_artifacts(mut self, tier: airlock_host::ObjectTier) -> Self {
        self.artifacts = self.artifacts.clone().with_shared(tier);
        self
    }

    /// The submitted runs this engine's state directory held when it
    /// last stopped, taken back at open: the queue resumes them first.
    pub fn take_reclaimed(&self) -> Vec<airlock_store::Lease> {
        std::mem::take(&mut *self.reclaimed.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Gives deploy and approval steps the admin policy's environments,
    /// users and groups; `dir` is where its relative paths start.
    pub fn with_policy(mut self, policy: airlock_model::policy::Policy, dir: PathBuf) -> Self {
        self.policy = Some(Arc::new((policy, dir)));
        self
    }

    /// Fetches tools into (and finds them in) the tool cache at `dir`
    /// rather than the state directory's `tools/`: a cache several state
    /// directories share (fetched tools are checked by digest, so any
    /// cache of this host's is as good).
    pub fn with_tool_cache(mut self, dir: &Path) -> Result<Self, RunnerError> {
        self.tool_cache = airlock_host::tools::ToolCache::open(dir)
            .map_err(|source| RunnerError::StateDir { path: dir.to_owned(), source })?;
        Ok(self)
    }

    /// Bounds the tool cache to `bytes`, kept after each download; the
    /// tools least recently used are removed past it.
    pub fn with_tool_cache_limit(mut self, bytes: u64) -> Self {
        self.tool_cache = self.tool_cache.with_limit(bytes);
        self
    }

    /// Keeps compiled plugins in `dir` instead of the state directory's
    /// own cache (another engine's, so as not to compile them again).
    pub fn with_compile_cache(mut self, dir: &Path) -> Result<Self, RunnerError> {
        self.sandbox = Arc::new(Sandbox::new(Some(dir.to_owned()))?);
        Ok(self)
    }

    /// Bounds the cache of compiled plugins to `bytes`; the least
    /// recently used are removed past it.
    pub fn with_compile_cache_limit(mut self, bytes: u64) -> Self {
        match Arc::get_mut(&mut self.sandbox) {
            Some(sandbox) => sandbox.set_compile_cache_limit(bytes),
            None => tracing::warn!("the compile cache limit is set before the engine is shared; ignored"),
        }
        self
    }

    /// Runs big tools each in a step process of their own (see
    /// [`airlock_sandbox::worker`]).
    pub fn with_step_process(mut self, process: airlock_sandbox::worker::StepProcess) -> Self {
        match Arc::get_mut(&mut self.sandbox) {
            Some(sandbox) => sandbox.set_step_process(process),
            None => tracing::warn!("step processes are set up before the engine is shared; ignored"),
        }
        self
    }

    /// The tool cache.
    pub fn tool_cache(&self) -> &airlock_host::tools::ToolCache {
        &self.tool_cache
    }

    /// Gives publish steps these targets (from the admin policy).
    pub fn with_targets(mut self, targets: Vec<TargetStore>) -> Self {
        self.targets = Arc::new(targets.into_iter().map(|t| (t.name().to_owned(), t)).collect());
        self
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    /// The logs of the steps running now.
    pub fn live_logs(&self) -> &LiveLogs {
        &self.live
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_store::{Scope, TokenSpec};

    /// An engine that died in a publish step leaves its token live; the
    /// next engine on the state directory revokes it before anything.
    #[test]
    fn tokens_of_runs_that_died_with_their_engine_are_revoked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scope = Scope::parse("publish:snapshots/b1").expect("scope");
        let (orphan, person) = {
            let store = Store::open(dir.path()).expect("store");
            let minted =
                TokenSpec { run: Some("20261124-000000-dead".into()), ..TokenSpec::new(scope.clone(), 60_000) };
            let (_, orphan) = store.create_token(&minted).expect("token");
            let (_, person) = store.create_token(&TokenSpec::new(scope, 60_000)).expect("token");
            (orphan.id, person.id)
        };
        let engine = Engine::open(dir.path()).expect("engine");
        let tokens = engine.store().tokens().expect("tokens");
        let revoked = |id: &str| tokens.iter().find(|t| t.id == id).expect("listed").revoked_ms.is_some();
        assert!(revoked(&orphan));
        assert!(!revoked(&person));
    }
}
