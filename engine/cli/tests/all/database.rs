//! `airlock serve` on PostgreSQL: a real server of the test's own on
//! loopback (Debian's), the run API over HTTP, and a SIGKILL in the middle
//! of a run, after which a new server on the same database resumes it.

use crate::server::{People, pipelines};
use crate::support::{Scratch, Server, airlock, call, http, output, submit_run, wait_for_end};
use airlock_store::testing::TestPostgres;
use std::time::{Duration, Instant};

/// The password in the database URL: the test server trusts loopback, so
/// any password is taken, and this one must show up nowhere.
const CANARY: &str = "canary-db-password-5e1f";

#[test]
fn a_server_keeps_its_runs_in_postgresql_and_a_new_one_resumes_them() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url =
        pg.database().expect("a database").replacen("postgres://airlock@", &format!("postgres://airlock:{CANARY}@"), 1);
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let pipes = pipelines(&s);
    let env = [("AIRLOCK_DATABASE_URL", url.as_str())];
    let mut server = Server::start(&s.state(), &policy, &pipes, &env);
    let (agent, base) = (http(), server.url.clone());
    let runner = people.runner.token.as_str();

    // A run, start to end, with its log, all through the database.
    let id = submit_run(&agent, &base, runner, "two.yaml");
    let detail = wait_for_end(&agent, &base, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let (status, log) =
        call(&agent, "GET", &format!("{base}/api/v1/runs/{id}/steps/a/log"), Some(runner), None, &[]).expect("log");
    assert_eq!((status, log), (200, serde_json::json!("tick 1\ntick 2\ntick 3\n")));
    assert!(!s.state().join("db").exists(), "the records went to sled, not to the database");

    // Another process reads the same records while the server runs.
    let (code, shown, stderr) =
        output(airlock(&s.state()).env("AIRLOCK_DATABASE_URL", &url).args(["show", &id, "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["run"]["state"], "succeeded", "{shown}");

    // A second engine with a state directory of its own runs beside the
    // server on the same database; one on the server's state directory
    // is refused.
    let other =
        s.pipeline(&format!("name: x\nsteps:\n  a:\n    uses: {}\n    args: [\"1\", \"1\"]\n", crate::server::tick()));
    let (code, _, stderr) =
        output(airlock(&s.path().join("other-state")).env("AIRLOCK_DATABASE_URL", &url).arg("run").arg(&other));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = output(airlock(&s.state()).env("AIRLOCK_DATABASE_URL", &url).arg("run").arg(&other));
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("another airlock engine"), "{stderr}");
    assert!(!stderr.contains(CANARY), "{stderr}");

    // SIGKILL in the middle of a run; a new server resumes it.
    let slow = submit_run(&agent, &base, runner, "slow.yaml");
    wait_until_running(&agent, &base, runner, &slow);
    server.kill();
    let mut said: Vec<String> = server.before.clone();
    said.extend(server.stderr.try_iter());
    let server = Server::start(&s.state(), &policy, &pipes, &env);
    let detail = wait_for_end(&agent, &server.url, runner, &slow);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let (_, runs) = call(&agent, "GET", &format!("{}/api/v1/runs", server.url), Some(runner), None, &[]).expect("runs");
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(3), "{runs}");

    // The password reached no log and no answer.
    said.extend(server.before.iter().cloned());
    said.extend(server.stderr.try_iter());
    assert!(!said.iter().any(|l| l.contains(CANARY)), "the database password is in the server's log");
    assert!(!runs.to_string().contains(CANARY));
}

/// PostgreSQL restarted in the middle of a run, and down while a run is
/// submitted: the server waits for it and goes on; the run under way
/// ends as if nothing happened, and the submission made while the
/// database was down is answered once it is back, and runs.
#[test]
fn runs_go_on_through_a_restart_of_postgresql() {
    let mut pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let pipes = pipelines(&s);
    let server = Server::start(&s.state(), &policy, &pipes, &[("AIRLOCK_DATABASE_URL", url.as_str())]);
    let (agent, base) = (http(), server.url.clone());
    let runner = people.runner.token.as_str();

    let slow = submit_run(&agent, &base, runner, "slow.yaml");
    wait_until_running(&agent, &base, runner, &slow);
    pg.stop();
    let submitted = std::thread::scope(|scope| {
        let submission = scope.spawn(|| submit_run(&agent, &base, runner, "two.yaml"));
        std::thread::sleep(Duration::from_secs(2));
        pg.start_again().expect("PostgreSQL starts again");
        submission.join().expect("the submission")
    });
    for id in [&slow, &submitted] {
        let detail = wait_for_end(&agent, &base, runner, id);
        assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    }
    let said: Vec<String> = server.stderr.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("the database is out of reach")), "{said:#?}");
}

/// Waits until the first step of `run` is running.
pub fn wait_until_running(agent: &ureq::Agent, base: &str, token: &str, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, detail) =
            call(agent, "GET", &format!("{base}/api/v1/runs/{run}"), Some(token), None, &[]).expect("get");
        if detail["steps"][0]["state"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "run {run} never started: {detail}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
