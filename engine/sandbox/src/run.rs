//! Running a loaded plugin once, in a fresh store with the step's limits,
//! and saying in words how it ended.

use crate::link::{ComponentState, Flavor, ModuleState, bindings};
use crate::load::Compiled;
use crate::{DeployRequest, Limiter, LogSink, OverQuota, Plugin, Quota, Sandbox, deploy, quota};
use airlock_model::{GUEST_INPUTS, GUEST_TMP, GUEST_WORKSPACE};
use bindings::airlock::step::types as wit;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// After a deadline, how long a guest blocked in a host call (sleeping,
/// polling) gets before its call is dropped outright.
const BLOCKED_GRACE: Duration = Duration::from_millis(200);

/// Entries of a finished step's workspace counted on the async thread
/// before the rest of the walk moves to a blocking one.
const INLINE_MEASURE_ENTRIES: u64 = 64;

/// Everything one step is given.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// `(name, host directory)`, each mounted read-only at `/inputs/NAME`.
    pub inputs: Vec<(String, PathBuf)>,
    /// An empty host directory mounted read-only at `/inputs` itself, so
    /// that the directory exists for programs that look at it (a
    /// `realpath` of an input walks through it).
    pub inputs_root: Option<PathBuf>,
    /// `(guest path, host directory)`, each mounted read-only at its
    /// absolute guest path: tools' data trees, sources, upstream outputs.
    pub mounts: Vec<(String, PathBuf)>,
    /// Host directory mounted read-write at `/tmp`, named by `TMPDIR`
    /// unless the step's environment sets it; the disk quota counts it
    /// with the workspace.
    pub tmp: Option<PathBuf>,
    /// `argv[0]` of a command program; the plugin's file name if unset.
    pub argv0: Option<String>,
    /// The function a core module starts from; `_start` if unset. For
    /// another, the module's `_initialize` (if any) runs first, as WASI
    /// reactors expect.
    pub entry: Option<String>,
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
    /// The seed of a deterministic step: its clocks start at a fixed
    /// instant and its random bytes come from this seed (see
    /// [`crate::determinism`]). `None` gives it the host's clocks and
    /// random bytes.
    pub seed: Option<[u8; 32]>,
}

impl Invocation {
    /// The directories the step's disk quota covers.
    pub(crate) fn measured(&self) -> Vec<PathBuf> {
        std::iter::once(self.workspace.clone()).chain(self.tmp.clone()).collect()
    }

    /// An invocation with the default limits and nothing but a workspace.
    pub fn new(workspace: PathBuf) -> Self {
        Self {
            workspace,
            inputs: Vec::new(),
            inputs_root: None,
            mounts: Vec::new(),
            tmp: None,
            argv0: None,
            entry: None,
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
            seed: None,
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
    /// The guest tried to grow a table past [`MAX_TABLE_ELEMENTS`](crate::MAX_TABLE_ELEMENTS).
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

impl Sandbox {
    /// Runs a plugin once. Never panics on guest behaviour: every way a
    /// guest can fail ends in [`Outcome::result`].
    pub async fn run(&self, plugin: &Plugin, inv: Invocation) -> Outcome {
        let started = Instant::now();
        let log = match &inv.live_log {
            Some(live) => live.clone(),
            None => LogSink::new(usize::try_from(inv.log_limit).unwrap_or(usize::MAX)),
        };
        let mut deploy_requests = Vec::new();
        let result = match (&self.step_process, &self.cache) {
            (Some(process), Some(cache)) if plugin.in_own_process() => {
                crate::worker::run(process, cache.dir(), plugin, &inv, &log).await
            }
            _ => {
                let call = self.execute(plugin, &inv, &log, &mut deploy_requests);
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
                    over = quota::watch(inv.measured(), inv.quota) => Err(Failure::Quota(over)),
                }
            }
        };
        // What was written since the last look still counts. Most steps
        // leave a few files: those are counted right here; a big
        // workspace is walked on a blocking thread.
        let result = match result {
            Ok(()) => match quota::measure_some(&inv.workspace, &inv.quota, INLINE_MEASURE_ENTRIES) {
                Ok(Some(_)) if inv.tmp.is_none() => Ok(()),
                Err(over) => Err(Failure::Quota(over)),
                Ok(_) => {
                    let (dirs, q) = (inv.measured(), inv.quota);
                    match tokio::task::spawn_blocking(move || quota::measure_all(&dirs, &q)).await {
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

    /// Sets up the guest's WASI context and runs it to its end, without
    /// watching the deadline from outside or the disk quota.
    pub(crate) async fn execute(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        log: &LogSink,
        requests: &mut Vec<DeployRequest>,
    ) -> Result<(), Failure> {
        match self.wasi(inv, plugin, log) {
            Err(e) => Err(Failure::Setup(e)),
            Ok(builder) => self.call(plugin, builder, inv, log, requests).await,
        }
    }

    fn wasi(&self, inv: &Invocation, plugin: &Plugin, log: &LogSink) -> Result<WasiCtxBuilder, String> {
        let mut b = WasiCtxBuilder::new();
        b.stdout(log.clone()).stderr(log.clone());
        // File operations run on the step's own thread, as its code does
        // between two epoch ticks, rather than each being handed to a
        // blocking thread and back: a tool reading its data in small
        // pieces (nextpnr, its chip database) paid that handoff per call.
        b.allow_blocking_current_thread(true);
        b.preopened_dir(&inv.workspace, GUEST_WORKSPACE, FsPerms::ReadWrite)
            .map_err(|e| format!("cannot open the workspace {}: {e:#}", inv.workspace.display()))?;
        // Also as `.`: wasi-libc resolves relative paths against a `.`
        // preopen, so `open("out.txt")` lands in the workspace.
        b.preopened_dir(&inv.workspace, ".", FsPerms::ReadWrite)
            .map_err(|e| format!("cannot open the workspace {}: {e:#}", inv.workspace.display()))?;
        if let Some(root) = &inv.inputs_root {
            b.preopened_dir(root, GUEST_INPUTS, FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open {}: {e:#}", root.display()))?;
        }
        for (name, dir) in &inv.inputs {
            b.preopened_dir(dir, format!("{}/{name}", GUEST_INPUTS), FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open input `{name}` at {}: {e:#}", dir.display()))?;
        }
        for (guest, dir) in &inv.mounts {
            b.preopened_dir(dir, guest, FsPerms::ReadOnly)
                .map_err(|e| format!("cannot mount {} at `{guest}`: {e:#}", dir.display()))?;
        }
        if let Some(tmp) = &inv.tmp {
            b.preopened_dir(tmp, GUEST_TMP, FsPerms::ReadWrite)
                .map_err(|e| format!("cannot open the scratch directory {}: {e:#}", tmp.display()))?;
            if !inv.env.iter().any(|(k, _)| k == "TMPDIR") {
                b.env("TMPDIR", GUEST_TMP);
            }
        }
        b.envs(&inv.env);
        if let Some(seed) = &inv.seed {
            crate::determinism::apply(&mut b, seed, &inv.env);
        }
        b.env("PWD", GUEST_WORKSPACE);
        b.initial_cwd(GUEST_WORKSPACE);
        let mut argv = vec![inv.argv0.clone().unwrap_or_else(|| plugin.name.clone())];
        argv.extend(inv.args.iter().cloned());
        b.args(&argv);
        Ok(b)
    }

    async fn call(
        &self,
        plugin: &Plugin,
        mut builder: WasiCtxBuilder,
        inv: &Invocation,
        log: &LogSink,
        requests: &mut Vec<DeployRequest>,
    ) -> Result<(), Failure> {
        let flavor = self.flavor(plugin.flavor);
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
                judge(result.map(|r| r.map_err(Failure::Error)), &s.limiter, s.timed_out, inv, log)
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
                judge(result.map(|r| r.map_err(|()| Failure::Exit(1))), &s.limiter, s.timed_out, inv, log)
            }
            Compiled::Module(pre) => {
                let state = ModuleState { ctx: builder.build_p1(), limiter, timed_out: false };
                let mut store = Store::new(&flavor.engine, state);
                store.limiter(|s| &mut s.limiter);
                arm(&mut store, deadline, inv.fuel, |s| &mut s.timed_out);
                let result = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let entry = inv.entry.as_deref().unwrap_or("_start");
                    if entry != "_start"
                        && let Some(init) = instance.get_func(&mut store, "_initialize")
                    {
                        init.typed::<(), ()>(&store)?.call_async(&mut store, ()).await?;
                    }
                    let start = instance.get_typed_func::<(), ()>(&mut store, entry)?;
                    start.call_async(&mut store, ()).await
                }
                .await;
                let s = store.data();
                judge(result.map(Ok), &s.limiter, s.timed_out, inv, log)
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
    log: &LogSink,
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
        trap => {
            let reason = match trap {
                Some(Trap::UnreachableCodeReached) => {
                    "wasm `unreachable` executed; the program aborted (a failed assertion, a panic or `abort()`; see its log)".to_owned()
                }
                Some(Trap::MemoryOutOfBounds) => "wasm trap: out of bounds memory access (a bug in the program)".to_owned(),
                Some(Trap::IntegerDivisionByZero) => "wasm trap: integer division by zero".to_owned(),
                Some(t) => format!("wasm trap: {t}"),
                // Not a trap: a host call failed, or an exception nobody caught.
                None => error.root_cause().to_string(),
            };
            // The reason is one line; where it happened goes to the log,
            // one frame a line, function names demangled.
            if let Some(trace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
                log.append(format!("\n[airlock: the step crashed: {reason}]\nwasm backtrace:\n{trace}").as_bytes());
            }
            Err(Failure::Trap(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sandbox;

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

    /// A module can start from another export than `_start`, after its
    /// `_initialize`; it exits with the status it passes to `proc_exit`.
    #[tokio::test]
    async fn a_module_starts_from_its_entry_after_initializing() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (global $ready (mut i32) (i32.const 0))
            (func (export "_initialize") (global.set $ready (i32.const 40)))
            (func (export "run") (call $exit (i32.add (global.get $ready) (i32.const 2))))
            (func (export "helper") (param i32)))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "reactor.wasm", false).expect("loads");
        assert_eq!(plugin.entries(), ["_initialize", "run"], "functions without parameters or results");
        let ws = tempfile::tempdir().expect("tempdir");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.entry = Some("run".into());
        assert_eq!(sandbox.run(&plugin, inv).await.result, Err(Failure::Exit(42)));
        // A module with no function to start from at all is refused.
        let bytes = wat::parse_str(r#"(module (func (export "helper") (param i32)))"#).expect("wat");
        let err = sandbox.load_bytes(&bytes, "lib.wasm", false).err().expect("refused");
        assert!(matches!(err, crate::SandboxError::NothingToRun { .. }), "{err}");
    }

    /// A crash is one line in words; where it happened, frame by frame,
    /// is in the step's log.
    #[tokio::test]
    async fn a_crash_is_named_in_words_with_its_backtrace_in_the_log() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module
            (func $check_invariant unreachable)
            (func $place_and_route (call $check_invariant))
            (func (export "_start") (call $place_and_route)))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "pnr.wasm", false).expect("loads");
        let ws = tempfile::tempdir().expect("tempdir");
        let outcome = sandbox.run(&plugin, Invocation::new(ws.path().to_owned())).await;
        let reason =
            "wasm `unreachable` executed; the program aborted (a failed assertion, a panic or `abort()`; see its log)";
        assert_eq!(outcome.result, Err(Failure::Trap(reason.into())));
        let log = String::from_utf8_lossy(&outcome.log);
        assert!(log.contains(&format!("[airlock: the step crashed: {reason}]\nwasm backtrace:\n")), "{log}");
        let frames: Vec<&str> =
            log.lines().filter(|l| l.contains("check_invariant") || l.contains("place_and_route")).collect();
        assert_eq!(frames.len(), 2, "{log}");
        assert!(frames[0].contains("check_invariant"), "innermost first: {log}");
    }

    /// Atomic instructions run, within the memory limit; a shared memory
    /// (wasmtime's support for them is tier 2) is refused by either engine.
    #[tokio::test]
    async fn atomics_run_and_shared_memories_are_refused() {
        let sandbox = Sandbox::new(None).expect("engine");
        let ws = tempfile::tempdir().expect("tempdir");
        let shared =
            r#"(module (memory 1 1 shared) (func (export "_start") (i32.atomic.store (i32.const 0) (i32.const 1))))"#;
        let bytes = wat::parse_str(shared).expect("wat");
        for fuel in [false, true] {
            let refused = match sandbox.load_bytes(&bytes, "shared.wasm", fuel) {
                Err(e) => e.to_string(),
                Ok(plugin) => {
                    let mut inv = Invocation::new(ws.path().to_owned());
                    inv.fuel = fuel.then_some(1_000_000);
                    format!("{:?}", sandbox.run(&plugin, inv).await.result)
                }
            };
            assert!(refused.contains("shared"), "fuel {fuel}: {refused}");
        }
        for memory in ["(memory 1)"] {
            let wat = format!(
                r#"(module {memory}
                (func (export "_start")
                  (i32.atomic.store (i32.const 0) (i32.const 41))
                  (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
                  (if (i32.ne (i32.atomic.load (i32.const 0)) (i32.const 42)) (then unreachable))
                  (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#
            );
            let bytes = wat::parse_str(&wat).expect("wat");
            for fuel in [false, true] {
                let plugin = sandbox.load_bytes(&bytes, "atomics.wasm", fuel).expect("loads");
                let mut inv = Invocation::new(ws.path().to_owned());
                inv.fuel = fuel.then_some(1_000_000);
                let outcome = sandbox.run(&plugin, inv.clone()).await;
                assert_eq!(outcome.result, Ok(()), "{memory} fuel {fuel}");
                inv.memory = 1 << 20;
                let outcome = sandbox.run(&plugin, inv).await;
                assert_eq!(outcome.result, Err(Failure::MemoryLimit { limit: 1 << 20 }), "{memory} fuel {fuel}");
            }
        }
    }

    /// A step may have memory up to the 4 GiB a 32-bit memory can address.
    #[tokio::test]
    async fn memory_up_to_four_gibibytes() {
        let sandbox = Sandbox::new(None).expect("engine");
        let ws = tempfile::tempdir().expect("tempdir");
        // Grows to 4 GiB less one page, and writes at its top.
        let wat = r#"(module (memory 1)
            (func (export "_start")
              (if (i32.eq (memory.grow (i32.const 65534)) (i32.const -1)) (then unreachable))
              (i32.store (i32.const 0xfffefff0) (i32.const 7))))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "big.wasm", false).expect("loads");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.memory = 4 << 30;
        assert_eq!(sandbox.run(&plugin, inv.clone()).await.result, Ok(()));
        inv.memory = 3 << 30;
        assert_eq!(sandbox.run(&plugin, inv).await.result, Err(Failure::MemoryLimit { limit: 3 << 30 }));
    }

    /// Exception handling, which current toolchains emit, works: a tag
    /// thrown deep in a call is caught with its value.
    #[tokio::test]
    async fn exceptions_are_thrown_and_caught() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module
            (tag $oops (param i32))
            (func $deep (param i32) (if (i32.eqz (local.get 0)) (then (throw $oops (i32.const 42))))
              (call $deep (i32.sub (local.get 0) (i32.const 1))))
            (func (export "_start")
              (block $caught (result i32)
                (try_table (catch $oops $caught) (call $deep (i32.const 100)))
                unreachable)
              (if (i32.ne (i32.const 42)) (then unreachable))))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "eh.wasm", false).expect("loads");
        let ws = tempfile::tempdir().expect("tempdir");
        let outcome = sandbox.run(&plugin, Invocation::new(ws.path().to_owned())).await;
        assert_eq!(outcome.result, Ok(()));
        // The engine with fuel has them too.
        let plugin = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "eh.wasm", true).expect("loads");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.fuel = Some(1_000_000);
        assert_eq!(sandbox.run(&plugin, inv).await.result, Ok(()));
    }

    /// An exception nobody catches ends the step, named; one thrown and
    /// caught forever, each a new object in the step's heap, stops at
    /// the deadline like any busy loop.
    #[tokio::test]
    async fn exceptions_are_bounded_like_everything_else() {
        let sandbox = Sandbox::new(None).expect("engine");
        let ws = tempfile::tempdir().expect("tempdir");
        let uncaught = r#"(module (tag $t) (func (export "_start") (throw $t)))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(uncaught).expect("wat"), "u.wasm", false).expect("loads");
        let outcome = sandbox.run(&plugin, Invocation::new(ws.path().to_owned())).await;
        assert!(matches!(&outcome.result, Err(Failure::Trap(m)) if m.contains("exception")), "{:?}", outcome.result);
        let forever = r#"(module (tag $t (param i64))
            (func (export "_start") (local $n i64)
              (loop $again
                (block $caught (result i64)
                  (try_table (catch $t $caught) (throw $t (local.get $n)))
                  unreachable)
                (local.set $n (i64.add (i64.const 1)))
                (br $again))))"#;
        let plugin = sandbox.load_bytes(&wat::parse_str(forever).expect("wat"), "f.wasm", false).expect("loads");
        let mut inv = Invocation::new(ws.path().to_owned());
        inv.timeout = Duration::from_millis(300);
        inv.memory = 16 << 20;
        let outcome = sandbox.run(&plugin, inv).await;
        assert!(
            matches!(outcome.result, Err(Failure::Timeout(_)) | Err(Failure::MemoryLimit { .. })),
            "{:?}",
            outcome.result
        );
    }

    /// The GC proposal stays off: a module that defines a struct type is
    /// refused when it is compiled.
    #[test]
    fn the_gc_proposal_is_off() {
        let sandbox = Sandbox::new(None).expect("engine");
        let wat = r#"(module (type (struct (field i32))) (func (export "_start")))"#;
        let err = sandbox.load_bytes(&wat::parse_str(wat).expect("wat"), "gc.wasm", false).err().expect("refused");
        assert!(matches!(err, crate::SandboxError::Unsupported { .. }), "{err}");
        assert!(err.to_string().starts_with("plugin `gc.wasm` uses WebAssembly that airlock does not run: "), "{err}");
    }
}
