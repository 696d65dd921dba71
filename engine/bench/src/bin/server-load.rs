//! The server under load: 100 runs of 20 steps submitted through the run
//! API at once. Build in release mode:
//!
//! ```text
//! bash .ci/setup && cargo run --release -p airlock-bench --bin server-load
//! ```
//!
//! It starts `airlock serve`'s server and queue in this process on a
//! loopback port, measures the API's read latency idle (the baseline),
//! then submits every run concurrently and keeps reading runs while they
//! go. It prints the submissions' latency, the read latency under load
//! beside the idle one, throughput in runs and steps per second, and
//! checks that nothing was lost: every run and every step succeeded.

use airlock_bench::{Stats, fmt};
use airlock_model::policy::Role;
use airlock_runner::{CancellationToken, Engine, queue::RunQueue};
use airlock_server::api::ApiUser;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs submitted at once.
fn runs() -> usize {
    airlock_bench::scaled(100, 5)
}
/// Layers of the pipeline, and steps in each: every step needs every step
/// of the layer before it.
const LAYERS: usize = 4;
const WIDTH: usize = 5;
/// Concurrent readers while the runs go.
const READERS: usize = 4;

type Http = Client<HttpConnector, Full<Bytes>>;

struct Api {
    client: Http,
    base: String,
    auth: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<String>) -> anyhow::Result<(u16, Bytes, Duration)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let started = Instant::now();
        let resp = self.client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes, started.elapsed()))
    }

    async fn read(&self, run: &str) -> anyhow::Result<Duration> {
        let (status, _, took) = self.call(Method::GET, &format!("/api/v1/runs/{run}"), None).await?;
        anyhow::ensure!(status == 200, "GET run answered {status}");
        Ok(took)
    }
}

fn pipeline(noop: &Path) -> String {
    let mut yaml = String::from("name: load\nsteps:\n");
    for layer in 0..LAYERS {
        for i in 0..WIDTH {
            yaml.push_str(&format!("  s{layer}{i}:\n    uses: {}\n", noop.display()));
            if layer > 0 {
                let needs: Vec<String> = (0..WIDTH).map(|j| format!("s{}{j}", layer - 1)).collect();
                yaml.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
            }
        }
    }
    yaml
}

/// What `--help` prints.
const USAGE: &str = "\
usage: server-load

The server under load: 100 runs of 20 steps submitted through the run API
at once, with the API's read latency idle and under load.";

fn main() -> anyhow::Result<()> {
    airlock_bench::help(USAGE);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let noop = repo.join("plugins/target/wasm32-wasip2/release/noop.wasm").canonicalize()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are 10x slower than release. Use `cargo run --release`.");
    }
    let scratch = tempfile::tempdir()?;
    let pipes = scratch.path().join("pipes");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(pipes.join("load.yaml"), pipeline(&noop))?;
    let (token, digest) = airlock_store::new_user_token();
    // Three runtimes, as in real life: the engine's (as in `airlock
    // serve`), the server's (started by `serve_apart`), and the clients'
    // (another program).
    let engine_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // The runtimes are dropped out here, never inside another's tasks.
    let engine_handle = engine_rt.handle().clone();
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let engine = Arc::new(Engine::open(&scratch.path().join("state"))?);
        let jobs = airlock_runner::RunOptions::default().jobs;
        let max_runs = 4;
        let queue = {
            let _engine = engine_handle.enter();
            RunQueue::start(engine, Some(&pipes), max_runs, jobs, shutdown.clone())?
        };
        let store = queue.engine().store().clone();
        let user = ApiUser { name: "load".into(), token_sha256: digest, roles: vec![Role::Runner] };
        let app = Arc::new(airlock_server::App::new(store, Vec::new()).with_users(vec![user]).with_runs(queue));
        // As `airlock serve` does: the engine on this runtime, the server
        // on one of its own.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let _server = airlock_server::serve_apart(listener, app, shutdown.clone())?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let api = Arc::new(Api {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            base: format!("http://{addr}"),
            auth: format!("Bearer {token}"),
        });
        let submit = r#"{"pipeline": "load.yaml"}"#.to_owned();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!(
            "airlock server load: {} runs x {} steps (no-op plugin), submitted at once over loopback; \
             {max_runs} runs at once, {jobs} steps each; {cores} cores",
            runs(),
            LAYERS * WIDTH
        );
        println!();

        // A first run compiles the plugin and warms the store; its record
        // is what the idle reads read.
        let (status, body, _) = api.call(Method::POST, "/api/v1/runs", Some(submit.clone())).await?;
        anyhow::ensure!(status == 201, "submit answered {status}: {}", String::from_utf8_lossy(&body));
        let warm: serde_json::Value = serde_json::from_slice(&body)?;
        let warm = warm["run"]["id"].as_str().unwrap_or_default().to_owned();
        wait_all(&api, std::slice::from_ref(&warm)).await?;
        let mut idle = Vec::new();
        for _ in 0..500 {
            idle.push(api.read(&warm).await?);
        }
        let Stats { p50: idle50, p99: idle99 } = Stats::of(idle);

        // The load.
        let started = Instant::now();
        let mut submissions = tokio::task::JoinSet::new();
        for _ in 0..runs() {
            let (api, submit) = (api.clone(), submit.clone());
            submissions.spawn(async move { api.call(Method::POST, "/api/v1/runs", Some(submit)).await });
        }
        let mut ids = Vec::new();
        let mut submit_latency = Vec::new();
        while let Some(done) = submissions.join_next().await {
            let (status, body, took) = done??;
            anyhow::ensure!(status == 201, "submit answered {status}: {}", String::from_utf8_lossy(&body));
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            ids.push(v["run"]["id"].as_str().unwrap_or_default().to_owned());
            submit_latency.push(took);
        }
        let submitted_in = started.elapsed();
        let ids = Arc::new(ids);
        let stop = CancellationToken::new();
        let mut readers = tokio::task::JoinSet::new();
        for r in 0..READERS {
            let (api, ids, stop) = (api.clone(), ids.clone(), stop.clone());
            readers.spawn(async move {
                let mut samples = Vec::new();
                let mut i = r;
                while !stop.is_cancelled() {
                    samples.push(api.read(&ids[i % ids.len()]).await?);
                    i += READERS;
                }
                Ok::<_, anyhow::Error>(samples)
            });
        }
        let lost = wait_all(&api, &ids).await?;
        let wall = started.elapsed();
        stop.cancel();
        let mut under_load = Vec::new();
        while let Some(done) = readers.join_next().await {
            under_load.extend(done??);
        }
        let reads = under_load.len();
        let Stats { p50: load50, p99: load99 } = Stats::of(under_load);
        let Stats { p50: sub50, p99: sub99 } = Stats::of(submit_latency);
        let steps = runs() * LAYERS * WIDTH;
        println!("{:<44} {}", "all submitted (acknowledged, on disk) in", fmt(submitted_in));
        println!(
            "{:<44} p50 {:>9}   p99 {:>9}",
            format!("submit latency ({} at once)", runs()),
            fmt(sub50),
            fmt(sub99)
        );
        println!("{:<44} p50 {:>9}   p99 {:>9}", "GET run, idle (baseline)", fmt(idle50), fmt(idle99));
        println!(
            "{:<44} p50 {:>9}   p99 {:>9}   ({reads} reads by {READERS} clients)",
            "GET run, under load",
            fmt(load50),
            fmt(load99)
        );
        println!("{:<44} {}", "every run ended in", fmt(wall));
        println!(
            "{:<44} {:.1} runs/s, {:.0} steps/s",
            "throughput",
            runs() as f64 / wall.as_secs_f64(),
            steps as f64 / wall.as_secs_f64()
        );
        println!("{:<44} {lost}", "runs or steps lost or not succeeded");
        shutdown.cancel();
        anyhow::ensure!(lost == 0, "{lost} runs or steps did not succeed");
        Ok(())
    })
}

/// Waits until every run has ended; answers how many runs, plus steps,
/// did not succeed.
async fn wait_all(api: &Api, ids: &[String]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut lost = 0;
        let mut open = 0;
        for id in ids {
            let (status, body, _) = api.call(Method::GET, &format!("/api/v1/runs/{id}"), None).await?;
            anyhow::ensure!(status == 200, "run {id} is gone: {status}");
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            match v["run"]["state"].as_str() {
                Some("queued" | "running") => open += 1,
                Some("succeeded") => {
                    let steps = v["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
                    lost += LAYERS * WIDTH - steps.iter().filter(|s| s["state"] == "succeeded").count();
                }
                _ => lost += 1,
            }
        }
        if open == 0 {
            return Ok(lost);
        }
        anyhow::ensure!(Instant::now() < deadline, "{open} runs did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
