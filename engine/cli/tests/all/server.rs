//! The run API of `airlock serve`, for real: a server process on
//! loopback, users of a policy with each role, runs submitted, followed,
//! cancelled and inspected over HTTP, and `airlock run --server`.

use crate::support::{
    Scratch, Server, User, airlock, approval_code, call, http, output, plugins, repo, submit_run, user_token,
    wait_for_end,
};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// viewer, runner, approver, admin, and a user with no role.
pub struct People {
    pub viewer: User,
    pub runner: User,
    pub approver: User,
    pub admin: User,
    pub nobody: User,
}

impl People {
    pub fn new(s: &Scratch) -> Self {
        Self {
            viewer: user_token(s.path()),
            runner: user_token(s.path()),
            approver: user_token(s.path()),
            admin: user_token(s.path()),
            nobody: user_token(s.path()),
        }
    }

    /// The `users:` section of a policy for them.
    pub fn yaml(&self) -> String {
        format!(
            "users:\n  vic: {{ token_sha256: {}, roles: [viewer] }}\n  rue: {{ token_sha256: {}, roles: [runner] }}\n  \
             abe: {{ token_sha256: {}, roles: [approver] }}\n  ada: {{ token_sha256: {}, roles: [admin] }}\n  \
             nix: {{ token_sha256: {} }}\n",
            self.viewer.digest, self.runner.digest, self.approver.digest, self.admin.digest, self.nobody.digest
        )
    }
}

/// The `tick` plugin, built.
pub fn tick() -> String {
    plugins().join("wasm32-wasip2/release/tick.wasm").display().to_string()
}

/// Writes `pipes/gate.yaml`: step `a` makes `index.txt`, and `ship`
/// deploys it to environment `www` (which the test's policy defines).
pub fn gate_pipeline(s: &Scratch) {
    gate_pipeline_ticking(s, 1, 1);
}

/// [`gate_pipeline`], with step `a` printing `count` ticks, one every
/// `interval_ms`.
pub fn gate_pipeline_ticking(s: &Scratch, count: u32, interval_ms: u32) {
    s.file(
        "pipes/gate.yaml",
        format!(
            "name: gate\nsteps:\n  a:\n    uses: {}\n    args: [\"{count}\", \"{interval_ms}\", index.txt]\n    outputs: [index.txt]\n  \
             ship:\n    needs: [a]\n    deploy: {{ environment: www, from: [a] }}\n",
            tick()
        ),
    );
}

/// Writes the test pipelines into `pipes/`.
pub fn pipelines(s: &Scratch) -> PathBuf {
    let tick = tick();
    s.file(
        "pipes/two.yaml",
        format!(
            "name: two\nparams:\n  count: {{ default: \"3\" }}\nsteps:\n  a:\n    uses: {tick}\n    args: [\"${{{{ params.count }}}}\", \"20\", out.txt]\n    outputs: [out.txt]\n  \
             b:\n    uses: {tick}\n    needs: [a]\n    inputs: [a]\n    args: [\"1\", \"1\"]\n"
        ),
    );
    s.file("pipes/slow.yaml", format!("name: slow\nsteps:\n  wait:\n    uses: {tick}\n    args: [\"100\", \"100\"]\n"));
    s.file("pipes/fail.yaml", format!("name: fail\nsteps:\n  oops:\n    uses: {tick}\n    args: [\"nonsense\"]\n"));
    s.file("pipes/bad.yaml", "name: bad\nsteps:\n  a:\n    usess: x.wasm\n");
    s.path().join("pipes")
}

fn step_state(detail: &Value, step: &str) -> String {
    let steps = detail["steps"].as_array().expect("steps");
    steps.iter().find(|s| s["name"] == step).expect("step")["state"].as_str().expect("state").to_owned()
}

/// Every endpoint of the committed API document refuses a caller without
/// a token, a user without a role, and a user without the role it names.
#[test]
fn every_endpoint_is_denied_unless_the_role_allows_it() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let server = Server::start(&s.state(), &policy, &pipelines(&s), &[]);
    let agent = http();
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("book/src/reference/openapi.json")).expect("openapi.json"),
    )
    .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().expect("methods") {
            let url = format!("{}{}", server.url, path.replace(['{', '}'], ""));
            let method = method.to_ascii_uppercase();
            let role = op["x-airlock-role"].as_str().expect("role");
            let (status, body) = call(&agent, &method, &url, None, Some(json!({})), &[]).expect("call");
            assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{method} {path}");
            let (status, body) = call(&agent, &method, &url, Some("alu_0000"), Some(json!({})), &[]).expect("call");
            assert_eq!(status, 401, "{method} {path}: {body}");
            let (status, body) =
                call(&agent, &method, &url, Some(&people.nobody.token), Some(json!({})), &[]).expect("call");
            assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{method} {path}");
            let others: &[&User] = match role {
                "viewer" => &[],
                "runner" => &[&people.viewer, &people.approver],
                "approver" => &[&people.viewer, &people.runner],
                "admin" => &[&people.viewer, &people.runner, &people.approver],
                other => panic!("unknown role {other}"),
            };
            for user in others {
                let (status, body) =
                    call(&agent, &method, &url, Some(&user.token), Some(json!({})), &[]).expect("call");
                assert_eq!(status, 403, "{method} {path}: {body}");
                assert!(body["error"]["message"].as_str().expect("message").contains(role), "{body}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} endpoints in the document");
    let (status, me) =
        call(&agent, "GET", &format!("{}/api/v1/whoami", server.url), Some(&people.admin.token), None, &[])
            .expect("whoami");
    assert_eq!((status, me), (200, json!({"user": "ada", "roles": ["admin"]})));
}

#[test]
fn runs_are_submitted_followed_cancelled_and_inspected_over_http() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let server = Server::start(&s.state(), &policy, &pipelines(&s), &[]);
    let (agent, url) = (http(), server.url.clone());
    let runner = people.runner.token.as_str();
    let submit = |token: &str, body: Value, key: Option<&str>| {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("idempotency-key", k)]).unwrap_or_default();
        call(&agent, "POST", &format!("{url}/api/v1/runs"), Some(token), Some(body), &headers).expect("submit")
    };

    let (status, listed) =
        call(&agent, "GET", &format!("{url}/api/v1/pipelines"), Some(runner), None, &[]).expect("list");
    assert_eq!((status, &listed["pipelines"]), (200, &json!(["bad.yaml", "fail.yaml", "slow.yaml", "two.yaml"])));

    // The same idempotency key answers the same run; another user's same
    // key is theirs alone.
    let (status, first) = submit(runner, json!({"pipeline": "two.yaml", "params": {"count": "4"}}), Some("k-1"));
    assert_eq!(status, 201, "{first}");
    let (status, again) = submit(runner, json!({"pipeline": "two.yaml", "params": {"count": "4"}}), Some("k-1"));
    assert_eq!((status, &again["run"]["id"], &again["created"]), (200, &first["run"]["id"], &json!(false)));
    let (status, admins) = submit(&people.admin.token, json!({"pipeline": "two.yaml"}), Some("k-1"));
    assert_eq!(status, 201, "{admins}");
    assert_ne!(admins["run"]["id"], first["run"]["id"]);

    let id = first["run"]["id"].as_str().expect("id");
    let detail = wait_for_end(&agent, &url, runner, id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert_eq!(detail["run"]["requester"], "rue");
    assert_eq!(detail["params"]["count"], "4");
    assert_eq!(detail["needs"], json!({"a": [], "b": ["a"]}));
    let (status, log) =
        call(&agent, "GET", &format!("{url}/api/v1/runs/{id}/steps/a/log"), Some(&people.viewer.token), None, &[])
            .expect("log");
    assert_eq!((status, log), (200, json!("tick 1\ntick 2\ntick 3\ntick 4\n")));
    let (status, log) =
        call(&agent, "GET", &format!("{url}/api/v1/runs/{id}/steps/a/log?offset=7"), Some(runner), None, &[])
            .expect("log");
    assert_eq!((status, log), (200, json!("tick 2\ntick 3\ntick 4\n")));

    // Artifacts: listed with digests, downloaded checked.
    let (status, listed) =
        call(&agent, "GET", &format!("{url}/api/v1/runs/{id}/artifacts"), Some(runner), None, &[]).expect("artifacts");
    assert_eq!(status, 200);
    let artifact = &listed["artifacts"][0];
    assert_eq!((&artifact["step"], &artifact["path"]), (&json!("a"), &json!("out.txt")));
    let sha = artifact["sha256"].as_str().expect("sha");
    let resp = agent
        .get(format!("{url}/api/v1/artifacts/{sha}"))
        .header("authorization", format!("Bearer {runner}"))
        .call()
        .expect("download");
    assert_eq!(resp.headers().get("x-airlock-sha256").and_then(|v| v.to_str().ok()), Some(sha));
    let bytes = resp.into_body().read_to_vec().expect("bytes");
    assert_eq!(bytes, b"tick 1\ntick 2\ntick 3\ntick 4\n");
    // Damaged on disk (same length, other bytes): the download is cut, never whole.
    let blob = airlock_host::ArtifactStore::new(s.state().join("artifacts")).path(sha).expect("path");
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::write(&blob, b"tick 1\ntick 2\ntick 3\ntick 5\n").expect("tamper");
    let got = agent
        .get(format!("{url}/api/v1/artifacts/{sha}"))
        .header("authorization", format!("Bearer {runner}"))
        .call()
        .and_then(|resp| resp.into_body().read_to_vec());
    assert!(got.is_err(), "a damaged artifact arrived whole: {got:?}");
    let (status, missing) =
        call(&agent, "GET", &format!("{url}/api/v1/artifacts/{}", "0".repeat(64)), Some(runner), None, &[])
            .expect("missing");
    assert_eq!((status, &missing["error"]["code"]), (404, &json!("no_artifact")));

    // Ended runs cannot be cancelled.
    let (status, body) =
        call(&agent, "POST", &format!("{url}/api/v1/runs/{id}/cancel"), Some(runner), None, &[]).expect("cancel");
    assert_eq!((status, &body["error"]["code"]), (409, &json!("run_ended")));

    // Bad submissions: every one answered with its own code, nothing queued.
    let (status, body) = submit(runner, json!({"pipeline": "bad.yaml"}), None);
    assert_eq!((status, &body["error"]["code"]), (422, &json!("invalid_pipeline")), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("bad.yaml:4:5"), "{body}");
    for name in ["../policy.yaml", "/etc/passwd", "nope.yaml", "pipes", ""] {
        let (status, body) = submit(runner, json!({"pipeline": name}), None);
        assert_eq!((status, &body["error"]["code"]), (404, &json!("no_pipeline")), "{name}: {body}");
    }
    let (status, body) = submit(runner, json!({"pipeline": "two.yaml", "params": {"nope": "1"}}), None);
    assert_eq!((status, &body["error"]["code"]), (422, &json!("bad_params")), "{body}");
    let (status, body) = submit(runner, json!({"pipeline": "two.yaml", "extra": 1}), None);
    assert_eq!(status, 400, "{body}");
    let (status, runs) = call(&agent, "GET", &format!("{url}/api/v1/runs"), Some(runner), None, &[]).expect("runs");
    assert_eq!((status, runs["runs"].as_array().expect("runs").len()), (200, 2));

    // A failing step fails the run, with its reason.
    let (_, failing) = submit(runner, json!({"pipeline": "fail.yaml"}), None);
    let detail = wait_for_end(&agent, &url, runner, failing["run"]["id"].as_str().expect("id"));
    assert_eq!((&detail["run"]["state"], &detail["run"]["reason"]), (&json!("failed"), &json!("step `oops` failed")));

    // Cancelling a running run stops it.
    let (_, slow) = submit(runner, json!({"pipeline": "slow.yaml"}), None);
    let slow = slow["run"]["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while step_state(&wait_running(&agent, &url, runner, &slow), "wait") != "running" {
        assert!(Instant::now() < deadline);
    }
    let (status, _) =
        call(&agent, "POST", &format!("{url}/api/v1/runs/{slow}/cancel"), Some(runner), None, &[]).expect("cancel");
    assert_eq!(status, 200);
    let detail = wait_for_end(&agent, &url, runner, &slow);
    assert_eq!((&detail["run"]["state"], step_state(&detail, "wait").as_str()), (&json!("cancelled"), "cancelled"));
}

fn wait_running(agent: &ureq::Agent, url: &str, token: &str, run: &str) -> Value {
    std::thread::sleep(Duration::from_millis(50));
    call(agent, "GET", &format!("{url}/api/v1/runs/{run}"), Some(token), None, &[]).expect("get").1
}

/// `?follow=true` sends a step's lines while it prints them, and ends
/// when the step does.
#[test]
fn a_log_is_followed_while_the_step_writes_it() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    s.file(
        "pipes/ticks.yaml",
        format!("name: ticks\nsteps:\n  t:\n    uses: {}\n    args: [\"20\", \"150\"]\n", tick()),
    );
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (agent, url, token) = (http(), server.url.clone(), people.runner.token.clone());
    let id = submit_run(&agent, &url, &token, "ticks.yaml");
    // Wait for the step to start, then follow.
    let deadline = Instant::now() + Duration::from_secs(30);
    while step_state(&wait_running(&agent, &url, &token, &id), "t") != "running" {
        assert!(Instant::now() < deadline);
    }
    // The command line follows it too.
    let cli = airlock(&s.path().join("client"))
        .args(["logs", "--server", &url, &id, "t", "--follow"])
        .env("AIRLOCK_USER_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("airlock logs --follow");
    let resp = agent
        .get(format!("{url}/api/v1/runs/{id}/steps/t/log?follow=true"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("follow");
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.starts_with("tick "), "{first}");
    // The first line arrived while the step still ran.
    let (_, detail) = call(&agent, "GET", &format!("{url}/api/v1/runs/{id}"), Some(&token), None, &[]).expect("get");
    assert_eq!(step_state(&detail, "t"), "running", "{detail}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest.last().map(String::as_str), Some("tick 20"), "{rest:?}");
    let detail = wait_for_end(&agent, &url, &token, &id);
    assert_eq!(detail["run"]["state"], "succeeded");
    let followed = cli.wait_with_output().expect("airlock logs");
    let printed = String::from_utf8_lossy(&followed.stdout);
    assert!(followed.status.success(), "{}", String::from_utf8_lossy(&followed.stderr));
    assert_eq!(printed.lines().count(), 20, "{printed}");
    assert!(printed.ends_with("tick 20\n"), "{printed}");
    let (code, all, stderr) = output(
        airlock(&s.path().join("client")).args(["logs", "--server", &url, &id]).env("AIRLOCK_USER_TOKEN", &token),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(all.starts_with("── t ──\ntick 1\n"), "{all}");
}

/// `airlock run --server` submits, follows and exits as the run ended.
#[test]
fn airlock_run_with_a_server_submits_and_follows() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let server = Server::start(&s.state(), &policy, &pipelines(&s), &[]);
    let remote = |token: &str, pipeline: &str| {
        output(
            airlock(&s.path().join("client"))
                .args(["run", "--server", &server.url, pipeline])
                .env("AIRLOCK_USER_TOKEN", token),
        )
    };
    let (code, _, stderr) = remote(&people.runner.token, "two.yaml");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("succeeded  a") && stderr.contains("succeeded  b"), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    let (code, _, stderr) = remote(&people.runner.token, "fail.yaml");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed") && stderr.contains("oops"), "{stderr}");
    assert!(stderr.contains("last lines of `oops`'s log") && stderr.contains("usage: tick"), "{stderr}");
    let (code, _, stderr) = remote(&people.viewer.token, "two.yaml");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs the `runner` role"), "{stderr}");
    let (code, _, stderr) = remote(&people.runner.token, "bad.yaml");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad.yaml:4:5"), "{stderr}");
    let (code, _, stderr) = output(
        airlock(&s.path().join("client"))
            .args(["run", "--server", &server.url, "two.yaml"])
            .env_remove("AIRLOCK_USER_TOKEN"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("AIRLOCK_USER_TOKEN"), "{stderr}");
}

/// Tokens through the API: an admin makes one, lists it, revokes it; the
/// secret is in the answer that made it and nowhere after.
#[test]
fn an_admin_manages_publish_tokens_through_the_api() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", format!("{}targets:\n  snaps: {{ dir: published }}\n", people.yaml()));
    let server = Server::start(&s.state(), &policy, &pipelines(&s), &[]);
    let (agent, url, admin) = (http(), server.url.clone(), people.admin.token.as_str());
    let tokens = format!("{url}/api/v1/tokens");
    let spec = json!({"scope": "publish:snaps/b1", "ttl_ms": 60000});
    let (status, made) = call(&agent, "POST", &tokens, Some(admin), Some(spec), &[]).expect("create");
    assert_eq!(status, 201, "{made}");
    let secret = made["token"].as_str().expect("token");
    assert!(secret.starts_with("alk_"));
    let id = made["record"]["id"].as_str().expect("id");
    let (status, listed) = call(&agent, "GET", &tokens, Some(admin), None, &[]).expect("list");
    assert_eq!((status, &listed["tokens"][0]["id"]), (200, &json!(id)));
    assert!(!listed.to_string().contains(secret), "a listing shows the secret");
    let revoke = format!("{tokens}/{id}/revoke");
    let (status, revoked) = call(&agent, "POST", &revoke, Some(admin), None, &[]).expect("revoke");
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["record"]["revoked_ms"].is_u64(), "{revoked}");
    let spec = json!({"scope": "publish:nowhere/b1", "ttl_ms": 1000});
    let (status, body) = call(&agent, "POST", &tokens, Some(admin), Some(spec), &[]).expect("create");
    assert_eq!((status, &body["error"]["code"]), (422, &json!("no_target")));
    let (status, body) =
        call(&agent, "POST", &format!("{tokens}/nope/revoke"), Some(admin), None, &[]).expect("revoke");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("no_token")));
}

/// `airlock approve --server`: an approver decides through the API, as
/// the user of their token; the wrong code and the requester are refused.
#[test]
fn airlock_approve_with_a_server_decides_through_the_api() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file(
        "policy.yaml",
        format!(
            "{}groups:\n  approvers: [abe, rue]\nenvironments:\n  www:\n    provider: {{ type: directory, path: www }}\n    \
             pipelines: [gate]\n    approvals: {{ groups: [approvers], timeout: 10m }}\n",
            people.yaml()
        ),
    );
    gate_pipeline(&s);
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (agent, url) = (http(), server.url.clone());
    let id = submit_run(&agent, &url, &people.runner.token, "gate.yaml");
    let code = approval_code(&agent, &url, &people.runner.token, &id, "ship");
    let approve = |token: &str, code: &str| {
        output(
            airlock(&s.path().join("client"))
                .args(["approve", "--server", &url, &id, "ship", "--code", code, "--reason", "ok"])
                .env("AIRLOCK_USER_TOKEN", token),
        )
    };
    let (status, _, stderr) = approve(&people.approver.token, "WRONGCODE0");
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("wrong_code"), "{stderr}");
    let (status, _, stderr) = approve(&people.runner.token, &code);
    assert_eq!(status, 2, "a runner may not decide: {stderr}");
    let (status, _, stderr) = approve(&people.approver.token, &code);
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("approved the deployment"), "{stderr}");
    let detail = wait_for_end(&agent, &url, &people.runner.token, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert_eq!(detail["approvals"][0]["decisions"][0]["user"], "abe");
    assert_eq!(std::fs::read_to_string(s.path().join("www/current/index.txt")).expect("deployed"), "tick 1\n");
}
