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
mod limits;
mod log;
mod quota;

pub use airlock_model::policy::HostInterface;
pub use cache::CompileCache;
pub use deploy::DeployRequest;
pub use limits::{Limiter, MAX_TABLE_ELEMENTS};
pub use log::LogSink;
pub use quota::{MAX_DEPTH, OverQuota, QUOTA_TICK, Quota, Usage, measure};

use airlock_model::{GUEST_INPUTS, GUEST_WORKSPACE};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "step",
        exports: { default: async },
    });
}

use bindings::airlock::step::types as wit;

/// Largest plugin file accepted: bigger than any real step, small enough
/// that compiling a hostile one cannot exhaust the host.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// How often the engine's epoch advances: the granularity of deadlines and
/// of the points where a running guest yields to other steps.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// After a deadline, how long a guest blocked in a host call (sleeping,
/// polling) gets before its call is dropped outright.
const BLOCKED_GRACE: Duration = Duration::from_millis(200);

/// Entries of a finished step's workspace counted on the async thread
/// before the rest of the walk moves to a blocking one.
const INLINE_MEASURE_ENTRIES: u64 = 64;

/// The WASI interfaces a step is granted: files under its preopens,
/// clocks, randomness, stdio, its arguments and environment. Sockets, name
/// lookup and HTTP are absent on purpose.
pub const GRANTED_INTERFACES: &[&str] = &[
    "airlock:step/types",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Host interfaces beyond WASI that a step is granted (by the environment
/// its pipeline runs for). Nothing is granted by default, and what is not
/// granted is not linked: a plugin that imports it cannot be instantiated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HostGrants(std::collections::BTreeSet<HostInterface>);

impl HostGrants {
    /// Grants these interfaces.
    pub fn of(interfaces: impl IntoIterator<Item = HostInterface>) -> Self {
        Self(interfaces.into_iter().collect())
    }

    /// Whether `interface` is granted.
    pub fn allows(&self, interface: HostInterface) -> bool {
        self.0.contains(&interface)
    }
}

/// Links each granted host interface, each from its own module.
fn link_host(l: &mut wasmtime::component::Linker<ComponentState>, grants: &HostGrants) -> wasmtime::Result<()> {
    for interface in &grants.0 {
        match interface {
            HostInterface::Deploy => deploy::add_to_linker(l, |s: &mut ComponentState| &mut s.deploy)?,
        }
    }
    Ok(())
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The plugin file could not be read.
    #[error("cannot read plugin `{path}`: {source}")]
    Read {
        /// The plugin's path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The plugin file is larger than [`MAX_PLUGIN_BYTES`].
    #[error(
        "plugin `{path}` is {}, over the {} limit for plugins",
        airlock_model::format_size(*size),
        airlock_model::format_size(MAX_PLUGIN_BYTES)
    )]
    TooLarge {
        /// The plugin's path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not a WebAssembly module or component.
    #[error("plugin `{path}` is not a WebAssembly module or component")]
    NotWasm {
        /// The plugin's path.
        path: PathBuf,
    },
    /// wasmtime refused to compile it.
    #[error("plugin `{path}` does not compile: {message}")]
    Compile {
        /// The plugin's path.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// It imports something the step is not granted.
    #[error(
        "plugin `{path}` imports {}, which this step is not granted",
        imports.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
    )]
    NotGranted {
        /// The plugin's path.
        path: PathBuf,
        /// Every import not granted, as the plugin names it.
        imports: Vec<String>,
    },
    /// It asks for more memories or tables than a step may have.
    #[error("plugin `{path}` needs more than a step may have: {detail}")]
    TooMuch {
        /// The plugin's path.
        path: PathBuf,
        /// What it asks for, and the limit.
        detail: String,
    },
    /// A granted interface is imported with other types than airlock's.
    #[error("plugin `{path}` cannot be linked: {message}")]
    Link {
        /// The plugin's path.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// It exports nothing airlock knows how to run.
    #[error(
        "plugin `{path}` has nothing to run: it exports neither `airlock:step/run` nor `wasi:cli/run`, nor `_start`"
    )]
    NothingToRun {
        /// The plugin's path.
        path: PathBuf,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

impl SandboxError {
    /// The same error about the plugin at `path`.
    fn with_path(mut self, to: &Path) -> Self {
        match &mut self {
            Self::Read { path, .. }
            | Self::TooLarge { path, .. }
            | Self::NotWasm { path }
            | Self::Compile { path, .. }
            | Self::NotGranted { path, .. }
            | Self::TooMuch { path, .. }
            | Self::Link { path, .. }
            | Self::NothingToRun { path } => *path = to.to_owned(),
            Self::Engine(_) => {}
        }
        self
    }
}

/// What kind of program a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A component exporting `airlock:step/run`: configured with `with:`.
    Step,
    /// A `wasi:cli/command` component: configured with `args:`.
    Command,
    /// A core module with `_start` (wasip1): configured with `args:`.
    Module,
}

enum Compiled {
    Step(bindings::StepPre<ComponentState>),
    Command(wasmtime_wasi::p2::bindings::CommandPre<ComponentState>),
    Module(wasmtime::InstancePre<ModuleState>),
}

/// A plugin ready to instantiate: compiled, checked, linked.
#[derive(Clone)]
pub struct Plugin {
    compiled: Arc<Compiled>,
    /// sha256 of the plugin file, hex.
    pub digest: String,
    /// The plugin's file name, used as `argv[0]` and in messages.
    pub name: String,
    /// Whether the compiled form came from the cache.
    pub from_cache: bool,
    fuel: bool,
}

impl Plugin {
    /// What kind of program this is.
    pub fn kind(&self) -> PluginKind {
        match &*self.compiled {
            Compiled::Step(_) => PluginKind::Step,
            Compiled::Command(_) => PluginKind::Command,
            Compiled::Module(_) => PluginKind::Module,
        }
    }
}

/// Everything one step is given.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// `(name, host directory)`, each mounted read-only at `/inputs/NAME`.
    pub inputs: Vec<(String, PathBuf)>,
    /// `with:` parameters, for step plugins.
    pub params: Vec<(String, String)>,
    /// Arguments after `argv[0]`, for command programs.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// The run's id, passed to step plugins.
    pub run_id: String,
    /// The step's name, passed to step plugins.
    pub step: String,
    /// Linear memory limit in bytes.
    pub memory: u64,
    /// Bytes of stdout and stderr kept.
    pub log_limit: u64,
    /// Instruction budget; the plugin must have been loaded with fuel.
    pub fuel: Option<u64>,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// What the workspace may hold.
    pub quota: Quota,
    /// Where the guest's output goes, when the caller wants to read it
    /// while the step runs; otherwise a new log of `log_limit` bytes.
    pub live_log: Option<LogSink>,
}

impl Invocation {
    /// An invocation with the default limits and nothing but a workspace.
    pub fn new(workspace: PathBuf) -> Self {
        Self {
            workspace,
            inputs: Vec::new(),
            params: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            run_id: String::new(),
            step: String::new(),
            memory: airlock_model::DEFAULT_MEMORY_LIMIT,
            log_limit: airlock_model::DEFAULT_LOG_LIMIT,
            fuel: None,
            timeout: airlock_model::DEFAULT_TIMEOUT,
            quota: Quota { bytes: airlock_model::DEFAULT_DISK_LIMIT, entries: airlock_model::DEFAULT_FILES_LIMIT },
            live_log: None,
        }
    }
}

/// Why a step failed, in terms a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin returned an error message.
    Error(String),
    /// A command program exited with a non-zero status.
    Exit(i32),
    /// The guest asked for more memory than its limit.
    MemoryLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The guest ran past its deadline.
    Timeout(Duration),
    /// The guest used up its fuel.
    OutOfFuel(u64),
    /// The guest's call stack grew past wasmtime's limit.
    StackOverflow,
    /// The guest tried to grow a table past [`MAX_TABLE_ELEMENTS`].
    TableLimit,
    /// The workspace went past its quota while the guest ran.
    Quota(OverQuota),
    /// The guest trapped (or a host call failed).
    Trap(String),
    /// The WASI context could not be set up (e.g. an input directory is gone).
    Setup(String),
    /// The run was cancelled while the step ran.
    Cancelled,
}

/// What running a step produced.
#[derive(Debug)]
pub struct Outcome {
    /// Success, or why not.
    pub result: Result<(), Failure>,
    /// The head of stdout and stderr, interleaved as written.
    pub log: Vec<u8>,
    /// Bytes the guest wrote in all; more than `log.len()` means the log
    /// was truncated.
    pub log_written: u64,
    /// Wall time of instantiation and run.
    pub duration: Duration,
    /// Deployments the step asked for (a granted `airlock:step/deploy`).
    pub deploy_requests: Vec<DeployRequest>,
}

/// State of a component step's store.
pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    timed_out: bool,
    deploy: deploy::Requests,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// State of a core-module step's store.
pub(crate) struct ModuleState {
    ctx: WasiP1Ctx,
    limiter: Limiter,
    timed_out: bool,
}

struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// One engine configuration with its linkers.
struct Flavor {
    engine: Engine,
    /// WASI as [`GRANTED_INTERFACES`] says, and no host interface.
    components: wasmtime::component::Linker<ComponentState>,
    /// That, with the host interfaces of each set of grants seen so far.
    granted: std::sync::Mutex<std::collections::HashMap<HostGrants, wasmtime::component::Linker<ComponentState>>>,
    modules: wasmtime::Linker<ModuleState>,
}

impl Flavor {
    fn new(fuel: bool) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        // The plain engine runs almost every step: it takes instances,
        // memories and stacks from a pool instead of mapping and unmapping
        // them per step, which halves what a short step costs. The pool
        // only reserves address space. Where even that is refused (a
        // tight `ulimit -v`), steps are allocated one by one instead.
        let engine = if fuel {
            Engine::new(&config)?
        } else {
            let mut pooled = config.clone();
            pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool()));
            Engine::new(&pooled).or_else(|e| {
                tracing::warn!("cannot reserve the instance pool ({e:#}); allocating per step");
                Engine::new(&config)
            })?
        };
        let mut components = wasmtime::component::Linker::new(&engine);
        link_granted(&mut components)?;
        let mut modules = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |s: &mut ModuleState| &mut s.ctx)?;
        Ok(Self { engine, components, modules, granted: Default::default() })
    }

    /// The linker of a step with `grants`: exactly what they name.
    fn component_linker(&self, grants: &HostGrants) -> wasmtime::Result<wasmtime::component::Linker<ComponentState>> {
        if grants.0.is_empty() {
            return Ok(self.components.clone());
        }
        let mut linkers = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = linkers.get(grants) {
            return Ok(l.clone());
        }
        let mut linker = self.components.clone();
        link_host(&mut linker, grants)?;
        linkers.insert(grants.clone(), linker.clone());
        Ok(linker)
    }
}

/// Steps that can run at once on one [`Sandbox`] without fuel: the size of
/// its instance pool. The scheduler never runs more.
pub const MAX_CONCURRENT_STEPS: usize = 256;

/// Linear memories one core module may define. Real programs have one.
pub const MAX_MEMORIES_PER_MODULE: u32 = 1;
/// Linear memories one plugin may define in all: a component's program
/// and its adapter's.
pub const MAX_MEMORIES: u32 = 2;
/// Tables one core module may define.
pub const MAX_TABLES_PER_MODULE: u32 = 2;
/// Tables one plugin may define in all.
pub const MAX_TABLES: u32 = 16;

/// The instance pool of the plain engine. Per step it allows what real
/// plugins use many times over (a Rust component has a handful of core
/// instances and one memory), and it caps what a hostile component can
/// take from the steps beside it.
fn pool() -> wasmtime::PoolingAllocationConfig {
    let steps = MAX_CONCURRENT_STEPS as u32;
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(steps)
        .total_stacks(steps)
        .max_core_instances_per_component(16)
        .total_core_instances(steps * 16)
        .max_memories_per_module(MAX_MEMORIES_PER_MODULE)
        .max_memories_per_component(MAX_MEMORIES)
        .total_memories(steps * MAX_MEMORIES)
        .max_tables_per_module(MAX_TABLES_PER_MODULE)
        .max_tables_per_component(MAX_TABLES)
        .total_tables(steps * MAX_TABLES)
        .table_elements(MAX_TABLE_ELEMENTS);
    pool
}

/// Links exactly [`GRANTED_INTERFACES`], nothing else.
fn link_granted(l: &mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::WasiCli;
    use wasmtime_wasi::clocks::WasiClocks;
    use wasmtime_wasi::filesystem::WasiFilesystem;
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::WasiRandom;
    type S = ComponentState;
    // Types only: nothing to implement, but the instance must exist.
    l.instance("airlock:step/types@0.1.0")?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<S, HasIo>(l, |s| &mut s.table)?;
    wasmtime_wasi_io::bindings::wasi::io::poll::add_to_linker::<S, HasIo>(l, |s| &mut s.table)?;
    wasmtime_wasi_io::bindings::wasi::io::streams::add_to_linker::<S, HasIo>(l, |s| &mut s.table)?;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(l, wasmtime_wasi::clocks::WasiClocksView::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(l, wasmtime_wasi::clocks::WasiClocksView::clocks)?;
    filesystem::types::add_to_linker::<S, WasiFilesystem>(l, |s| {
        wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(s)
    })?;
    filesystem::preopens::add_to_linker::<S, WasiFilesystem>(l, |s| {
        wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(s)
    })?;
    random::random::add_to_linker::<S, WasiRandom>(l, |s| s.ctx.random())?;
    random::insecure::add_to_linker::<S, WasiRandom>(l, |s| s.ctx.random())?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(l, |s| s.ctx.random())?;
    fn cli(s: &mut ComponentState) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
        wasmtime_wasi::cli::WasiCliView::cli(s)
    }
    cli::exit::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(l, cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(l, cli)?;
    Ok(())
}

/// The engine: compiles, checks and runs plugins. Cheap to share.
pub struct Sandbox {
    plain: Flavor,
    fueled: Flavor,
    cache: Option<CompileCache>,
    stop_ticker: Arc<AtomicBool>,
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
        let plain = Flavor::new(false).map_err(engine_error)?;
        let fueled = Flavor::new(true).map_err(engine_error)?;
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
        Ok(Self { plain, fueled, cache: cache_dir.map(CompileCache::new), stop_ticker })
    }

    /// Reads, compiles (or loads from the cache), checks and links a plugin.
    /// `fuel` selects the engine that counts instructions.
    pub fn load_with(&self, path: &Path, fuel: bool) -> Result<Plugin, SandboxError> {
        self.load_granted(path, fuel, &HostGrants::default())
    }

    /// [`Sandbox::load_with`] for a step granted host interfaces beyond
    /// WASI: a plugin importing one that `grants` does not name is refused.
    pub fn load_granted(&self, path: &Path, fuel: bool, grants: &HostGrants) -> Result<Plugin, SandboxError> {
        let read_error = |source| SandboxError::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_PLUGIN_BYTES {
            return Err(SandboxError::TooLarge { path: path.to_owned(), size });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Messages name the path as the caller gave it.
        self.load_bytes_granted(&bytes, &name, fuel, grants).map_err(|e| e.with_path(path))
    }

    /// [`Sandbox::load_with`] without fuel.
    pub fn load(&self, path: &Path) -> Result<Plugin, SandboxError> {
        self.load_with(path, false)
    }

    /// Loads a plugin from its bytes; `name` appears in messages.
    pub fn load_bytes(&self, bytes: &[u8], name: &str, fuel: bool) -> Result<Plugin, SandboxError> {
        self.load_bytes_granted(bytes, name, fuel, &HostGrants::default())
    }

    /// [`Sandbox::load_bytes`] with host interfaces granted.
    pub fn load_bytes_granted(
        &self,
        bytes: &[u8],
        name: &str,
        fuel: bool,
        grants: &HostGrants,
    ) -> Result<Plugin, SandboxError> {
        let path = PathBuf::from(name);
        if bytes.len() as u64 > MAX_PLUGIN_BYTES {
            return Err(SandboxError::TooLarge { path, size: bytes.len() as u64 });
        }
        let is_component = match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => false,
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => true,
            _ => return Err(SandboxError::NotWasm { path }),
        };
        let flavor = if fuel { &self.fueled } else { &self.plain };
        let digest = hex::encode(Sha256::digest(bytes));
        let compile_error = |e: wasmtime::Error| {
            let message = format!("{e:#}");
            // The pooled engine checks a module's memories and tables
            // against the pool when compiling; say so in airlock's words.
            match message.split_once("pooling allocator requirements: ") {
                Some((_, detail)) => SandboxError::TooMuch { path: path.clone(), detail: detail.to_owned() },
                None => SandboxError::Compile { path: path.clone(), message },
            }
        };
        let cached = self.cache.as_ref().and_then(|c| c.get(&digest, &flavor.engine));
        let from_cache = cached.is_some();
        let compiled = if is_component {
            let component = match &cached {
                // SAFETY (the one `unsafe` in airlock): wasmtime runs
                // precompiled code as it finds it. These bytes were produced
                // by `precompile_component` of an engine with this exact
                // configuration (the cache key says so), written only by us
                // under the state directory, and their sha256 was checked
                // just now. wasmtime also checks its version and settings
                // in the header before using them.
                #[allow(unsafe_code)]
                Some(c) => unsafe { wasmtime::component::Component::deserialize(&flavor.engine, c) },
                None => wasmtime::component::Component::new(&flavor.engine, bytes),
            }
            .map_err(compile_error)?;
            if !from_cache {
                self.store_in_cache(&digest, &flavor.engine, component.serialize());
            }
            self.link_component(flavor, &component, &path, grants)?
        } else {
            let module = match &cached {
                // SAFETY: as for components above.
                #[allow(unsafe_code)]
                Some(c) => unsafe { wasmtime::Module::deserialize(&flavor.engine, c) },
                None => wasmtime::Module::new(&flavor.engine, bytes),
            }
            .map_err(compile_error)?;
            if !from_cache {
                self.store_in_cache(&digest, &flavor.engine, module.serialize());
            }
            Self::link_module(flavor, &module, &path)?
        };
        Ok(Plugin { compiled: Arc::new(compiled), digest, name: name.to_owned(), from_cache, fuel })
    }

    fn store_in_cache(&self, digest: &str, engine: &Engine, serialized: wasmtime::Result<Vec<u8>>) {
        let Some(cache) = &self.cache else { return };
        let result =
            serialized.map_err(|e| std::io::Error::other(format!("{e:#}"))).and_then(|b| cache.put(digest, engine, &b));
        if let Err(e) = result {
            tracing::warn!(dir = %cache.dir().display(), "cannot cache a compiled plugin: {e}");
        }
    }

    fn link_component(
        &self,
        flavor: &Flavor,
        component: &wasmtime::component::Component,
        path: &Path,
        grants: &HostGrants,
    ) -> Result<Compiled, SandboxError> {
        let ty = component.component_type();
        let granted = |name: &str| {
            GRANTED_INTERFACES.contains(&name) || HostInterface::from_wit(name).is_some_and(|i| grants.allows(i))
        };
        let refused: Vec<String> = ty
            .imports(&flavor.engine)
            .map(|(import, _)| import)
            .filter(|import| !granted(import.split('@').next().unwrap_or(import)))
            .map(str::to_owned)
            .collect();
        if !refused.is_empty() {
            return Err(SandboxError::NotGranted { path: path.to_owned(), imports: refused });
        }
        let exports: Vec<String> = ty.exports(&flavor.engine).map(|(n, _)| n.to_owned()).collect();
        let exports_iface = |name: &str| exports.iter().any(|e| e.split('@').next() == Some(name));
        if let Some(needs) = component.resources_required() {
            check_resources(path, &needs, MAX_MEMORIES, MAX_TABLES)?;
        }
        let link_error = |e: wasmtime::Error| SandboxError::Link { path: path.to_owned(), message: format!("{e:#}") };
        let linker = flavor.component_linker(grants).map_err(link_error)?;
        let pre = linker.instantiate_pre(component).map_err(link_error)?;
        if exports_iface("airlock:step/run") {
            Ok(Compiled::Step(bindings::StepPre::new(pre).map_err(link_error)?))
        } else if exports_iface("wasi:cli/run") {
            Ok(Compiled::Command(wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(link_error)?))
        } else {
            Err(SandboxError::NothingToRun { path: path.to_owned() })
        }
    }

    fn link_module(flavor: &Flavor, module: &wasmtime::Module, path: &Path) -> Result<Compiled, SandboxError> {
        let refused: Vec<String> = module
            .imports()
            .filter(|import| import.module() != "wasi_snapshot_preview1")
            .map(|import| format!("{}::{}", import.module(), import.name()))
            .collect();
        if !refused.is_empty() {
            return Err(SandboxError::NotGranted { path: path.to_owned(), imports: refused });
        }
        if module.get_export("_start").is_none() {
            return Err(SandboxError::NothingToRun { path: path.to_owned() });
        }
        check_resources(path, &module.resources_required(), MAX_MEMORIES_PER_MODULE, MAX_TABLES_PER_MODULE)?;
        let pre = flavor
            .modules
            .instantiate_pre(module)
            .map_err(|e| SandboxError::Link { path: path.to_owned(), message: format!("{e:#}") })?;
        Ok(Compiled::Module(pre))
    }

    /// Runs a plugin once. Never panics on guest behaviour: every way a
    /// guest can fail ends in [`Outcome::result`].
    pub async fn run(&self, plugin: &Plugin, inv: Invocation) -> Outcome {
        let started = Instant::now();
        let log = match &inv.live_log {
            Some(live) => live.clone(),
            None => LogSink::new(usize::try_from(inv.log_limit).unwrap_or(usize::MAX)),
        };
        let mut deploy_requests = Vec::new();
        let result = match self.wasi(&inv, plugin, &log) {
            Err(e) => Err(Failure::Setup(e)),
            Ok(builder) => {
                let call = self.call(plugin, builder, &inv, &mut deploy_requests);
                // Epoch interruption stops guest code at its deadline; a
                // guest blocked inside a host call (a long sleep) is
                // stopped here instead. Going over the disk quota stops
                // it wherever it is. Either way the store is dropped with
                // the call, which ends the guest.
                tokio::select! {
                    r = tokio::time::timeout(inv.timeout + BLOCKED_GRACE, call) => match r {
                        Ok(r) => r,
                        Err(_) => Err(Failure::Timeout(inv.timeout)),
                    },
                    over = quota::watch(&inv.workspace, inv.quota) => Err(Failure::Quota(over)),
                }
            }
        };
        // What was written since the last look still counts. Most steps
        // leave a few files: those are counted right here; a big
        // workspace is walked on a blocking thread.
        let result = match result {
            Ok(()) => match quota::measure_some(&inv.workspace, &inv.quota, INLINE_MEASURE_ENTRIES) {
                Ok(Some(_)) => Ok(()),
                Err(over) => Err(Failure::Quota(over)),
                Ok(None) => {
                    let (ws, q) = (inv.workspace.clone(), inv.quota);
                    match tokio::task::spawn_blocking(move || measure(&ws, &q)).await {
                        Ok(Err(over)) => Err(Failure::Quota(over)),
                        _ => Ok(()),
                    }
                }
            },
            failed => failed,
        };
        // A live log stays whole for its readers until the caller has
        // stored it; only a private one is taken without a copy.
        let (log, log_written) = if inv.live_log.is_some() { log.read_from(0) } else { log.take() };
        // A failed step's requests are void: only a step that succeeded
        // has outputs to deploy.
        if result.is_err() {
            deploy_requests.clear();
        }
        Outcome { result, log, log_written, duration: started.elapsed(), deploy_requests }
    }

    fn wasi(&self, inv: &Invocation, plugin: &Plugin, log: &LogSink) -> Result<WasiCtxBuilder, String> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(log.clone()).stderr(log.clone());
        b.preopened_dir(&inv.workspace, GUEST_WORKSPACE, FsPerms::ReadWrite)
            .map_err(|e| format!("cannot open the workspace {}: {e:#}", inv.workspace.display()))?;
        // Also as `.`: wasi-libc resolves relative paths against a `.`
        // preopen, so `open("out.txt")` lands in the workspace.
        b.preopened_dir(&inv.workspace, ".", FsPerms::ReadWrite)
            .map_err(|e| format!("cannot open the workspace {}: {e:#}", inv.workspace.display()))?;
        for (name, dir) in &inv.inputs {
            b.preopened_dir(dir, format!("{}/{name}", GUEST_INPUTS), FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open input `{name}` at {}: {e:#}", dir.display()))?;
        }
        b.envs(&inv.env);
        b.env("PWD", GUEST_WORKSPACE);
        b.initial_cwd(GUEST_WORKSPACE);
        let mut argv = vec![plugin.name.clone()];
        argv.extend(inv.args.iter().cloned());
        b.args(&argv);
        Ok(b)
    }

    async fn call(
        &self,
        plugin: &Plugin,
        mut builder: WasiCtxBuilder,
        inv: &Invocation,
        requests: &mut Vec<DeployRequest>,
    ) -> Result<(), Failure> {
        let flavor = if plugin.fuel { &self.fueled } else { &self.plain };
        let deadline = Instant::now() + inv.timeout;
        let limiter = Limiter::new(inv.memory);
        match &*plugin.compiled {
            Compiled::Step(pre) => {
                let mut store = component_store(flavor, builder, limiter, deadline, inv);
                let ctx = wit::Context {
                    run_id: inv.run_id.clone(),
                    step: inv.step.clone(),
                    workspace: GUEST_WORKSPACE.to_owned(),
                    params: inv
                        .params
                        .iter()
                        .map(|(name, value)| wit::Param { name: name.clone(), value: value.clone() })
                        .collect(),
                    inputs: inv
                        .inputs
                        .iter()
                        .map(|(name, _)| wit::Input { step: name.clone(), path: format!("{}/{name}", GUEST_INPUTS) })
                        .collect(),
                };
                let result = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance.airlock_step_run().call_run(&mut store, &ctx).await
                }
                .await;
                let s = store.data_mut();
                *requests = std::mem::take(&mut s.deploy.0);
                judge(result.map(|r| r.map_err(Failure::Error)), &s.limiter, s.timed_out, inv)
            }
            Compiled::Command(pre) => {
                let mut store = component_store(flavor, builder, limiter, deadline, inv);
                let result = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                }
                .await;
                let s = store.data_mut();
                *requests = std::mem::take(&mut s.deploy.0);
                judge(result.map(|r| r.map_err(|()| Failure::Exit(1))), &s.limiter, s.timed_out, inv)
            }
            Compiled::Module(pre) => {
                let state = ModuleState { ctx: builder.build_p1(), limiter, timed_out: false };
                let mut store = Store::new(&flavor.engine, state);
                store.limiter(|s| &mut s.limiter);
                arm(&mut store, deadline, inv.fuel, |s| &mut s.timed_out);
                let result = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                }
                .await;
                let s = store.data();
                judge(result.map(Ok), &s.limiter, s.timed_out, inv)
            }
        }
    }
}

/// A store for one run of a component, limited and armed.
fn component_store(
    flavor: &Flavor,
    mut builder: WasiCtxBuilder,
    limiter: Limiter,
    deadline: Instant,
    inv: &Invocation,
) -> Store<ComponentState> {
    let state = ComponentState {
        ctx: builder.build(),
        table: ResourceTable::new(),
        limiter,
        timed_out: false,
        deploy: deploy::Requests::default(),
    };
    let mut store = Store::new(&flavor.engine, state);
    store.limiter(|s| &mut s.limiter);
    arm(&mut store, deadline, inv.fuel, |s| &mut s.timed_out);
    store
}

/// Refuses a plugin defining more memories or tables than allowed. The
/// pooled engine refuses such modules when compiling them; this holds the
/// engine with fuel, which allocates on demand, to the same limits.
fn check_resources(
    path: &Path,
    needs: &wasmtime::ResourcesRequired,
    memories: u32,
    tables: u32,
) -> Result<(), SandboxError> {
    let detail = if needs.num_memories > memories {
        format!("it defines {} linear memories, and the limit is {memories}", needs.num_memories)
    } else if needs.num_tables > tables {
        format!("it defines {} tables, and the limit is {tables}", needs.num_tables)
    } else {
        return Ok(());
    };
    Err(SandboxError::TooMuch { path: path.to_owned(), detail })
}

/// Sets the store's deadline and fuel. Every tick the guest yields to the
/// executor, so steps share the worker threads and a cancelled run stops
/// promptly; past the deadline the guest is interrupted.
fn arm<T: 'static>(store: &mut Store<T>, deadline: Instant, fuel: Option<u64>, flag: fn(&mut T) -> &mut bool) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        if Instant::now() >= deadline {
            *flag(ctx.data_mut()) = true;
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Yield(1))
    });
    // Without fuel the engine does not count it and this is a no-op error.
    let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
}

/// Turns wasmtime's result into a [`Failure`] that says which limit, in words.
fn judge(
    result: wasmtime::Result<Result<(), Failure>>,
    limiter: &Limiter,
    timed_out: bool,
    inv: &Invocation,
) -> Result<(), Failure> {
    // A guest that fails after a refused `memory.grow` or `table.grow`
    // failed for want of memory, whatever message it managed to print.
    let refused = || {
        if limiter.memory_refused.is_some() {
            Some(Failure::MemoryLimit { limit: inv.memory })
        } else if limiter.table_refused.is_some() {
            Some(Failure::TableLimit)
        } else {
            None
        }
    };
    let error = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failure)) => return Err(refused().unwrap_or(failure)),
        Err(e) => e,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Ok(()),
            code => Err(refused().unwrap_or(Failure::Exit(code))),
        };
    }
    if timed_out {
        return Err(Failure::Timeout(inv.timeout));
    }
    if let Some(failure) = refused() {
        return Err(failure);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Err(Failure::OutOfFuel(inv.fuel.unwrap_or(0))),
        Some(Trap::StackOverflow) => Err(Failure::StackOverflow),
        Some(Trap::Interrupt) => Err(Failure::Timeout(inv.timeout)),
        _ => Err(Failure::Trap(format!("{error:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: `airlock:step/deploy` used to be linked for every step
    /// and refused only by the check of a plugin's imports at load. Now
    /// the linker of a step without the grant does not have it, so the
    /// plugin could not be instantiated even if that check were skipped.
    #[test]
    fn an_ungranted_host_interface_is_not_linked_at_all() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/wasm32-wasip2/release/deploy_request.wasm");
        assert!(path.is_file(), "{} is missing: run `bash plugins/build`", path.display());
        let flavor = Flavor::new(false).expect("engine");
        let component = wasmtime::component::Component::from_file(&flavor.engine, &path).expect("compiles");
        let ungranted = flavor.component_linker(&HostGrants::default()).expect("linker");
        let refused = ungranted.instantiate_pre(&component).err().expect("refused by the linker alone");
        assert!(format!("{refused:#}").contains("airlock:step/deploy"), "{refused:#}");
        let granted = flavor.component_linker(&HostGrants::of([HostInterface::Deploy])).expect("linker");
        granted.instantiate_pre(&component).expect("linked with the grant");
        // And through the front door, the refusal names what is missing.
        let sandbox = Sandbox::new(None).expect("engine");
        let err = sandbox.load_granted(&path, false, &HostGrants::default()).err().expect("refused");
        assert!(
            matches!(&err, SandboxError::NotGranted { imports, .. } if imports.iter().any(|i| i.starts_with("airlock:step/deploy"))),
            "{err}"
        );
        sandbox.load_granted(&path, false, &HostGrants::of([HostInterface::Deploy])).expect("granted");
    }

    #[test]
    fn refuses_what_is_not_wasm() {
        let sandbox = Sandbox::new(None).expect("engine");
        let err = sandbox.load_bytes(b"#!/bin/sh\necho hi\n", "x.wasm", false).err().expect("refused");
        assert!(matches!(err, SandboxError::NotWasm { .. }), "{err}");
    }

    #[test]
    fn refuses_modules_importing_anything_but_wasi() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module (import "env" "socket" (func)) (func (export "_start")))"#;
        let bytes = wat::parse_str(wat).expect("wat");
        let err = sandbox.load_bytes(&bytes, "net.wasm", false).err().expect("refused");
        assert_eq!(err.to_string(), "plugin `net.wasm` imports `env::socket`, which this step is not granted");
    }

    #[tokio::test]
    async fn a_busy_loop_stops_at_its_deadline() {
        let sandbox = Sandbox::new(None).expect("engine");
        let bytes = wat::parse_str(r#"(module (func (export "_start") (loop (br 0))))"#).expect("wat");
        let plugin = sandbox.load_bytes(&bytes, "spin.wasm", false).expect("loads");
        let ws = tempfile::tempdir().expect("tempdir");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.timeout = Duration::from_millis(100);
        let outcome = sandbox.run(&plugin, inv).await;
        assert_eq!(outcome.result, Err(Failure::Timeout(Duration::from_millis(100))));
    }

    #[tokio::test]
    async fn memory_growth_past_the_limit_is_named() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module (memory 1)
            (func (export "_start")
              (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "grow.wasm", false).expect("loads");
        let ws = tempfile::tempdir().expect("tempdir");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.memory = 1 << 20;
        let outcome = sandbox.run(&plugin, inv).await;
        assert_eq!(outcome.result, Err(Failure::MemoryLimit { limit: 1 << 20 }));
    }
}
