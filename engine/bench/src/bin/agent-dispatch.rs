//! Steps dispatched to agents: runs of many short steps through one
//! `airlock serve` on PostgreSQL and 1, 2 and 4 `airlock agent`s, beside
//! the same work on a single server (sled, then PostgreSQL) that runs
//! its steps itself, all in the same run. Build in release mode:
//!
//! ```text
//! bash .ci/setup && cargo build --release -p airlock-cli -p airlock-bench
//! target/release/agent-dispatch [--runs N] [--steps N]
//! ```
//!
//! Every step is the no-op plugin, so what is measured is what airlock
//! adds. For each setup: steps per second through the runs of
//! independent steps (many at once: the throughput), and, in one run of
//! a chain of steps (one at a time, nothing queued): the time from a
//! step's being ready (the step before it ended) to its start, p50 and
//! p99 as the run records them (in whole milliseconds), and the chain's
//! time per step, from the first step's start to the last one's end
//! divided by the steps (fine-grained, since it is an average over the
//! whole chain). A chain step's time on an agent beside the same on the
//! single server on the same database is the dispatch overhead of a
//! step on an agent: what offering, claiming, completing and noticing
//! add to it.

use airlock_bench::{Stats, fmt};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn flag(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// A setup measured.
struct Setup {
    name: String,
    database: bool,
    agents: usize,
}

/// What `--help` prints.
const USAGE: &str = "\
usage: agent-dispatch [--runs N] [--steps N]

Runs of N no-op steps through one `airlock serve` on PostgreSQL and 1, 2
and 4 agents, beside a single server on sled and on PostgreSQL.
Defaults: 100 runs of 100 steps. Needs target/release/airlock.";

fn main() -> anyhow::Result<()> {
    airlock_bench::help(USAGE);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let airlock =
        std::env::var_os("AIRLOCK_BIN").map(PathBuf::from).unwrap_or_else(|| repo.join("target/release/airlock"));
    anyhow::ensure!(airlock.is_file(), "no airlock binary at {}; build it first", airlock.display());
    let noop = repo.join("plugins/target/wasm32-wasip2/release/noop.wasm").canonicalize()?;
    let runs = flag("--runs").unwrap_or(airlock_bench::scaled(100, 2));
    let steps = flag("--steps").unwrap_or(airlock_bench::scaled(100, 3));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "airlock agent dispatch: {runs} runs of {steps} independent no-op steps, 4 runs at once, 16 steps at once \
         each; one server; {cores} cores"
    );
    println!();
    let pg = airlock_store::testing::TestPostgres::start().map_err(|e| anyhow::anyhow!(e))?;
    let mut baseline = None;
    let setups = [
        Setup { name: "single server, sled".into(), database: false, agents: 0 },
        Setup { name: "single server, PostgreSQL".into(), database: true, agents: 0 },
        Setup { name: "server + 1 agent".into(), database: true, agents: 1 },
        Setup { name: "server + 2 agents".into(), database: true, agents: 2 },
        Setup { name: "server + 4 agents".into(), database: true, agents: 4 },
    ];
    println!(
        "{:<28} {:>8} {:>14} {:>14} {:>12} {:>16}",
        "", "steps/s", "ready→started", "p99", "chain step", "vs server"
    );
    for setup in setups {
        let url = if setup.database { Some(pg.database().map_err(|e| anyhow::anyhow!(e))?) } else { None };
        let m = measure(&airlock, &noop, url.as_deref(), setup.agents, runs, steps)?;
        let versus = match (setup.agents, baseline) {
            (0, _) if setup.database => {
                baseline = Some(m.per_step);
                "(baseline)".to_owned()
            }
            (0, _) => "-".to_owned(),
            (_, Some(base)) if m.per_step >= base => format!("+{}", fmt(m.per_step - base)),
            (_, Some(base)) => format!("-{}", fmt(base - m.per_step)),
            (_, None) => "-".to_owned(),
        };
        println!(
            "{:<28} {:>8.0} {:>14} {:>14} {:>12} {:>16}",
            setup.name,
            m.rate,
            fmt(m.ready.p50),
            fmt(m.ready.p99),
            fmt(m.per_step),
            versus
        );
    }
    println!();
    println!("(on agents, steps/s is also the PostgreSQL job claims per second; \"vs server\" is the dispatch");
    println!(" overhead: a chain step's time beside the single server's on the same database)");
    Ok(())
}

/// What one setup measured.
struct Measured {
    /// Steps per second through the runs of independent steps.
    rate: f64,
    /// From a chain step's being ready to its start, as recorded.
    ready: Stats,
    /// The chain's time, first start to last end, per step.
    per_step: Duration,
}

/// Runs the work on a fresh server (and `agents` agents).
fn measure(
    airlock: &Path,
    noop: &Path,
    database: Option<&str>,
    agents: usize,
    runs: usize,
    steps: usize,
) -> anyhow::Result<Measured> {
    let work = tempfile::tempdir()?;
    let tokens = |what: &str| -> anyhow::Result<(String, String)> {
        let out = Command::new(airlock)
            .arg("--state-dir")
            .arg(work.path().join(what))
            .args(["user", "token", "--json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("airlock user token")?;
        Ok((v["token"].as_str().context("token")?.to_owned(), v["token_sha256"].as_str().context("digest")?.to_owned()))
    };
    let (user, user_digest) = tokens("user")?;
    let (pool, pool_digest) = tokens("pool")?;
    let policy = work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "users:\n  bench: {{ token_sha256: {user_digest}, roles: [runner] }}\n\
             agents:\n  bench: {{ token_sha256: {pool_digest}, labels: [bench] }}\n"
        ),
    )?;
    let pipes = work.path().join("pipes");
    std::fs::create_dir_all(&pipes)?;
    let mut yaml = String::from("name: dispatch\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!("  s{i}:\n    uses: {}\n    cache: false\n", noop.display()));
        if agents > 0 {
            yaml.push_str("    runs_on: [bench]\n");
        }
    }
    std::fs::write(pipes.join("dispatch.yaml"), yaml)?;
    let mut chain = String::from("name: chain\nsteps:\n");
    for i in 0..steps {
        chain.push_str(&format!("  s{i}:\n    uses: {}\n    cache: false\n", noop.display()));
        if i > 0 {
            chain.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
        if agents > 0 {
            chain.push_str("    runs_on: [bench]\n");
        }
    }
    std::fs::write(pipes.join("chain.yaml"), chain)?;
    let mut serve = Command::new(airlock);
    serve
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--policy")
        .arg(&policy)
        .args(["serve", "--listen", "127.0.0.1:0", "--max-runs", "4", "--jobs", "16", "--pipelines"])
        .arg(&pipes)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(url) = database {
        serve.env("AIRLOCK_DATABASE_URL", url);
    }
    let (_serve, server) = airlock_bench::start_serve(serve)?;
    let _agents: Vec<airlock_bench::Guard> = (0..agents)
        .map(|i| {
            Command::new(airlock)
                .arg("--state-dir")
                .arg(work.path().join(format!("agent-{i}")))
                .args(["agent", "--server", &server, "--name", &format!("a{i}"), "--label", "bench"])
                .env("AIRLOCK_AGENT_TOKEN", &pool)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map(airlock_bench::Guard)
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let http: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let submit_file = |file: &str| -> anyhow::Result<String> {
        let mut resp = http
            .post(&format!("{server}/api/v1/runs"))
            .header("authorization", &format!("Bearer {user}"))
            .header("content-type", "application/json")
            .send(serde_json::json!({ "pipeline": file }).to_string())?;
        let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
        Ok(v["run"]["id"].as_str().context("run id")?.to_owned())
    };
    let submit = || submit_file("dispatch.yaml");
    // A first run compiles the plugin (on the server, or on each agent
    // that takes one of its steps); it is not measured.
    let warm = submit()?;
    wait(&http, &server, &user, std::slice::from_ref(&warm))?;
    let started = Instant::now();
    let ids: Vec<String> = (0..runs).map(|_| submit()).collect::<anyhow::Result<_>>()?;
    let details = wait(&http, &server, &user, &ids)?;
    let wall = started.elapsed();
    let mut done = 0;
    for detail in &details {
        anyhow::ensure!(detail["run"]["state"] == "succeeded", "a run did not succeed: {detail}");
        done += detail["steps"].as_array().context("steps")?.iter().filter(|s| s["state"] == "succeeded").count();
    }
    anyhow::ensure!(done == runs * steps, "{done} steps succeeded, not {}", runs * steps);
    let chain = submit_file("chain.yaml")?;
    let detail = wait(&http, &server, &user, std::slice::from_ref(&chain))?.remove(0);
    anyhow::ensure!(detail["run"]["state"] == "succeeded", "the chain did not succeed: {detail}");
    let mut times = Vec::new();
    for step in detail["steps"].as_array().context("steps")? {
        let (a, b) = (step["started_ms"].as_u64().context("started")?, step["ended_ms"].as_u64().context("ended")?);
        times.push((a, b));
    }
    // The steps in the order they ran: each one's start follows the end
    // of the one it needs.
    times.sort();
    let ready = times.windows(2).map(|w| Duration::from_millis(w[1].0.saturating_sub(w[0].1))).collect();
    let (first, last) = (times.first().context("no steps")?.0, times.iter().map(|t| t.1).max().unwrap_or(0));
    Ok(Measured {
        rate: (runs * steps) as f64 / wall.as_secs_f64(),
        ready: Stats::of(ready),
        per_step: Duration::from_millis(last.saturating_sub(first)) / u32::try_from(times.len()).unwrap_or(1),
    })
}

/// Waits until every run ended; answers their details.
fn wait(http: &ureq::Agent, server: &str, user: &str, ids: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut done = Vec::new();
    for id in ids {
        loop {
            let mut resp = http
                .get(&format!("{server}/api/v1/runs/{id}"))
                .header("authorization", &format!("Bearer {user}"))
                .call()?;
            let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
            if !matches!(v["run"]["state"].as_str(), Some("queued" | "running")) {
                done.push(v);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "run {id} did not end");
            // Each look reads every step of the run: looking more often
            // would take the two cores from the work measured.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(done)
}
