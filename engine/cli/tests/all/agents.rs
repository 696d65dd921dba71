//! `airlock agent`: steps with `runs_on:` run on agent processes of the
//! policy's pools, which fetch what a job names by digest and upload its
//! outputs; a killed agent's job goes to another once its lease
//! expires; a frozen agent's late completion is refused; uploads that do
//! not match their digests are refused.

use crate::server::{People, tick};
use crate::support::{Scratch, Server, User, airlock, call, http, plugins, submit_run, user_token, wait_for_end};
use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// An `airlock agent` process, killed when dropped.
pub struct Agent {
    child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Agent {
    fn start(state: &Path, server: &str, token: &str, name: &str, labels: &[&str]) -> Self {
        Self::start_with(state, &[server], token, name, labels)
    }

    /// An agent of the servers at `servers`.
    pub fn start_with(state: &Path, servers: &[&str], token: &str, name: &str, labels: &[&str]) -> Self {
        Self::start_args(state, servers, token, name, labels, &[])
    }

    /// [`start_with`](Self::start_with), with more `airlock agent` arguments.
    fn start_args(state: &Path, servers: &[&str], token: &str, name: &str, labels: &[&str], args: &[&str]) -> Self {
        let mut cmd = airlock(state);
        cmd.args(["agent", "--name", name]).args(args);
        for server in servers {
            cmd.args(["--server", server]);
        }
        cmd.env("AIRLOCK_AGENT_TOKEN", token);
        for label in labels {
            cmd.args(["--label", label]);
        }
        Self::launch(cmd)
    }

    /// Starts `cmd`, an `airlock agent` command, reading its stderr.
    fn launch(mut cmd: std::process::Command) -> Self {
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("airlock agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line with `needle`; answers it.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => said.push(line),
                Err(_) => panic!("the agent never said `{needle}`: {said:#?}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A policy with the usual people and a pool `builders` of `agent`'s
/// token with labels `linux` and `big`.
fn policy(s: &Scratch, people: &People, agent: &User) -> std::path::PathBuf {
    s.file(
        "policy.yaml",
        format!(
            "{}agents:\n  builders:\n    token_sha256: {}\n    labels: [linux, big]\n",
            people.yaml(),
            agent.digest
        ),
    )
}

/// Writes `pipes/remote.yaml`: `make` (3 ticks of `ms` on an agent) makes
/// `out.txt`; `sums` (on an agent) writes the sha256 of its input, and
/// `here` (on the server) reads both. Nothing is taken from the step
/// cache: each run runs every step.
fn remote_pipeline(s: &Scratch, ms: u32) {
    let sums = plugins().join("wasm32-wasip2/release/sha256sum.wasm").display().to_string();
    s.file(
        "pipes/remote.yaml",
        format!(
            "name: remote\nsteps:\n  make:\n    uses: {tick}\n    runs_on: [big]\n    cache: false\n    args: [\"3\", \"{ms}\", out.txt]\n    \
             outputs: [out.txt]\n  sums:\n    uses: {sums}\n    runs_on: [linux]\n    cache: false\n    needs: [make]\n    inputs: [make]\n    \
             with: {{ dir: \"${{{{ inputs.make }}}}\", output: SUMS }}\n    outputs: [SUMS]\n  \
             here:\n    uses: {tick}\n    needs: [sums]\n    inputs: [make, sums]\n    args: [\"1\", \"1\"]\n",
            tick = tick()
        ),
    );
}

fn outputs(agent: &ureq::Agent, base: &str, token: &str, run: &str) -> serde_json::Value {
    let (status, list) =
        call(agent, "GET", &format!("{base}/api/v1/runs/{run}/artifacts"), Some(token), None, &[]).expect("artifacts");
    assert_eq!(status, 200, "{list}");
    list
}

/// Two steps on an agent and one on the server: the agent fetches the
/// plugin and the input by digest, its outputs come back and go
/// downstream, its logs are the run's, and what it made is what the
/// server would have made.
#[test]
fn steps_run_on_an_agent_and_their_outputs_go_downstream() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    remote_pipeline(&s, 10);
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let worker = Agent::start_args(
        &s.path().join("agent-state"),
        &[&server.url],
        &token.token,
        "a1",
        &["linux", "big"],
        &["--metrics", "127.0.0.1:0"],
    );
    let said = worker.wait_for("metrics at ");
    let metrics_url = said.rsplit(' ').next().expect("url").to_owned();
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "remote.yaml");
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    worker.wait_for(&format!("job {id}/make/1: completed (succeeded)"));
    worker.wait_for(&format!("job {id}/sums/1: completed (succeeded)"));

    // The agent's own metrics, read as Prometheus reads them.
    let text = agent.get(&metrics_url).call().expect("metrics").into_body().read_to_string().expect("text");
    let metrics = crate::servers::read_openmetrics(&text);
    assert_eq!(metrics.get("airlock_agent_jobs_total{outcome=succeeded}"), Some(&2.0), "{metrics:#?}");
    assert_eq!(metrics.get("airlock_agent_jobs_running"), Some(&0.0), "{metrics:#?}");
    assert_eq!(metrics.get("airlock_agent_job_duration_seconds_count"), Some(&2.0), "{metrics:#?}");
    assert!(metrics.get("airlock_agent_uploaded_bytes_total").is_some_and(|b| *b > 0.0), "{metrics:#?}");
    assert!(metrics.get("airlock_agent_fetched_bytes_total").is_some_and(|b| *b > 0.0), "{metrics:#?}");

    // The step's log is the run's, as if it had run on the server.
    let (status, log) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{id}/steps/make/log", server.url), Some(runner), None, &[])
            .expect("log");
    assert_eq!((status, log), (200, serde_json::json!("tick 1\ntick 2\ntick 3\n")));
    // `sums` read `make`'s output on the agent: its sums name that digest.
    let list = outputs(&agent, &server.url, runner, &id);
    let artifacts = list["artifacts"].as_array().expect("artifacts");
    let digest_of = |step: &str, path: &str| {
        artifacts
            .iter()
            .find(|a| a["step"] == step && a["path"] == path)
            .unwrap_or_else(|| panic!("{step}/{path}: {list}"))["sha256"]
            .as_str()
            .expect("sha256")
            .to_owned()
    };
    let made = digest_of("make", "out.txt");
    let sums = digest_of("sums", "SUMS");
    let (status, text) =
        call(&agent, "GET", &format!("{}/api/v1/artifacts/{sums}", server.url), Some(runner), None, &[]).expect("get");
    assert_eq!(status, 200);
    assert_eq!(text.as_str().expect("text").trim(), format!("{made}  out.txt"));

    // The server counts the agent, and no job is left.
    let (status, text) =
        call(&agent, "GET", &format!("{}/api/v1/metrics", server.url), Some(&people.viewer.token), None, &[])
            .expect("metrics");
    assert_eq!(status, 200);
    let metrics = crate::servers::read_openmetrics(text.as_str().expect("text"));
    assert_eq!(metrics.get("airlock_agents"), Some(&1.0), "{metrics:#?}");
    assert_eq!(metrics.get("airlock_jobs_waiting"), Some(&0.0), "{metrics:#?}");
    assert_eq!(metrics.get("airlock_jobs_leased"), Some(&0.0), "{metrics:#?}");

    // The same pipeline without `runs_on` makes the same bytes here.
    let yaml = std::fs::read_to_string(s.path().join("pipes/remote.yaml")).expect("yaml");
    s.file(
        "pipes/local.yaml",
        yaml.replace("name: remote", "name: local")
            .replace("    runs_on: [big]\n", "")
            .replace("    runs_on: [linux]\n", ""),
    );
    let local = submit_run(&agent, &server.url, runner, "local.yaml");
    assert_eq!(wait_for_end(&agent, &server.url, runner, &local)["run"]["state"], "succeeded");
    let list = outputs(&agent, &server.url, runner, &local);
    let here: Vec<&str> =
        list["artifacts"].as_array().expect("artifacts").iter().map(|a| a["sha256"].as_str().expect("sha")).collect();
    assert!(here.contains(&made.as_str()) && here.contains(&sums.as_str()), "{list}");
}

/// A step whose labels no pool has fails at once, saying so; an agent
/// that says it has a label its pool does not is refused, and one with
/// a wrong token too.
#[test]
fn labels_and_tokens_are_the_policys() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    s.file(
        "pipes/gpu.yaml",
        format!("name: gpu\nsteps:\n  a:\n    uses: {}\n    runs_on: [gpu]\n    args: [\"1\", \"1\"]\n", tick()),
    );
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "gpu.yaml");
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "failed", "{detail}");
    let reason = detail["steps"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("no pool of the policy's `agents:` has those labels"), "{reason}");

    let (code, _, stderr) = crate::support::output(
        airlock(&s.path().join("a"))
            .args(["agent", "--server", &server.url, "--label", "gpu"])
            .env("AIRLOCK_AGENT_TOKEN", &token.token),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("label `gpu` is not one of pool `builders`'s"), "{stderr}");
    let (code, _, stderr) = crate::support::output(
        airlock(&s.path().join("b")).args(["agent", "--server", &server.url]).env("AIRLOCK_AGENT_TOKEN", "alu_nobodys"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refuses this agent"), "{stderr}");
}

/// An agent killed in the middle of a step: its lease expires, another
/// agent claims the job and runs the step again, and the run succeeds.
/// An agent frozen past its lease and woken finds its job gone: its
/// completion is refused and changes nothing.
#[test]
fn a_killed_agents_job_runs_elsewhere_and_a_late_one_is_refused() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    remote_pipeline(&s, 300);
    let server = Server::start_with(&s.state(), &policy, &s.path().join("pipes"), &[], &["--lease", "1s"]);
    let (agent, runner) = (http(), people.runner.token.as_str());

    // Killed.
    let session = ui_session(&server.url, &people.viewer.token);
    let mut first = Agent::start(&s.path().join("agent-1"), &server.url, &token.token, "a1", &["linux", "big"]);
    let id = submit_run(&agent, &server.url, runner, "remote.yaml");
    first.wait_for(&format!("job {id}/make/1: claimed"));
    // The agents page shows it at work (the step takes most of a second).
    let page = ui_get(&server.url, &session, "/ui/agents");
    let row = page.lines().find(|l| l.contains("data-agent=")).unwrap_or_else(|| panic!("no agent listed: {page}"));
    assert!(row.contains("linux, big") && row.contains(&format!("/ui/runs/{id}/steps/make/log")), "{row}");
    first.kill();
    let second = Agent::start(&s.path().join("agent-2"), &server.url, &token.token, "a2", &["linux", "big"]);
    second.wait_for(&format!("job {id}/make/1: claimed (fence "));
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    drop(second);

    // Frozen past its lease, then woken.
    let frozen = Agent::start(&s.path().join("agent-3"), &server.url, &token.token, "a3", &["linux", "big"]);
    let id = submit_run(&agent, &server.url, runner, "remote.yaml");
    frozen.wait_for(&format!("job {id}/make/1: claimed"));
    frozen.signal("STOP");
    let other = Agent::start(&s.path().join("agent-4"), &server.url, &token.token, "a4", &["linux", "big"]);
    other.wait_for(&format!("job {id}/make/1: claimed (fence "));
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    frozen.signal("CONT");
    let said = frozen.wait_for(&format!("job {id}/make/1: "));
    let said = if said.contains("claimed") { frozen.wait_for(&format!("job {id}/make/1: ")) } else { said };
    // Refused as fenced off (409) while the job is still on record, or
    // as gone (404) once the run's end has cleared its done job away.
    assert!(
        said.contains("the lease went to another agent")
            || said.contains("the completion was refused (409")
            || said.contains("the completion was refused (404 Not Found): no job"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, after) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{id}", server.url), Some(runner), None, &[]).expect("get");
    assert_eq!(after, detail, "the late agent changed the run");
}

/// An upload whose bytes are not those of its digest is refused and
/// kept nowhere; a completion naming an output that was not uploaded is
/// refused; a blob the job does not name cannot be fetched.
#[test]
fn an_agent_cannot_slip_in_other_bytes() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    remote_pipeline(&s, 10);
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "remote.yaml");
    // This test is the agent: it claims the job over HTTP itself.
    let headers = [("x-airlock-agent", "hand")];
    let (status, claimed) = call(
        &agent,
        "POST",
        &format!("{}/api/v1/agent/claim", server.url),
        Some(&token.token),
        Some(serde_json::json!({ "labels": ["big"], "wait_ms": 10000 })),
        &headers,
    )
    .expect("claim");
    assert_eq!(status, 200, "{claimed}");
    let job = claimed["job"].as_str().expect("job").to_owned();
    assert_eq!(job, format!("{id}/make/1"));
    let fence = claimed["fence"].as_u64().expect("fence");
    let base = format!("{}/api/v1/agent/jobs/{job}", server.url);

    let claimed_digest = "a".repeat(64);
    let put = |sha: &str, bytes: &[u8]| {
        let req = ureq::http::Request::builder()
            .method("PUT")
            .uri(format!("{base}/blobs/{sha}"))
            .header("authorization", format!("Bearer {}", token.token))
            .header("x-airlock-agent", "hand")
            .body(bytes.to_vec())
            .expect("request");
        let resp = agent.run(req).expect("put");
        let status = resp.status().as_u16();
        (status, resp.into_body().read_to_string().expect("body"))
    };
    let (status, body) = put(&claimed_digest, b"not those bytes");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("digest_mismatch"), "{body}");
    let stored = s.state().join(format!("artifacts/sha256/aa/{}", &claimed_digest[2..]));
    assert!(!stored.exists(), "the wrong bytes were kept");

    let result = serde_json::json!({
        "fence": fence,
        "result": { "failure": null, "log": "", "log_written": 0, "deploy_requests": [],
                    "outputs": [{ "path": "out.txt", "sha256": claimed_digest, "size": 15 }] }
    });
    let (status, body) = call(&agent, "POST", &format!("{base}/complete"), Some(&token.token), Some(result), &headers)
        .expect("complete");
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("missing_output")), "{body}");

    let (status, body) =
        call(&agent, "GET", &format!("{base}/blobs/{}", "b".repeat(64)), Some(&token.token), None, &headers)
            .expect("get");
    assert_eq!(status, 403, "{body}");
    // Another agent of the pool cannot act on this one's job.
    let (status, body) = call(
        &agent,
        "POST",
        &format!("{base}/renew"),
        Some(&token.token),
        Some(serde_json::json!({"fence": fence})),
        &[("x-airlock-agent", "other")],
    )
    .expect("renew");
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("lease_lost")), "{body}");

    let (status, _) = call(&agent, "POST", &format!("{}/api/v1/runs/{id}/cancel", server.url), Some(runner), None, &[])
        .expect("cancel");
    assert_eq!(status, 200);
    assert_eq!(wait_for_end(&agent, &server.url, runner, &id)["run"]["state"], "cancelled");
}

/// Signs in to the web pages with `token`; answers the session cookie.
fn ui_session(base: &str, token: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let resp = agent
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("token={token}"))
        .expect("sign in");
    let cookie = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).expect("a session cookie");
    cookie.split(';').next().expect("name=value").to_owned()
}

/// A web page, as the signed-in user of `cookie`.
fn ui_get(base: &str, cookie: &str, path: &str) -> String {
    let resp = http().get(format!("{base}{path}")).header("cookie", cookie).call().expect("page");
    assert_eq!(resp.status(), 200);
    resp.into_body().read_to_string().expect("html")
}

/// PostgreSQL restarted while an agent runs a step: the server waits for
/// the database (the agent's calls wait with it), the step completes
/// once, and the run goes on to its end.
#[test]
fn a_step_on_an_agent_goes_on_through_a_restart_of_postgresql() {
    let mut pg = airlock_store::testing::TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    s.file(
        "pipes/long.yaml",
        format!(
            "name: long\nsteps:\n  make:\n    uses: {tick}\n    runs_on: [big]\n    cache: false\n    args: [\"40\", \"100\", out.txt]\n    \
             outputs: [out.txt]\n  here:\n    uses: {tick}\n    needs: [make]\n    inputs: [make]\n    args: [\"1\", \"1\"]\n",
            tick = tick()
        ),
    );
    let env = [("AIRLOCK_DATABASE_URL", url.as_str())];
    let server = Server::start_with(&s.state(), &policy, &s.path().join("pipes"), &env, &["--lease", "10s"]);
    let worker = Agent::start(&s.path().join("agent-state"), &server.url, &token.token, "a1", &["big"]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "long.yaml");
    worker.wait_for(&format!("job {id}/make/1: claimed"));
    pg.stop();
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again().expect("PostgreSQL starts again");
    worker.wait_for(&format!("job {id}/make/1: completed (succeeded)"));
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let make = detail["steps"].as_array().expect("steps").iter().find(|st| st["name"] == "make").cloned();
    assert_eq!(make.expect("make")["attempts"], 1, "{detail}");
    let (status, log) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{id}/steps/make/log", server.url), Some(runner), None, &[])
            .expect("log");
    assert_eq!(status, 200);
    assert!(log.as_str().is_some_and(|l| l.ends_with("tick 40\n")), "{log}");
}

/// One agent per state directory: a second is refused, saying why; the
/// first clears what a killed agent there left of its jobs.
#[test]
fn an_agent_owns_its_state_directory() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    std::fs::create_dir_all(s.path().join("pipes")).expect("pipes");
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let state = s.path().join("agent-state");
    let stale = state.join("agent/jobs/RUN_make_1-7/workspace");
    std::fs::create_dir_all(&stale).expect("a killed agent's job");
    // Its blobs are copies of the server's: a cache, kept to its bound,
    // the blobs used least recently going first, none used within the
    // hour.
    let blobs = airlock_host::ArtifactStore::new(state.join("agent/blobs"));
    let (old, _, _) = blobs.put(&b"used long ago"[..]).expect("put");
    let (recent, _, _) = blobs.put(&b"used just now"[..]).expect("put");
    let ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::open(blobs.path(&old).expect("path")).expect("open").set_modified(ago).expect("set time");
    let mut cmd = airlock(&state);
    cmd.args(["agent", "--name", "a1", "--server", &server.url, "--label", "linux"])
        .env("AIRLOCK_AGENT_TOKEN", &token.token)
        .env("AIRLOCK_ARTIFACT_CACHE_LIMIT", "1");
    let first = Agent::launch(cmd);
    first.wait_for("artifact cache: removed 1 blobs");
    assert!(!state.join("agent/jobs").exists(), "the stale job is still there");
    assert!(!blobs.contains(&old), "the blob used least recently is still cached");
    assert!(blobs.contains(&recent), "a blob in use was removed");
    let mut second = airlock(&state)
        .args(["agent", "--server", &server.url, "--name", "a2"])
        .env("AIRLOCK_AGENT_TOKEN", &token.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("airlock agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second agent ran on the same state directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another airlock agent is using the state directory"), "{stderr}");
}

/// An agent whose stderr nobody reads any more (its supervisor's pipe
/// closed) goes on running steps: its log lines are dropped, not its jobs.
#[test]
fn an_agent_whose_log_is_closed_still_runs_steps() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    remote_pipeline(&s, 1);
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let mut child = airlock(&s.path().join("agent-state"))
        .args(["agent", "--server", &server.url, "--name", "a1", "--label", "linux", "--label", "big"])
        .env("AIRLOCK_AGENT_TOKEN", &token.token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("airlock agent");
    drop(child.stderr.take());
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "remote.yaml");
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    let alive = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert!(alive, "the agent stopped");
}

/// A step that uses a tool and mounts trees runs on an agent: the server
/// fetches the tool by its pinned digest, the agent gets its module and
/// every mounted file by digest (a source, and an upstream step's outputs
/// made on an agent), and what it makes is what the server makes.
#[test]
fn a_step_with_a_tool_and_mounts_runs_on_an_agent() {
    use sha2::Digest as _;
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let digest = hex::encode(sha2::Sha256::digest(&wasm));
    let url = crate::tools::serve(wasm);
    s.file("pipes/src/a.txt", "one two three\n");
    let yaml = |name: &str, on: &str| {
        format!(
            "name: {name}\nsources: {{ src: src }}\ntools:\n  wc:\n    url: {url}\n    sha256: {digest}\nsteps:\n  \
             make:\n    uses: {tick}\n{on}    cache: false\n    args: [\"2\", \"1\", out.txt]\n    outputs: [out.txt]\n  \
             count:\n    uses: tool:wc\n{on}    cache: false\n    needs: [make]\n    mounts: {{ /data: src, /made: make }}\n    \
             args: [counts.txt, /data/a.txt, /made/out.txt]\n    outputs: [counts.txt]\n",
            tick = tick()
        )
    };
    s.file("pipes/tooled.yaml", yaml("tooled", "    runs_on: [linux]\n"));
    s.file("pipes/here.yaml", yaml("here", ""));
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let worker = Agent::start(&s.path().join("agent-state"), &server.url, &token.token, "a1", &["linux"]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let id = submit_run(&agent, &server.url, runner, "tooled.yaml");
    let detail = wait_for_end(&agent, &server.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    worker.wait_for(&format!("job {id}/make/1: completed (succeeded)"));
    worker.wait_for(&format!("job {id}/count/1: completed (succeeded)"));
    let counts = |run: &str| -> String {
        let list = outputs(&agent, &server.url, runner, run);
        let sha = list["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .find(|a| a["step"] == "count")
            .unwrap_or_else(|| panic!("no counts: {list}"))["sha256"]
            .as_str()
            .expect("sha256")
            .to_owned();
        let (status, text) =
            call(&agent, "GET", &format!("{}/api/v1/artifacts/{sha}", server.url), Some(runner), None, &[])
                .expect("get");
        assert_eq!(status, 200);
        text.as_str().expect("text").to_owned()
    };
    let there = counts(&id);
    assert!(there.contains("      1       3        14 /data/a.txt"), "{there}");
    assert!(there.lines().any(|l| l.ends_with(" /made/out.txt") && !l.starts_with("      0")), "{there}");
    let local = submit_run(&agent, &server.url, runner, "here.yaml");
    assert_eq!(wait_for_end(&agent, &server.url, runner, &local)["run"]["state"], "succeeded");
    assert_eq!(counts(&local), there, "the server made other bytes");

    // The agent lays mounted files out as links to its blobs: a step that
    // writes into its mount is refused, and every blob keeps its bytes.
    s.file(
        "pipes/poke.yaml",
        format!(
            "name: poke\nsteps:\n  make:\n    uses: {tick}\n    runs_on: [linux]\n    cache: false\n    \
             args: [\"1\", \"1\", out.txt]\n    outputs: [out.txt]\n  \
             poke:\n    uses: {tick}\n    runs_on: [linux]\n    cache: false\n    needs: [make]\n    \
             mounts: {{ /made: make }}\n    args: [\"1\", \"1\", /made/out.txt]\n",
            tick = tick()
        ),
    );
    let poked = submit_run(&agent, &server.url, runner, "poke.yaml");
    let detail = wait_for_end(&agent, &server.url, runner, &poked);
    assert_eq!(detail["run"]["state"], "failed", "{detail}");
    let state = |name: &str| {
        detail["steps"].as_array().expect("steps").iter().find(|st| st["name"] == name).expect("step")["state"].clone()
    };
    assert_eq!((state("make"), state("poke")), ("succeeded".into(), "failed".into()), "{detail}");
    let blobs = airlock_host::ArtifactStore::new(s.path().join("agent-state/agent/blobs"));
    let mut checked = 0;
    for file in crate::support::files_below(&s.path().join("agent-state/agent/blobs/sha256")) {
        let name = file.iter().rev().take(2).collect::<Vec<_>>();
        let sha = format!("{}{}", name[1].to_string_lossy(), name[0].to_string_lossy());
        blobs.verify(&sha).unwrap_or_else(|e| panic!("a step changed a blob of the agent's: {e}"));
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} blobs on the agent");
}

/// A fetched tool's tree never changes, so the server reads (and hashes)
/// it once for every run and attempt that hands it to an agent, not on
/// each: bytes changed behind its back in the tool cache do not reach the
/// agent, which gets the files as they were when they were fetched.
#[test]
fn a_tools_tree_is_read_once_for_every_run_on_agents() {
    use sha2::Digest as _;
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    let tgz = crate::tools::wordcount_tarball();
    let digest = hex::encode(sha2::Sha256::digest(&tgz));
    let url = crate::tools::serve(tgz);
    s.file(
        "pipes/words.yaml",
        format!(
            "name: words\ntools:\n  wc:\n    url: {url}\n    sha256: {digest}\n    module: bin/wc.wasm\n    \
             mounts: {{ /share: share }}\nsteps:\n  count:\n    uses: tool:wc\n    runs_on: [linux]\n    \
             cache: false\n    args: [counts.txt, /share/words.txt]\n    outputs: [counts.txt]\n"
        ),
    );
    // The state directory is named through a link, as a path an admin
    // gives may be: the tool's tree is known by either name.
    std::os::unix::fs::symlink(s.path(), s.path().join("via")).expect("link");
    let server = Server::start(&s.path().join("via/state"), &policy, &s.path().join("pipes"), &[]);
    let _worker = Agent::start(&s.path().join("agent-state"), &server.url, &token.token, "a1", &["linux"]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let counted = |run: &str| -> String {
        assert_eq!(wait_for_end(&agent, &server.url, runner, run)["run"]["state"], "succeeded");
        let list = outputs(&agent, &server.url, runner, run);
        let sha = list["artifacts"][0]["sha256"].as_str().expect("sha256").to_owned();
        let (_, text) = call(&agent, "GET", &format!("{}/api/v1/artifacts/{sha}", server.url), Some(runner), None, &[])
            .expect("get");
        text.as_str().expect("text").to_owned()
    };
    let first = counted(&submit_run(&agent, &server.url, runner, "words.yaml"));
    assert!(first.contains(" 4 ") || first.contains("       4 "), "{first}");

    let words = crate::support::files_below(&s.state().join("tools"))
        .into_iter()
        .find(|f| f.ends_with("share/words.txt"))
        .expect("the tool's tree in the cache");
    std::fs::set_permissions(&words, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::write(&words, "five words are in here\n").expect("change it");
    let second = counted(&submit_run(&agent, &server.url, runner, "words.yaml"));
    assert_eq!(second, first, "the server read the tool's tree again");
    assert_eq!(
        std::fs::read_to_string(&words).expect("read"),
        "five words are in here\n",
        "the tool was fetched again"
    );
}

/// A job that succeeded and left its directory as it came (an empty
/// workspace, no inputs) hands that directory to the next job, as a
/// server reuses empty workspaces: making directories is most of what a
/// short step costs. A job that leaves files, or fails, takes its
/// directory with it.
#[test]
fn an_agent_reuses_the_empty_directory_of_a_job_that_succeeded() {
    let s = Scratch::new();
    let people = People::new(&s);
    let token = user_token(s.path());
    let policy = policy(&s, &people, &token);
    let step = |name: &str, needs: &str, args: &str| {
        format!("  {name}:\n    uses: {}\n    runs_on: [linux]\n    cache: false\n{needs}    args: {args}\n", tick())
    };
    s.file(
        "pipes/quiet.yaml",
        format!(
            "name: quiet\nsteps:\n{}{}{}",
            step("a", "", "[\"1\", \"1\"]"),
            step("b", "    needs: [a]\n", "[\"1\", \"1\"]"),
            step("c", "    needs: [b]\n", "[\"1\", \"1\"]")
        ),
    );
    s.file("pipes/busy.yaml", format!("name: busy\nsteps:\n{}", step("a", "", "[\"1\", \"1\", left.txt]")));
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let _worker = Agent::start(&s.path().join("agent-state"), &server.url, &token.token, "a1", &["linux"]);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let jobs = s.path().join("agent-state/agent/jobs");
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&jobs)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    for _ in 0..2 {
        let id = submit_run(&agent, &server.url, runner, "quiet.yaml");
        assert_eq!(wait_for_end(&agent, &server.url, runner, &id)["run"]["state"], "succeeded");
    }
    assert_eq!(names(), ["0"], "six jobs one after another, one directory");
    let id = submit_run(&agent, &server.url, runner, "busy.yaml");
    assert_eq!(wait_for_end(&agent, &server.url, runner, &id)["run"]["state"], "succeeded");
    // The job that left a file took the directory with it (in the
    // background).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names().is_empty() {
        assert!(Instant::now() < deadline, "a directory with files in it stays: {:?}", names());
        std::thread::sleep(Duration::from_millis(20));
    }
}
