//! From a push to the first step: a loopback `airlock serve` connected to
//! a repository on a loopback git server, beside `git clone --depth 1` of
//! the same repository in the same run; then how many signed deliveries
//! a second the intake accepts.
//!
//! ```sh
//! cargo build --release -p airlock-cli && bash plugins/build
//! cargo run --release -p airlock-bench --bin webhook-intake [-- ROUNDS DELIVERIES]
//! ```
//!
//! Each round commits a change, pushes it, and sends the signed push
//! webhook; the latency is from sending the webhook to the run's first
//! step leaving `pending` (seen by polling the run API every 2 ms), so it
//! holds the answer to the forge, the fetch of the new commit, writing
//! out its tree, reading and validating the pipeline, and starting the
//! step. The baseline is a fresh shallow clone of the same commit from
//! the same server, which is what any CI has to do before it can start.
//! Deliveries/s is measured with pushes of a branch no pipeline runs on,
//! sent from 4 connections at once: each is checked, parsed, recorded and
//! flushed to disk before its `202`.

use airlock_bench::git_http::{GitServer, git};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-webhook-secret";
const TOKEN: &str = "bench-clone-token";

fn sign(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// A GitHub push payload with what airlock reads of it.
fn push(branch: &str, commit: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0".repeat(40),
        "after": commit,
        "deleted": false,
        "pusher": { "name": "bench" },
        "sender": { "login": "bench" },
    }))
    .unwrap_or_default()
}

fn deliver(agent: &ureq::Agent, url: &str, id: &str, body: &[u8]) -> anyhow::Result<()> {
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", sign(body))
        .send(body)?;
    if response.status().as_u16() != 202 {
        bail!("delivery {id} answered {}", response.status());
    }
    Ok(())
}

fn get(agent: &ureq::Agent, url: &str, token: &str) -> anyhow::Result<serde_json::Value> {
    let text =
        agent.get(url).header("authorization", format!("Bearer {token}")).call()?.into_body().read_to_string()?;
    Ok(serde_json::from_str(&text)?)
}

/// Waits until the run of `commit` has a step that left `pending`.
fn first_step(agent: &ureq::Agent, server: &str, token: &str, commit: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut run = None;
    while Instant::now() < deadline {
        if run.is_none() {
            let list = get(agent, &format!("{server}/api/v1/runs?limit=5"), token)?;
            run = list["runs"]
                .as_array()
                .and_then(|runs| runs.iter().find(|r| r["origin"]["commit"] == commit))
                .and_then(|r| r["id"].as_str().map(str::to_owned));
        }
        if let Some(id) = &run {
            let detail = get(agent, &format!("{server}/api/v1/runs/{id}"), token)?;
            let started = detail["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["state"] != "pending"));
            if started {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("no step of a run of {commit} started within a minute")
}

/// What `--help` prints.
const USAGE: &str = "\
usage: webhook-intake [ROUNDS DELIVERIES]

From a signed push webhook to the first step of a run, beside
`git clone --depth 1` of the same commit; then signed deliveries a second.
Defaults: 15 rounds, 2000 deliveries.";

fn main() -> anyhow::Result<()> {
    airlock_bench::help(USAGE);
    let args = airlock_bench::positional();
    let smoke = airlock_bench::smoke();
    let rounds: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(if smoke { 1 } else { 15 }).max(1);
    let deliveries: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(if smoke { 20 } else { 2000 });
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let airlock =
        std::env::var_os("AIRLOCK_BIN").map(PathBuf::from).unwrap_or_else(|| repo.join("target/release/airlock"));
    if !airlock.is_file() {
        bail!("no airlock binary at {}; run `cargo build --release -p airlock-cli` first", airlock.display());
    }
    let tick = repo.join("plugins/target/wasm32-wasip2/release/tick.wasm");
    if !tick.is_file() {
        bail!("no plugin at {}; run `bash plugins/build` first", tick.display());
    }

    // A small repository: a plugin, a pipeline, a few source files.
    let work = tempfile::tempdir()?;
    let (served, checkout) = (work.path().join("served"), work.path().join("work"));
    std::fs::create_dir_all(checkout.join(".airlock"))?;
    std::fs::create_dir_all(checkout.join("src"))?;
    git(work.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "served/app.git"])
        .map_err(anyhow::Error::msg)?;
    git(&checkout, &["init", "--quiet", "--initial-branch=main"]).map_err(anyhow::Error::msg)?;
    std::fs::copy(&tick, checkout.join("tick.wasm"))?;
    std::fs::write(
        checkout.join(".airlock/ci.yaml"),
        "name: ci\non:\n  push: { branches: [main] }\nsteps:\n  a:\n    uses: tick.wasm\n    args: [\"1\", \"1\"]\n",
    )?;
    for i in 0..20 {
        std::fs::write(checkout.join(format!("src/file{i}.txt")), format!("{i}\n").repeat(200))?;
    }
    let remote = served.join("app.git").display().to_string();
    let commit = |round: usize| -> anyhow::Result<String> {
        std::fs::write(checkout.join("src/round.txt"), format!("{round}\n"))?;
        git(&checkout, &["add", "-A"]).map_err(anyhow::Error::msg)?;
        git(&checkout, &["commit", "--quiet", "-m", &format!("round {round}")]).map_err(anyhow::Error::msg)?;
        git(&checkout, &["push", "--quiet", &remote, "main"]).map_err(anyhow::Error::msg)?;
        git(&checkout, &["rev-parse", "HEAD"]).map_err(anyhow::Error::msg)
    };
    let forge = GitServer::start(&served, "x-access-token", TOKEN)?;

    let user = Command::new(&airlock)
        .arg("--state-dir")
        .arg(work.path().join("tokens"))
        .args(["user", "token", "--json"])
        .output()?;
    let user: serde_json::Value = serde_json::from_slice(&user.stdout).context("airlock user token")?;
    let viewer = user["token"].as_str().context("token")?.to_owned();
    let policy = work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "users:\n  bench: {{ token_sha256: {}, roles: [viewer] }}\nrepositories:\n  app:\n    forge: github\n    \
             url: {}/app.git\n    project: team/app\n    webhook_secret: {{ env: BENCH_SECRET }}\n    \
             token: {{ env: BENCH_TOKEN }}\n    trusted: {{ branches: [main] }}\n",
            user["token_sha256"].as_str().context("digest")?,
            forge.url
        ),
    )?;
    let mut serve = Command::new(&airlock);
    serve
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--policy")
        .arg(&policy)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("BENCH_SECRET", SECRET)
        .env("BENCH_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let (_serve, server) = airlock_bench::start_serve(serve)?;
    let hook = format!("{server}/hooks/app");
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();

    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    };
    let (mut intake, mut clones) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let head = commit(round)?;
        let into = work.path().join(format!("clone-{round}"));
        let started = Instant::now();
        let cloned = Command::new("git")
            .args(["-c", &format!("http.extraHeader=Authorization: Basic {basic}")])
            .args(["clone", "--quiet", "--depth", "1", &format!("{}/app.git", forge.url)])
            .arg(&into)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()?;
        clones.push(started.elapsed());
        if !cloned.success() {
            bail!("git clone failed");
        }
        let started = Instant::now();
        deliver(&agent, &hook, &format!("round-{round}"), &push("main", &head))?;
        first_step(&agent, &server, &viewer, &head)?;
        intake.push(started.elapsed());
    }
    let (intake, clones) = (airlock_bench::Stats::of(intake), airlock_bench::Stats::of(clones));
    println!("webhook to first step, {rounds} pushes of a small repository (median, p99):");
    println!("  airlock serve         {:>10} {:>10}", airlock_bench::fmt(intake.p50), airlock_bench::fmt(intake.p99));
    println!("  git clone --depth 1   {:>10} {:>10}", airlock_bench::fmt(clones.p50), airlock_bench::fmt(clones.p99));

    // Deliveries of a branch no pipeline runs on, from 4 connections.
    let head = git(&checkout, &["rev-parse", "HEAD"]).map_err(anyhow::Error::msg)?;
    let body = push("elsewhere", &head);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (agent, hook, body) = (agent.clone(), &hook, &body);
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in (w..deliveries).step_by(4) {
                        deliver(&agent, hook, &format!("many-{i}"), body)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let took = started.elapsed();
    println!(
        "deliveries accepted: {deliveries} in {} = {:.0}/s (each verified, recorded and flushed before its 202)",
        airlock_bench::fmt(took),
        deliveries as f64 / took.as_secs_f64()
    );
    Ok(())
}
