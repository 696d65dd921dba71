//! Several `airlock serve` processes on one PostgreSQL database: they
//! share the queue, one takes over the runs of another that stopped
//! renewing its leases, and one that was frozen past its lease writes
//! nothing when it wakes.

use crate::database::wait_until_running;
use crate::server::{People, gate_pipeline_ticking, pipelines, tick};
use crate::support::{Scratch, Server, approval_code, call, http, submit_run, wait_for_end};
use airlock_store::testing::TestPostgres;
use std::path::Path;
use std::time::{Duration, Instant};

/// Starts a server on `state` sharing the database at `url` and the
/// artifact directory of `s`, with leases of `lease`.
fn server(s: &Scratch, state: &str, policy: &Path, url: &str, lease: &str) -> Server {
    server_with(s, state, policy, url, lease, &[])
}

/// [`server`], with more `airlock serve` arguments.
fn server_with(s: &Scratch, state: &str, policy: &Path, url: &str, lease: &str, more: &[&str]) -> Server {
    let artifacts = s.path().join("artifacts");
    let artifacts = artifacts.to_string_lossy();
    let args: Vec<&str> =
        ["--lease", lease, "--artifacts", &artifacts].into_iter().chain(more.iter().copied()).collect();
    Server::start_with(&s.path().join(state), policy, &s.path().join("pipes"), &[("AIRLOCK_DATABASE_URL", url)], &args)
}

/// Sends the signal `name` (`STOP`, `CONT`) to a server.
fn signal(server: &Server, name: &str) {
    let sent = std::process::Command::new("kill").arg(format!("-{name}")).arg(server.child.id().to_string()).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{name}");
}

/// Waits for a line of the server's stderr with one of `needles`.
fn wait_for_line(server: &Server, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.stderr.recv_timeout(left) {
            Ok(line) if needles.iter().any(|n| line.contains(n)) => return line,
            Ok(line) => said.push(line),
            Err(_) => panic!("the server never said any of {needles:?}: {said:#?}"),
        }
    }
}

/// A server frozen (SIGSTOP) in the middle of a step, for longer than its
/// lease: the other server takes the run over, runs the step again and
/// deploys, once, to a provider that cannot tell a second deployment
/// from a first. Woken (SIGCONT), the frozen server finds its lease gone
/// and stops; nothing it does then reaches the records.
#[test]
fn a_frozen_server_is_fenced_off_and_the_other_finishes_its_run() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let log = s.path().join("deployed.log");
    let policy = s.file(
        "policy.yaml",
        format!(
            "{}environments:\n  ops:\n    provider: {{ type: command, argv: [/bin/sh, -c, 'echo \"$AIRLOCK_IDEMPOTENCY_KEY\" >> {}'], timeout: 30s }}\n    pipelines: [once]\n",
            people.yaml(),
            log.display()
        ),
    );
    pipelines(&s);
    s.file(
        "pipes/once.yaml",
        format!(
            "name: once\nsteps:\n  a:\n    uses: {}\n    args: [\"30\", \"100\", out.txt]\n    outputs: [out.txt]\n  \
             ship:\n    needs: [a]\n    deploy: {{ environment: ops, from: [a] }}\n",
            tick()
        ),
    );
    let (agent, runner) = (http(), people.runner.token.as_str());
    let frozen = server(&s, "state-a", &policy, &url, "1s");
    let id = submit_run(&agent, &frozen.url, runner, "once.yaml");
    wait_until_running(&agent, &frozen.url, runner, &id);
    signal(&frozen, "STOP");

    let other = server(&s, "state-b", &policy, &url, "1s");
    let detail = wait_for_end(&agent, &other.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let took = wait_for_line(&other, &[&format!("run {id} was taken over")]);
    assert!(took.contains("goes on here"), "{took}");

    signal(&frozen, "CONT");
    let said = wait_for_line(&frozen, &["another engine took it over", "in the hands of another engine"]);
    assert!(said.contains(&id), "{said}");
    // Whatever the woken server had under way ends there: give it time
    // to try, then check that the records are as the other left them.
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{id}", other.url), Some(runner), None, &[]).expect("get");
    assert_eq!(after, detail, "the frozen server changed the run after the other ended it");
    let deployed = std::fs::read_to_string(&log).expect("the deployment log");
    assert_eq!(deployed, format!("{id}/ship\n"), "deployed other than once");
}

/// A cancellation sent to one server stops the run another works on.
#[test]
fn a_run_is_cancelled_through_any_server() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    pipelines(&s);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let working = server(&s, "state-a", &policy, &url, "30s");
    let id = submit_run(&agent, &working.url, runner, "slow.yaml");
    wait_until_running(&agent, &working.url, runner, &id);
    let other = server(&s, "state-b", &policy, &url, "30s");
    let (status, body) =
        call(&agent, "POST", &format!("{}/api/v1/runs/{id}/cancel", other.url), Some(runner), None, &[])
            .expect("cancel");
    assert!(status < 300, "{status} {body}");
    let detail = wait_for_end(&agent, &other.url, runner, &id);
    assert_eq!(detail["run"]["state"], "cancelled", "{detail}");
    wait_for_line(&working, &[&format!("run {id}: cancelled through another server")]);
}

/// A run submitted to a server that is busy is started by an idle one at
/// once: the submission wakes it (`NOTIFY`), well before it would look
/// for work on its own (every 5 s with these leases).
#[test]
fn a_submission_wakes_an_idle_server() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    pipelines(&s);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let busy = server_with(&s, "state-a", &policy, &url, "10m", &["--max-runs", "1"]);
    let first = submit_run(&agent, &busy.url, runner, "slow.yaml");
    wait_until_running(&agent, &busy.url, runner, &first);
    let idle = server(&s, "state-b", &policy, &url, "10m");
    // The idle server has looked for work once, at start, and found none.
    std::thread::sleep(Duration::from_millis(500));
    let submitted = Instant::now();
    let second = submit_run(&agent, &busy.url, runner, "two.yaml");
    let deadline = submitted + Duration::from_secs(4);
    loop {
        let (_, detail) =
            call(&agent, "GET", &format!("{}/api/v1/runs/{second}", idle.url), Some(runner), None, &[]).expect("get");
        if detail["run"]["state"] != "queued" {
            break;
        }
        assert!(Instant::now() < deadline, "the idle server did not take the run at once: {detail}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let detail = wait_for_end(&agent, &idle.url, runner, &second);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    // The busy server is still on its first run: the idle one ran it.
    let (_, first_now) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{first}", busy.url), Some(runner), None, &[]).expect("get");
    assert_eq!(first_now["run"]["state"], "running", "{first_now}");
}

/// Reads OpenMetrics text as Prometheus's own client library does (the
/// pinned Python client `.ci/test-setup` installs), refusing anything
/// malformed: each sample as `name{labels}` and its value.
pub fn read_openmetrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    use std::io::Write as _;
    let python = crate::support::repo().join("target/tools/openmetrics/bin/python");
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = {}\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out[s.name + ('{' + labels + '}' if labels else '')] = s.value\n\
        print(json.dumps(out))\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}; run `bash .ci/test-setup`", python.display()));
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(out.status.success(), "not OpenMetrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `/api/v1/metrics`, read as Prometheus reads it: the queue's depth and
/// the runs held over both servers of a database, each server's own
/// runs, claims and steps; a caller without a token gets nothing.
#[test]
fn metrics_show_the_queue_over_every_server_and_each_servers_work() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    pipelines(&s);
    let (agent, runner, viewer) = (http(), people.runner.token.as_str(), people.viewer.token.as_str());
    let busy = server_with(&s, "state-a", &policy, &url, "30s", &["--max-runs", "1"]);
    let done = submit_run(&agent, &busy.url, runner, "two.yaml");
    assert_eq!(wait_for_end(&agent, &busy.url, runner, &done)["run"]["state"], "succeeded");
    let slow = submit_run(&agent, &busy.url, runner, "slow.yaml");
    wait_until_running(&agent, &busy.url, runner, &slow);
    // A second server that is not running yet: this one waits.
    let waiting = submit_run(&agent, &busy.url, runner, "two.yaml");

    let scrape = |base: &str, token: Option<&str>| {
        let (status, body) = call(&agent, "GET", &format!("{base}/api/v1/metrics"), token, None, &[]).expect("scrape");
        (status, body.as_str().map(str::to_owned).unwrap_or_else(|| body.to_string()))
    };
    let (status, _) = scrape(&busy.url, None);
    assert_eq!(status, 401);
    let (status, text) = scrape(&busy.url, Some(viewer));
    assert_eq!(status, 200, "{text}");
    let metrics = read_openmetrics(&text);
    let value = |name: &str| metrics.get(name).copied().unwrap_or_else(|| panic!("no {name} in {metrics:#?}"));
    assert_eq!(value("airlock_runs_waiting"), 1.0, "{text}");
    assert_eq!(value("airlock_runs_held"), 1.0, "{text}");
    assert_eq!(value("airlock_runs_held_here"), 1.0, "{text}");
    assert_eq!(value("airlock_run_claims_total"), 2.0, "{text}");
    assert_eq!(value("airlock_steps_finished_total{state=succeeded}"), 2.0, "{text}");
    assert_eq!(value("airlock_step_duration_seconds_count"), 2.0, "{text}");

    // The other server sees the same queue, and empties it.
    let other = server(&s, "state-b", &policy, &url, "30s");
    assert_eq!(wait_for_end(&agent, &other.url, runner, &waiting)["run"]["state"], "succeeded");
    let (_, text) = scrape(&other.url, Some(viewer));
    let metrics = read_openmetrics(&text);
    let value = |name: &str| metrics.get(name).copied().unwrap_or_else(|| panic!("no {name} in {metrics:#?}"));
    assert_eq!(value("airlock_runs_waiting"), 0.0, "{text}");
    assert_eq!(value("airlock_runs_held"), 1.0, "{text}");
    assert_eq!(value("airlock_runs_held_here"), 0.0, "{text}");
    assert_eq!(value("airlock_run_claims_total"), 1.0, "{text}");
    assert_eq!(value("airlock_steps_finished_total{state=succeeded}"), 2.0, "{text}");
}

/// Issue 16: two things live only in the memory of the server working on
/// a run, the log of a step attempt running there and the one-time code
/// of an approval waiting there. Any other server shows them, asking the
/// holder with the caller's own credential: the code only to the user
/// who submitted the run, on the API and on the run page (a web sign-in
/// made on one server holds on every server), and it approves the step.
#[test]
fn any_server_shows_a_running_steps_log_and_the_approval_code_of_the_holder() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file(
        "policy.yaml",
        format!(
            "{}groups:\n  approvers: [abe]\nenvironments:\n  www:\n    provider: {{ type: directory, path: www }}\n    \
             pipelines: [gate]\n    approvals: {{ groups: [approvers], timeout: 10m }}\n",
            people.yaml()
        ),
    );
    pipelines(&s);
    gate_pipeline_ticking(&s, 60, 100);
    let (agent, runner) = (http(), people.runner.token.as_str());
    let holder = server(&s, "state-a", &policy, &url, "30s");
    let id = submit_run(&agent, &holder.url, runner, "gate.yaml");
    wait_until_running(&agent, &holder.url, runner, &id);
    let other = server(&s, "state-b", &policy, &url, "30s");

    // The log of the attempt running on the holder, read through the
    // other server while the step still runs.
    let log = format!("{}/api/v1/runs/{id}/steps/a/log", other.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let (status, text) = call(&agent, "GET", &log, Some(runner), None, &[]).expect("log");
        assert_eq!(status, 200, "{text}");
        let (_, detail) =
            call(&agent, "GET", &format!("{}/api/v1/runs/{id}", other.url), Some(runner), None, &[]).expect("get");
        assert_eq!(detail["steps"][0]["state"], "running", "step a ended before its log was seen: {detail}");
        let text = text.as_str().unwrap_or_default().to_owned();
        if text.starts_with("tick 1\ntick 2\n") {
            break text;
        }
        assert!(Instant::now() < deadline, "no log of the running step through the other server: {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // From an offset, and followed to the end: the same bytes as the
    // holder's.
    let (_, rest) = call(&agent, "GET", &format!("{log}?offset=7"), Some(runner), None, &[]).expect("log");
    assert!(rest.as_str().is_some_and(|r| r.starts_with("tick 2\n")), "{rest}");
    let (status, followed) =
        call(&agent, "GET", &format!("{log}?follow=true"), Some(runner), None, &[]).expect("follow");
    assert_eq!(status, 200);
    let all: String = (1..=60).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(followed.as_str(), Some(all.as_str()), "the followed log through the other server");
    assert!(all.starts_with(&seen));

    // The code, through the other server: to the requester, not to
    // anyone else.
    let code = approval_code(&agent, &other.url, runner, &id, "ship");
    let (_, as_holder) =
        call(&agent, "GET", &format!("{}/api/v1/runs/{id}", holder.url), Some(runner), None, &[]).expect("get");
    assert_eq!(as_holder["codes"]["ship"], code.as_str());
    for someone in [&people.viewer.token, &people.approver.token] {
        let (_, detail) =
            call(&agent, "GET", &format!("{}/api/v1/runs/{id}", other.url), Some(someone), None, &[]).expect("get");
        assert_eq!(detail["codes"], serde_json::json!({}), "the code shown to another user: {detail}");
    }
    // The run page of the other server, signed in on the holder.
    let browser: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let signed = browser
        .post(&format!("{}/ui/login", holder.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("token={runner}"))
        .expect("sign in");
    let cookie = signed
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = browser
        .get(&format!("{}/ui/runs/{id}", other.url))
        .header("cookie", &cookie)
        .call()
        .expect("run page")
        .into_body()
        .read_to_string()
        .expect("page");
    assert!(page.contains(&format!(">{code}</code>")), "no code on the other server's run page: {page}");

    // It approves the step, through the other server.
    let (status, body) = call(
        &agent,
        "POST",
        &format!("{}/api/v1/runs/{id}/approvals/ship", other.url),
        Some(&people.approver.token),
        Some(serde_json::json!({"code": code, "approve": true})),
        &[],
    )
    .expect("decide");
    assert_eq!(status, 200, "{body}");
    let detail = wait_for_end(&agent, &other.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
}
