//! The engine benchmark. Build in release mode (debug is ten times slower):
//!
//! ```text
//! bash .ci/setup && cargo run --release -p airlock-bench
//! ```
//!
//! For a no-op step plugin it prints: cold compile time, cached load
//! time, per-step engine overhead p50/p99 (everything the engine does for
//! a step: scheduling, state writes, workspace, WASI context, instantiate,
//! run, recording the end), and the wall time of a 1,000-step chain and a
//! 1,000-step fan-out; beside each, the cost of spawning a native process
//! (`/bin/true`) measured in the same run. Then the step cache: what it
//! adds to a step that misses (beside steps with no key), a chain whose
//! every step is cached (beside the run that made them), and the example
//! site run twice.

use airlock_bench::{Stats, fmt};
use airlock_runner::{CancellationToken, Engine, FsLookup, Progress, RunOptions};
use airlock_sandbox::{Invocation, Sandbox};
use airlock_store::{StepState, Store};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Steps of the chain and the fan-out, and samples of each part.
fn steps() -> usize {
    airlock_bench::scaled(1000, 20)
}

/// What `--help` prints.
const USAGE: &str = "\
usage: airlock-bench [NOOP.wasm]

The engine benchmark: compile and cached load of a no-op plugin, per-step
engine overhead, a 1,000-step chain and fan-out beside spawning /bin/true,
and the step cache. Build in release mode (debug is ten times slower).";

fn main() -> anyhow::Result<()> {
    airlock_bench::help(USAGE);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let noop = airlock_bench::positional()
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("plugins/target/wasm32-wasip2/release/noop.wasm"));
    anyhow::ensure!(noop.is_file(), "{} not found: build the plugins with `plugins/build`", noop.display());
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are 10x slower than release. Use `cargo run --release`.");
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "airlock engine benchmark: no-op plugin `{}` ({} bytes), {cores} cores",
        noop.display(),
        std::fs::metadata(&noop)?.len()
    );
    println!();

    // Compile and load.
    let scratch = tempfile::tempdir()?;
    let uncached = Sandbox::new(None)?;
    let compile = sample(airlock_bench::scaled(10, 2), || uncached.load(&noop).map(drop).map_err(anyhow::Error::from))?;
    let cache_dir = scratch.path().join("cache");
    Sandbox::new(Some(cache_dir.clone()))?.load(&noop)?;
    let cached = Sandbox::new(Some(cache_dir))?;
    let load = sample(airlock_bench::scaled(200, 5), || {
        let p = cached.load(&noop)?;
        anyhow::ensure!(p.from_cache, "the compile cache was not used");
        Ok(())
    })?;
    row("cold compile", &compile, "");
    row("cached load (verify + deserialize)", &load, "");

    // Native baseline, same machine, same moment.
    let spawn = sample(steps(), || {
        let status = std::process::Command::new("/bin/true").status()?;
        anyhow::ensure!(status.success(), "/bin/true failed");
        Ok(())
    })?;
    row("native spawn of /bin/true", &spawn, "the cost a process-per-step engine pays");
    println!();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let chain = rt.block_on(pipeline_run(scratch.path().to_owned(), noop.clone(), Shape::Chain, Fresh::Yes))?;
    let per_step = Stats::of(chain.gaps.clone());
    row("per-step engine overhead (chain)", &per_step, "target p50 <= 250 µs");

    // The same cost taken apart: each part measured on its own.
    println!("  of which:");
    let plugin = cached.load(&noop)?;
    let workspaces = scratch.path().join("ws");
    let mut n = 0;
    let workspace = sample(steps(), || {
        n += 1;
        std::fs::create_dir_all(workspaces.join(format!("s{n}")))?;
        Ok(())
    })?;
    row("  new workspace (when none is spare)", &workspace, "");
    let sandbox = sample(steps(), || {
        let outcome = rt.block_on(cached.run(&plugin, Invocation::new(workspaces.join("s1"))));
        outcome.result.map_err(|f| anyhow::anyhow!("the no-op plugin failed: {f:?}"))
    })?;
    row("  WASI context, instantiate, run", &sandbox, "");
    let writes = state_writes(&Store::open(&scratch.path().join("state-writes"))?)?;
    row("  state writes (start and end)", &writes, "");
    let fan = rt.block_on(pipeline_run(scratch.path().to_owned(), noop.clone(), Shape::FanOut, Fresh::Yes))?;
    println!();
    println!("{:<38} {:>10}   target < 2 s", format!("{}-step chain, wall", steps()), fmt(chain.wall));
    println!("{:<38} {:>10}   jobs = {cores}", format!("{}-step fan-out, wall", steps()), fmt(fan.wall));
    println!(
        "{:<38} {:>10}   {} x native spawn p50",
        "same chain as native processes",
        fmt(spawn.p50 * steps() as u32),
        steps()
    );
    postgres(&rt, scratch.path(), &noop, &per_step, &writes)?;
    step_cache(&rt, &repo, scratch.path(), &noop)?;
    Ok(())
}

/// What a step's two state transitions (started, succeeded) cost in
/// `store`, apart from the rest of the engine.
fn state_writes(store: &Store) -> anyhow::Result<Stats> {
    let names: Vec<String> = (0..steps()).map(|i| format!("s{i:04}")).collect();
    let run = store.create_run("bench", "bench.yaml", Default::default(), &names)?;
    let mut i = 0;
    let writes = sample(steps(), || {
        let name = &names[i];
        i += 1;
        store.update_step(&run.id, name, Some("attempt 1".into()), |s| s.state = StepState::Running)?;
        store.update_step(&run.id, name, None, |s| s.state = StepState::Succeeded)?;
        Ok(())
    })?;
    Ok(writes)
}

/// The same chain and state writes with the records in PostgreSQL (a
/// server of the benchmark's own on loopback, fsync on), beside sled's
/// figures of this run.
fn postgres(
    rt: &tokio::runtime::Runtime,
    scratch: &Path,
    noop: &Path,
    chain: &Stats,
    writes: &Stats,
) -> anyhow::Result<()> {
    println!();
    println!("the records in PostgreSQL (a server of its own on loopback, fsync on):");
    let server = match airlock_store::testing::TestPostgres::start_durable() {
        Ok(server) => server,
        Err(e) => {
            println!("  skipped: {e}");
            return Ok(());
        }
    };
    let url = server.database().map_err(|e| anyhow::anyhow!(e))?;
    let on_pg =
        rt.block_on(pipeline_run(scratch.to_owned(), noop.to_owned(), Shape::Chain, Fresh::Postgres(url.clone())))?;
    let pg_chain = Stats::of(on_pg.gaps);
    row("per-step engine overhead (chain)", &pg_chain, &format!("sled p50 {}", fmt(chain.p50)));
    let pg_writes = state_writes(&Store::open_postgres(&server.database().map_err(|e| anyhow::anyhow!(e))?)?)?;
    row("  state writes (start and end)", &pg_writes, &format!("sled p50 {}", fmt(writes.p50)));
    println!("{:<38} {:>10}", format!("{}-step chain, wall", steps()), fmt(on_pg.wall));
    Ok(())
}

/// The step cache: what it adds to a step that misses, what a chain of
/// hits costs, and the example site run twice.
fn step_cache(rt: &tokio::runtime::Runtime, repo: &Path, scratch: &Path, noop: &Path) -> anyhow::Result<()> {
    println!();
    println!("step cache:");
    let dir = scratch.to_owned();
    // The baseline: steps with the host's clocks have no key, and the
    // cache is neither asked nor written.
    let real = rt.block_on(pipeline_run(dir.clone(), noop.to_owned(), Shape::Chain, Fresh::Real))?;
    let state = tempfile::tempdir_in(scratch)?;
    let misses =
        rt.block_on(pipeline_run(dir.clone(), noop.to_owned(), Shape::Chain, Fresh::In(state.path().to_owned())))?;
    let hits = rt.block_on(pipeline_run(dir, noop.to_owned(), Shape::Chain, Fresh::In(state.path().to_owned())))?;
    let (real, missed) = (Stats::of(real.gaps), Stats::of(misses.gaps));
    row("per step, deterministic: false", &real, "baseline: no key, no cache");
    row("per step, a miss (key, look, record)", &missed, "");
    println!(
        "{:<38} {:>10}   target < 20 µs",
        "  the cache's cost to a miss, p50",
        fmt(missed.p50.saturating_sub(real.p50))
    );
    let per_hit = hits.wall / steps() as u32;
    println!(
        "{:<38} {:>10}   {} per step (target < 50 ms for 1,000, < 50 µs each); {} when they ran",
        format!("{}-step chain, every step cached", steps()),
        fmt(hits.wall),
        fmt(per_hit),
        fmt(misses.wall)
    );

    // The example site, as `airlock run` runs it, twice.
    let file = repo.join("pipelines/site.yaml");
    let text = std::fs::read_to_string(&file)?;
    let base = repo.join("pipelines");
    let pipeline = airlock_model::load("site.yaml", &text, &FsLookup::new(&base))
        .map_err(|d| anyhow::anyhow!("pipelines/site.yaml is invalid: {}", d[0]))?;
    let state = tempfile::tempdir_in(scratch)?;
    let engine = Engine::open(state.path())?;
    let mut walls = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let summary = rt.block_on(engine.run(
            &pipeline,
            &base,
            "site.yaml",
            RunOptions::default(),
            |_: &Progress| {},
            CancellationToken::new(),
        ))?;
        walls.push(start.elapsed());
        anyhow::ensure!(summary.run.state == airlock_store::RunState::Succeeded, "the site run failed");
        let cached = summary.steps.iter().filter(|s| s.cached.is_some()).count();
        anyhow::ensure!(
            walls.len() == 1 || cached == summary.steps.len(),
            "the second site run took {cached} of {} steps from the cache",
            summary.steps.len()
        );
    }
    println!(
        "{:<38} {:>10}   first run (compiled plugins cached): {}",
        "site, second run, every step cached",
        fmt(walls[1]),
        fmt(walls[0])
    );
    Ok(())
}

fn sample(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Stats> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(Stats::of(samples))
}

fn row(name: &str, s: &Stats, note: &str) {
    println!("{name:<38} p50 {:>10}   p99 {:>10}   {note}", fmt(s.p50), fmt(s.p99));
}

#[derive(Clone, Copy)]
enum Shape {
    Chain,
    FanOut,
}

struct Measured {
    wall: Duration,
    /// Time between consecutive step ends: in a chain, what one step costs
    /// from the end of the previous one to its own recorded end.
    gaps: Vec<Duration>,
}

/// Where a benchmark run keeps its state, and what its steps are.
enum Fresh {
    /// A state directory of its own.
    Yes,
    /// A state directory of its own, and steps with the host's clocks
    /// (no cache key, nothing cached).
    Real,
    /// This state directory: a second run there finds the first's steps
    /// in the cache.
    In(PathBuf),
    /// A state directory of its own, with the records in this
    /// PostgreSQL database.
    Postgres(String),
}

/// Runs a generated pipeline the way `airlock run` does: the scheduler is
/// a task on the runtime, beside the steps it starts.
async fn pipeline_run(dir: PathBuf, plugin: PathBuf, shape: Shape, fresh: Fresh) -> anyhow::Result<Measured> {
    tokio::spawn(async move { pipeline_run_inner(&dir, &plugin, shape, fresh).await }).await?
}

async fn pipeline_run_inner(dir: &Path, plugin: &Path, shape: Shape, fresh: Fresh) -> anyhow::Result<Measured> {
    let mut yaml = String::from("name: bench\nsteps:\n");
    for i in 0..steps() {
        yaml.push_str(&format!("  s{i:04}:\n    uses: {}\n", plugin.display()));
        if matches!(fresh, Fresh::Real) {
            yaml.push_str("    deterministic: false\n");
        }
        match shape {
            Shape::Chain if i > 0 => yaml.push_str(&format!("    needs: [s{:04}]\n", i - 1)),
            Shape::FanOut if i > 0 => yaml.push_str("    needs: [s0000]\n"),
            _ => {}
        }
    }
    let pipeline = airlock_model::load("bench.yaml", &yaml, &FsLookup::new(dir))
        .map_err(|d| anyhow::anyhow!("generated pipeline is invalid: {}", d[0]))?;
    let own = tempfile::tempdir_in(dir)?;
    let state = match &fresh {
        Fresh::In(state) => state.clone(),
        Fresh::Yes | Fresh::Real | Fresh::Postgres(_) => own.path().to_owned(),
    };
    let engine = match &fresh {
        Fresh::Postgres(url) => Engine::open_on(&state, Store::open_postgres(url)?)?,
        _ => Engine::open(&state)?,
    };
    // Warm the compile cache so the run measures the engine, not cranelift.
    engine.sandbox().load(plugin)?;
    let ends = Arc::new(Mutex::new(Vec::with_capacity(steps())));
    let seen = ends.clone();
    let observer = move |e: &Progress| {
        if let Progress::StepFinished { .. } = e
            && let Ok(mut v) = seen.lock()
        {
            v.push(Instant::now());
        }
    };
    let start = Instant::now();
    let summary =
        engine.run(&pipeline, dir, "bench.yaml", RunOptions::default(), observer, CancellationToken::new()).await?;
    let wall = start.elapsed();
    anyhow::ensure!(
        summary.run.state == airlock_store::RunState::Succeeded,
        "the benchmark run did not succeed: {:?}",
        summary.run.reason
    );
    let ends = ends.lock().map_err(|_| anyhow::anyhow!("observer panicked"))?.clone();
    let gaps = ends.windows(2).map(|w| w[1] - w[0]).collect();
    Ok(Measured { wall, gaps })
}
