//! wasmtime, narrowed to what an airlock build step may use.
//!
//! This is the only crate that runs guest code. It compiles plugins (with
//! an on-disk cache), checks what they import against what the step is
//! granted, and runs one step at a time in a fresh [`wasmtime::Store`] with
//! a memory limit, a deadline (epoch interruption), optional fuel, captured
//! output, a quota on what its workspace may hold, and a WASI context that
//! holds exactly the step's workspace, its inputs (read-only), its
//! arguments and its declared environment.
//!
//! It must never hand a guest anything the caller did not pass in: no
//! host environment variable, no inherited stdio, no socket, no directory
//! other than those in the [`Invocation`]. Interfaces that are not granted
//! are not linked at all, so a plugin importing one is refused before it
//! runs, with a message naming the interface.
//!
//! Inside, `link` sets up the engines (with and without fuel, and one
//! without deadline checks for big tools run in a process of their own,
//! [`worker`]) and
//! their linkers, `load` turns a file into a checked [`Plugin`] through
//! the compile cache, `run` runs one [`Invocation`] and names how it
//! ended, and each host interface beyond WASI is a module of its own
//! ([`deploy`]) linked only for steps granted it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), airlock_sandbox::SandboxError> {
//! use airlock_sandbox::{Invocation, Sandbox};
//! let sandbox = Sandbox::new(Some("/tmp/airlock-cache".into()))?;
//! let plugin = sandbox.load("plugins/noop.wasm".as_ref())?;
//! let outcome = sandbox.run(&plugin, Invocation::new("/tmp/ws".into())).await;
//! assert!(outcome.result.is_ok());
//! # Ok(()) }
//! ```

mod cache;
pub mod deploy;
pub mod determinism;
mod error;
mod limits;
mod link;
mod load;
mod log;
mod quota;
mod run;
pub mod worker;

pub use airlock_model::policy::HostInterface;
pub use cache::{Cached, CompileCache, DEFAULT_COMPILE_CACHE_LIMIT};
pub use deploy::DeployRequest;
pub use error::SandboxError;
pub use limits::{Limiter, MAX_TABLE_ELEMENTS};
pub use link::{
    GRANTED_INTERFACES, HostGrants, MAX_CONCURRENT_STEPS, MAX_MEMORIES, MAX_MEMORIES_PER_MODULE, MAX_TABLES,
    MAX_TABLES_PER_MODULE,
};
pub use load::{Plugin, PluginKind};
pub use log::LogSink;
pub use quota::{MAX_DEPTH, OverQuota, QUOTA_TICK, Quota, Usage, measure};
pub use run::{Failure, Invocation, Outcome};

use link::{Flavor, FlavorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use airlock_model::DEFAULT_PLUGIN_LIMIT;

/// What a step's cache key says of the sandbox that ran it. A step
/// recorded by one sandbox is taken by another only if this is the same:
/// it names airlock's sandbox, the wasmtime it builds on (checked against
/// `Cargo.lock` by a test), and the revision of what [`determinism`]
/// gives a step.
pub const SANDBOX_VERSION: &str =
    concat!("airlock-sandbox ", env!("CARGO_PKG_VERSION"), "; wasmtime 48.0.8; determinism 1");

/// How often the engine's epoch advances: the granularity of deadlines and
/// of the points where a running guest yields to other steps.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine: compiles, checks and runs plugins. Cheap to share.
pub struct Sandbox {
    plain: Flavor,
    fueled: Flavor,
    unchecked: Flavor,
    cache: Option<CompileCache>,
    step_process: Option<worker::StepProcess>,
    stop_ticker: Arc<AtomicBool>,
    /// Cache entries still being written, waited for when it drops.
    behind: cache::WriteBehind,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// An engine that caches compiled plugins in `cache_dir`, if given.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, SandboxError> {
        let engine_error = |e: wasmtime::Error| SandboxError::Engine(format!("{e:#}"));
        let plain = Flavor::new(FlavorKind::Plain).map_err(engine_error)?;
        let fueled = Flavor::new(FlavorKind::Fueled).map_err(engine_error)?;
        let unchecked = Flavor::new(FlavorKind::Unchecked).map_err(engine_error)?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        // Epochs drive deadlines and yielding. One thread ticks both
        // engines; it ends when the sandbox is dropped.
        let (a, b, stop) = (plain.engine.weak(), fueled.engine.weak(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("airlock-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match (a.upgrade(), b.upgrade()) {
                        (Some(a), Some(b)) => {
                            a.increment_epoch();
                            b.increment_epoch();
                        }
                        _ => break,
                    }
                }
            })
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            plain,
            fueled,
            unchecked,
            cache: cache_dir.map(CompileCache::new),
            step_process: None,
            stop_ticker,
            behind: Default::default(),
        })
    }

    /// Bounds the compile cache to `bytes` of compiled code (the default
    /// is [`DEFAULT_COMPILE_CACHE_LIMIT`]).
    pub fn set_compile_cache_limit(&mut self, bytes: u64) {
        self.cache = self.cache.take().map(|c| c.with_limit(bytes));
    }

    /// Runs core modules of at least `process.min_bytes` (real tools) each
    /// in a step process of their own, compiled without deadline checks:
    /// see [`worker`]. Needs the compile cache, through which the process
    /// gets the compiled code; without one this does nothing.
    pub fn set_step_process(&mut self, process: worker::StepProcess) {
        if self.cache.is_some() {
            self.step_process = Some(process);
        }
    }

    fn flavor(&self, kind: FlavorKind) -> &Flavor {
        match kind {
            FlavorKind::Plain => &self.plain,
            FlavorKind::Fueled => &self.fueled,
            FlavorKind::Unchecked => &self.unchecked,
        }
    }
}
