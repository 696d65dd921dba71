//! The engines a step runs on and what their linkers hold: WASI as
//! [`GRANTED_INTERFACES`] lists it, plus the host interfaces a step's
//! grants name, each linked from its own module. Anything else is absent,
//! so a plugin importing it cannot be instantiated.

use crate::{HostInterface, Limiter, MAX_TABLE_ELEMENTS, deploy};
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "step",
        exports: { default: async },
    });
}

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
pub(crate) fn link_host(
    l: &mut wasmtime::component::Linker<ComponentState>,
    grants: &HostGrants,
) -> wasmtime::Result<()> {
    for interface in &grants.0 {
        match interface {
            HostInterface::Deploy => deploy::add_to_linker(l, |s: &mut ComponentState| &mut s.deploy)?,
        }
    }
    Ok(())
}

/// State of a component step's store.
pub(crate) struct ComponentState {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) timed_out: bool,
    pub(crate) deploy: deploy::Requests,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// State of a core-module step's store.
pub(crate) struct ModuleState {
    pub(crate) ctx: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    pub(crate) timed_out: bool,
}

pub(crate) struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Which engine a plugin is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlavorKind {
    /// Deadlines by epoch checks, instances from the pool: most steps.
    Plain,
    /// Counts instructions, for steps with a fuel budget.
    Fueled,
    /// No checks compiled in: big modules, each run in a step process of
    /// its own that the host kills at the deadline or on cancel. Not
    /// from a pool either: a step process makes one instance, and
    /// Cranelift compiles a module for the pooled engine about a tenth
    /// slower (Yosys's 66 MiB on 2 cores: 35.2 and 35.8 s pooled, 31.6
    /// and 32.2 s not, the same hour).
    Unchecked,
}

/// One engine configuration with its linkers.
pub(crate) struct Flavor {
    pub(crate) engine: Engine,
    /// WASI as [`GRANTED_INTERFACES`] says, and no host interface.
    pub(crate) components: wasmtime::component::Linker<ComponentState>,
    /// That, with the host interfaces of each set of grants seen so far.
    pub(crate) granted:
        std::sync::Mutex<std::collections::HashMap<HostGrants, wasmtime::component::Linker<ComponentState>>>,
    pub(crate) modules: wasmtime::Linker<ModuleState>,
}

impl Flavor {
    /// `fuel` counts instructions; `epoch` checks the deadline in the
    /// compiled code. A flavor without it runs only in a step process of
    /// its own, which the host kills at the deadline.
    pub(crate) fn new(kind: FlavorKind) -> wasmtime::Result<Self> {
        let fuel = kind == FlavorKind::Fueled;
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(kind != FlavorKind::Unchecked);
        config.consume_fuel(fuel);
        // The WebAssembly proposals beyond the wasm 2.0 core, each decided
        // (the security page lists them): exception handling on, for the
        // toolchains that emit it; the GC proposal itself (structs and
        // arrays in a collected heap) off until a tool needs it; the
        // threads proposal's atomic instructions on, for C++ tools built
        // with them (there is no way to start a thread: wasi-threads is
        // not linked); shared memories stay off, as wasmtime has them by
        // default (tier 2 in wasmtime: the pool refuses them too).
        config.wasm_exceptions(true);
        config.wasm_gc(false);
        config.wasm_threads(true);
        // No `.eh_frame` for the system's unwinder: wasmtime walks wasm
        // frames itself (traps, backtraces, exceptions), and only a native
        // profiler or debugger would read it. Leaving it out spares making
        // it in every compile, makes the compiled code 3% smaller to write,
        // check and map (CPython: 24.7 MiB instead of 25.5), and keeps big
        // tools out of the C runtime's global list of frames.
        config.native_unwind_info(false);
        // The plain engine runs almost every step: it takes instances,
        // memories and stacks from a pool instead of mapping and unmapping
        // them per step, which halves what a short step costs. The pool
        // only reserves address space. Where even that is refused (a
        // tight `ulimit -v`), steps are allocated one by one instead.
        let engine = if kind != FlavorKind::Plain {
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
    pub(crate) fn component_linker(
        &self,
        grants: &HostGrants,
    ) -> wasmtime::Result<wasmtime::component::Linker<ComponentState>> {
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

/// Steps that can run at once on one [`Sandbox`](crate::Sandbox) without fuel: the size of
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
pub(crate) fn pool() -> wasmtime::PoolingAllocationConfig {
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
        .table_elements(MAX_TABLE_ELEMENTS)
        // One heap per step for the exception objects it throws.
        .total_gc_heaps(steps);
    pool
}

/// Links exactly [`GRANTED_INTERFACES`], nothing else.
pub(crate) fn link_granted(l: &mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sandbox, SandboxError};
    use std::path::Path;

    #[test]
    fn an_ungranted_host_interface_is_not_linked_at_all() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/wasm32-wasip2/release/deploy_request.wasm");
        assert!(path.is_file(), "{} is missing: run `bash plugins/build`", path.display());
        let flavor = Flavor::new(FlavorKind::Plain).expect("engine");
        let component = wasmtime::component::Component::from_file(&flavor.engine, &path).expect("compiles");
        let ungranted = flavor.component_linker(&HostGrants::default()).expect("linker");
        let refused = ungranted.instantiate_pre(&component).err().expect("refused by the linker alone");
        assert!(format!("{refused:#}").contains("airlock:step/deploy"), "{refused:#}");
        let granted = flavor.component_linker(&HostGrants::of([HostInterface::Deploy])).expect("linker");
        granted.instantiate_pre(&component).expect("linked with the grant");
        // And through the front door, the refusal names what is missing.
        let sandbox = Sandbox::new(None).expect("engine");
        let err = sandbox
            .load_granted(&path, false, &HostGrants::default(), crate::DEFAULT_PLUGIN_LIMIT)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, SandboxError::NotGranted { imports, .. } if imports.iter().any(|i| i.starts_with("airlock:step/deploy"))),
            "{err}"
        );
        sandbox
            .load_granted(&path, false, &HostGrants::of([HostInterface::Deploy]), crate::DEFAULT_PLUGIN_LIMIT)
            .expect("granted");
    }
}
