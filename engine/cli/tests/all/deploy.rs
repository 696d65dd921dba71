//! Deployments for real: `pipelines/deploy.yaml` waits for approval,
//! then deploys to an HTTP server on loopback and to a directory, with a
//! canary credential that must show up nowhere but in the one request
//! that carries it.

use crate::support::{Scratch, airlock, files_below, output, plugins, repo, user_token};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CANARY: &str = "canary-deploy-credential-3b9e27d1";

/// A request the staging server received: method, URL, Authorization, body.
type Received = (String, String, Option<String>, Vec<u8>);

/// An HTTP server on loopback standing in for staging.
struct Staging {
    url: String,
    received: mpsc::Receiver<Received>,
}

impl Staging {
    fn start() -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("server");
        let url = format!("http://{}/deploy", server.server_addr().to_ip().expect("ip"));
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let auth = req.headers().iter().find(|h| h.field.equiv("authorization")).map(|h| h.value.to_string());
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let _ = tx.send((req.method().to_string(), req.url().to_owned(), auth, body));
                let _ = req.respond(tiny_http::Response::from_string("stored").with_status_code(201));
            }
        });
        Self { url, received }
    }

    fn all(&self) -> Vec<Received> {
        self.received.try_iter().collect()
    }
}

/// Three people: alice starts runs, bob and carol approve, mallory is
/// in no group. Returns their tokens.
struct People {
    alice: String,
    bob: String,
    carol: String,
    mallory: String,
}

/// A policy like the example's, with this test's server, directory,
/// people, approval timeout and credential expiry.
fn write_policy(s: &Scratch, staging: &str, timeout: &str, expires: &str) -> (std::path::PathBuf, People) {
    let [alice, bob, carol, mallory] = std::array::from_fn(|_| user_token(s.path()));
    let (a, b, c, m) = (&alice.digest, &bob.digest, &carol.digest, &mallory.digest);
    let text = format!(
        "users:\n  alice: {{ token_sha256: {a} }}\n  bob: {{ token_sha256: {b} }}\n  carol: {{ token_sha256: {c} }}\n  mallory: {{ token_sha256: {m} }}\n\
         groups:\n  release-managers: [alice, bob, carol]\n\
         environments:\n\
         \x20 staging:\n    provider: {{ type: http, url: '{staging}', auth: bearer, credential: deploy-token }}\n\
         \x20   credentials: {{ deploy-token: {{ env: STAGING_DEPLOY_TOKEN, expires: '{expires}' }} }}\n\
         \x20   pipelines: [deploy]\n\
         \x20   approvals: {{ required: 1, groups: [release-managers], timeout: {timeout} }}\n\
         \x20 www:\n    provider: {{ type: directory, path: www, keep: 3 }}\n    pipelines: [deploy]\n"
    );
    let people = People { alice: alice.token, bob: bob.token, carol: carol.token, mallory: mallory.token };
    (s.file("policy.yaml", text), people)
}

/// `airlock run pipelines/deploy.yaml` as alice, with the canary in the
/// engine's environment, its stderr read line by line.
fn start_run(s: &Scratch, policy: &Path, alice: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = airlock(&s.state())
        .arg("--policy")
        .arg(policy)
        .arg("run")
        .arg(repo().join("pipelines/deploy.yaml"))
        .env("STAGING_DEPLOY_TOKEN", CANARY)
        .env("AIRLOCK_USER_TOKEN", alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("airlock run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads the run's output until the approval request's code.
fn code_of(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> String {
    loop {
        let line =
            lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no code in:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if let Some(rest) = line.split("one-time code ").nth(1) {
            return rest.trim().to_owned();
        }
    }
}

fn approve(s: &Scratch, token: &str, code: &str, extra: &[&str]) -> (i32, String) {
    let (exit, _, stderr) = output(
        airlock(&s.state())
            .args(["approve", "last", "staging", "--code", code])
            .args(extra)
            .env("AIRLOCK_USER_TOKEN", token),
    );
    (exit, stderr)
}

fn finish(mut child: Child, lines: mpsc::Receiver<String>, seen: &mut Vec<String>) -> (i32, String) {
    let status = child.wait().expect("wait");
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    seen.extend(lines.try_iter());
    std::thread::sleep(Duration::from_millis(50));
    seen.extend(lines.try_iter());
    (status.code().unwrap_or(-1), stdout)
}

fn contains(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_deploy_waits_for_approval_then_goes_to_http_and_a_directory() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let code = code_of(&lines, &mut seen);
    let request = seen.join("\n");
    assert!(request.contains("deploy to `staging` (http ") && request.contains("asked by alice"), "{request}");
    assert!(request.contains("site.tar.gz") && request.contains("sha256:"), "{request}");
    assert!(staging.all().is_empty(), "nothing is deployed before the approval");

    for (who, token, code, message) in [
        ("mallory", &people.mallory, code.as_str(), "`mallory` may not decide for environment `staging`"),
        ("alice", &people.alice, code.as_str(), "`alice` asked for this deployment"),
        ("bob", &people.bob, "WRONGCODE2", "not the code of this request"),
        ("nobody", &"alu_not-a-user".to_owned(), code.as_str(), "no user's in the engine's policy"),
    ] {
        let (exit, stderr) = approve(&s, token, code, &[]);
        assert_eq!(exit, 1, "{who}: {stderr}");
        assert!(stderr.contains(message), "{who}: {stderr}");
    }
    let (exit, stderr) = approve(&s, &people.bob, &code, &["--reason", "checked the digests"]);
    assert_eq!(exit, 0, "{stderr}");
    let (exit, stderr) = approve(&s, &people.carol, &code, &[]);
    assert_eq!(exit, 1, "a decided request takes no more decisions");
    assert!(stderr.contains("already approved; its code no longer works"), "{stderr}");

    let (exit, stdout) = finish(child, lines, &mut seen);
    assert_eq!(exit, 0, "{}", seen.join("\n"));

    // Staging got the approved archive, with the credential, once.
    let show = s.show();
    let pack = s.step("pack");
    let archive = pack["outputs"][0]["sha256"].as_str().expect("digest").to_owned();
    let received = staging.all();
    assert_eq!(received.len(), 1, "{received:?}");
    let (method, url, auth, body) = &received[0];
    assert_eq!((method.as_str(), url.as_str()), ("PUT", "/deploy/site.tar.gz"));
    assert_eq!(auth.as_deref(), Some(format!("Bearer {CANARY}").as_str()));
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body)), archive);
    // The directory got the rendered pages, behind `current`.
    let page = std::fs::read_to_string(s.path().join("www/current/html/index.html")).expect("deployed page");
    assert!(page.contains("<html"), "{page}");

    // The audit: who decided, on which digests.
    let approval = &show["approvals"][0];
    assert_eq!(
        (approval["state"].as_str(), approval["decisions"][0]["user"].as_str()),
        (Some("approved"), Some("bob"))
    );
    assert_eq!(approval["decisions"][0]["reason"], "checked the digests");
    assert_eq!(approval["artifacts"][0]["sha256"], archive.as_str());
    assert_eq!(approval["requester"], "alice");
    let (_, text, _) = output(airlock(&s.state()).args(["show", "last"]));
    assert!(text.contains("approved by bob at") && text.contains(&format!("sha256:{archive}  site.tar.gz")), "{text}");

    // The canary is nowhere else: not in what a step saw of its
    // environment, any log, the state, the artifacts, the deployed files
    // or anything printed.
    let (_, logs, _) = output(airlock(&s.state()).args(["logs", "last"]));
    assert!(logs.contains("env:") || logs.contains("args:"), "the audit-env step printed its environment: {logs}");
    assert!(!logs.contains("STAGING_DEPLOY_TOKEN") && !logs.contains(CANARY), "{logs}");
    for f in files_below(&s.state()).into_iter().chain(files_below(&s.path().join("www"))) {
        assert!(!contains(&std::fs::read(&f).expect("read"), CANARY), "the credential is in {}", f.display());
    }
    assert!(!stdout.contains(CANARY) && !seen.join("\n").contains(CANARY));
}

#[test]
fn a_denied_or_unanswered_deploy_deploys_nothing() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let code = code_of(&lines, &mut seen);
    let (exit, stderr) = approve(&s, &people.carol, &code, &["--deny", "--reason", "not on a Friday"]);
    assert_eq!(exit, 0, "{stderr}");
    let (exit, _) = finish(child, lines, &mut seen);
    assert_eq!(exit, 1);
    let step = s.step("staging");
    assert!(
        step["reason"]
            .as_str()
            .expect("reason")
            .contains("`carol` denied the deployment to `staging`: not on a Friday"),
        "{step}"
    );
    assert_eq!(s.step("www")["state"], "skipped");
    assert!(staging.all().is_empty() && !s.path().join("www").exists());

    let s = Scratch::new();
    let (policy, people) = write_policy(&s, &staging.url, "1s", "2099-01-01");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    code_of(&lines, &mut seen);
    let (exit, _) = finish(child, lines, &mut seen);
    assert_eq!(exit, 1);
    let reason = s.step("staging")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("no decision on the deployment to `staging` within 1s, which denies it"), "{reason}");
    assert_eq!(s.show()["approvals"][0]["state"], "timed_out");
    assert!(staging.all().is_empty());
}

#[test]
fn an_expired_credential_fails_the_deploy_before_anyone_is_asked() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2024-06-30");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let (exit, _) = finish(child, lines, &mut seen);
    assert_eq!(exit, 1, "{}", seen.join("\n"));
    assert!(!seen.join("\n").contains("one-time code"), "nobody was asked");
    let reason = s.step("staging")["reason"].as_str().expect("reason").to_owned();
    assert!(
        reason.contains("credential `deploy-token` of environment `staging` expired on 2024-06-30T00:00:00Z"),
        "{reason}"
    );
    assert!(staging.all().is_empty());
    assert!(s.show()["approvals"].as_array().is_some_and(Vec::is_empty));
}

#[test]
fn an_artifact_changed_after_approval_is_not_deployed() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let code = code_of(&lines, &mut seen);
    let digest = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("sha256:").filter(|r| r.ends_with("site.tar.gz")))
        .and_then(|r| r.split_whitespace().next())
        .expect("the archive's digest in the request")
        .to_owned();
    // Someone with access to the engine's disk swaps the approved bytes.
    let blob = s.state().join("artifacts/sha256").join(&digest[..2]).join(&digest[2..]);
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::write(&blob, b"not what was approved").expect("swap");
    let (exit, stderr) = approve(&s, &people.bob, &code, &[]);
    assert_eq!(exit, 0, "{stderr}");
    let (exit, _) = finish(child, lines, &mut seen);
    assert_eq!(exit, 1);
    let reason = s.step("staging")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("site.tar.gz") && reason.contains("is damaged on disk"), "{reason}");
    assert!(staging.all().is_empty(), "nothing reached staging");
}

#[test]
fn a_directory_environment_rolls_back_to_its_previous_release() {
    plugins();
    let s = Scratch::new();
    let policy = s.file(
        "policy.yaml",
        "environments:\n  www:\n    provider: { type: directory, path: www, keep: 2 }\n    pipelines: [site]\n  api:\n    provider: { type: command, argv: [/bin/true] }\n    pipelines: [site]\n",
    );
    s.file("src/index.md", "# First\n");
    s.pipeline(
        "name: site\nsources: { src: src }\nsteps:\n  render:\n    uses: {plugins}/wasm32-wasip2/release/markdown.wasm\n    inputs: [src]\n    with: { src: '${{ inputs.src }}' }\n    outputs: ['site/*.html']\n  ship:\n    needs: render\n    deploy: { environment: www, from: [render] }\n",
    );
    let run = || {
        let mut cmd = airlock(&s.state());
        cmd.arg("--policy").arg(&policy).arg("run").arg(s.path().join("pipeline.yaml"));
        output(&mut cmd)
    };
    let page = || std::fs::read_to_string(s.path().join("www/current/site/index.html")).expect("deployed page");
    let (code, _, stderr) = run();
    assert_eq!(code, 0, "{stderr}");
    assert!(page().contains("First"));
    s.file("src/index.md", "# Second\n");
    let (code, _, stderr) = run();
    assert_eq!(code, 0, "{stderr}");
    assert!(page().contains("Second"));

    let rollback = |env: &str| output(airlock(&s.state()).arg("--policy").arg(&policy).args(["env", "rollback", env]));
    let (code, _, stderr) = rollback("www");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("rolled `www` back"), "{stderr}");
    assert!(page().contains("First"));
    let (code, _, stderr) = rollback("www");
    assert_eq!(code, 1);
    assert!(stderr.contains("nothing to roll back to"), "{stderr}");
    let (code, _, stderr) = rollback("api");
    assert_eq!(code, 2);
    assert!(stderr.contains("only `directory` environments keep releases"), "{stderr}");
}

#[test]
fn cancelling_a_run_closes_its_approval_request() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let code = code_of(&lines, &mut seen);
    let kill = std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().expect("kill");
    assert!(kill.success());
    let (exit, _) = finish(child, lines, &mut seen);
    assert_eq!(exit, 130, "{}", seen.join("\n"));
    assert_eq!(s.show()["approvals"][0]["state"], "cancelled");
    let (exit, stderr) = approve(&s, &people.bob, &code, &["--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(exit, 1);
    assert!(stderr.contains("already cancelled; its code no longer works"), "{stderr}");
    assert!(staging.all().is_empty());
}

#[test]
fn a_pipeline_for_an_environment_gets_only_what_it_grants() {
    plugins();
    let s = Scratch::new();
    let policy = s.file(
        "policy.yaml",
        "environments:\n  ci:\n    provider: { type: command, argv: [/bin/true] }\n    pipelines: [site]\n    grants:\n      plugins: ['{plugins}/wasm32-wasip2/release/markdown.wasm']\n      limits: { fuel: 1000 }\n"
            .replace("{plugins}", &plugins().display().to_string()),
    );
    s.file("src/index.md", "# Page\n");
    let pipeline = |uses: &str| {
        s.pipeline(&format!(
            "name: site\nenvironment: ci\nsources: {{ src: src }}\nsteps:\n  render:\n    uses: {{plugins}}/wasm32-wasip2/release/{uses}\n    inputs: [src]\n    with: {{ src: '${{{{ inputs.src }}}}' }}\n    limits: {{ memory: 64MiB }}\n"
        ))
    };
    let run = |path: &Path| output(airlock(&s.state()).arg("--policy").arg(&policy).arg("run").arg(path));

    // A plugin the environment does not list does not run.
    let (code, _, stderr) = run(&pipeline("targz.wasm"));
    assert_eq!(code, 1, "{stderr}");
    let reason = s.step("render")["reason"].as_str().expect("reason").to_owned();
    assert!(
        reason.contains("plugin") && reason.contains("is not among the plugins environment `ci` allows"),
        "{reason}"
    );
    assert!(s.step("render")["plugin_sha256"].is_null(), "it was not even loaded");

    // One it lists runs, under the environment's fuel limit although the
    // pipeline set none.
    let (code, _, stderr) = run(&pipeline("markdown.wasm"));
    assert_eq!(code, 1, "{stderr}");
    let reason = s.step("render")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("used up its fuel of 1000 instructions"), "{reason}");

    // Without the policy the pipeline is not even valid.
    let (code, _, stderr) = output(airlock(&s.state()).arg("run").arg(s.path().join("pipeline.yaml")));
    assert_eq!(code, 1);
    assert!(stderr.contains("no admin policy was given"), "{stderr}");
}

#[test]
fn a_plugin_asks_for_a_deployment_only_where_it_is_granted() {
    plugins();
    let s = Scratch::new();
    let grants = |interfaces: &str| {
        s.file(
            "policy.yaml",
            format!(
                "environments:\n  ci:\n    provider: {{ type: command, argv: [/bin/true] }}\n    pipelines: [notes]\n    grants: {{ interfaces: [{interfaces}] }}\n  www:\n    provider: {{ type: directory, path: www }}\n    pipelines: [notes]\n"
            ),
        )
    };
    s.pipeline(
        "name: notes\nenvironment: ci\nsteps:\n  note:\n    uses: {plugins}/wasm32-wasip2/release/deploy_request.wasm\n    with: { environment: www, file: NOTES.txt, text: 'version 7' }\n    outputs: [NOTES.txt]\n",
    );
    let run = |policy: &Path| {
        output(airlock(&s.state()).arg("--policy").arg(policy).arg("run").arg(s.path().join("pipeline.yaml")))
    };

    // Granted: the step asks, the host deploys its output after it succeeds.
    let (code, _, stderr) = run(&grants("deploy"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(s.path().join("www/current/NOTES.txt")).expect("deployed"), "version 7");
    let step = s.step("note");
    assert_eq!(step["deployed"]["environment"], "www");
    assert_eq!(step["deployed"]["provider"], "directory");

    // Not granted: the plugin is refused before it runs, naming the grant.
    let (code, _, stderr) = run(&grants(""));
    assert_eq!(code, 1, "{stderr}");
    let reason = s.step("note")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("imports `airlock:step/deploy@0.1.0`, which this step is not granted"), "{reason}");
    assert!(reason.contains("whose `environment:` grants `deploy`"), "{reason}");
    assert!(s.step("note")["plugin_sha256"].is_null(), "it never ran");
}

#[test]
fn an_anonymous_run_cannot_ask_for_an_approval_its_starter_might_give() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, _people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (code, _, stderr) = output(
        airlock(&s.state())
            .arg("--policy")
            .arg(&policy)
            .arg("run")
            .arg(repo().join("pipelines/deploy.yaml"))
            .env("STAGING_DEPLOY_TOKEN", CANARY)
            .env_remove("AIRLOCK_USER_TOKEN"),
    );
    assert_eq!(code, 1, "{stderr}");
    let reason = s.step("staging")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.contains("the run must say who started it: set AIRLOCK_USER_TOKEN"), "{reason}");
    assert!(staging.all().is_empty());
}

#[test]
fn a_run_whose_engine_was_killed_is_ended_failed_by_the_next_engine() {
    plugins();
    let s = Scratch::new();
    let staging = Staging::start();
    let (policy, people) = write_policy(&s, &staging.url, "5m", "2099-01-01");
    let (mut child, lines) = start_run(&s, &policy, &people.alice);
    let mut seen = Vec::new();
    let code = code_of(&lines, &mut seen);
    // The state is the running engine's; its first line names the run.
    let id = seen[0].strip_prefix("run ").and_then(|r| r.split(':').next()).expect("run id").to_owned();
    let (exit, _, stderr) = output(airlock(&s.state()).args(["show", "last"]));
    assert_eq!(exit, 3);
    assert!(stderr.contains("hint: another airlock process is using this state directory"), "{stderr}");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(s.show()["run"]["state"], "running", "nobody has looked yet");

    // The next engine on the state directory ends it, with a reason.
    s.pipeline("name: other\nsteps:\n  nothing:\n    uses: {plugins}/wasm32-wasip2/release/noop.wasm\n");
    let (exit, _, stderr) = s.run(&[]);
    assert_eq!(exit, 0, "{stderr}");
    let (_, json, _) = output(airlock(&s.state()).args(["show", &id, "--json"]));
    let old: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(old["run"]["state"], "failed");
    assert!(old["run"]["reason"].as_str().expect("reason").contains("the engine running it stopped"), "{old}");
    let staging_step =
        old["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "staging").expect("staging");
    assert_eq!(staging_step["state"], "failed");
    let www = old["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "www").expect("www");
    assert_eq!(www["state"], "cancelled");
    assert_eq!(old["approvals"][0]["state"], "cancelled");
    let (exit, stderr) = approve(&s, &people.bob, &code, &["--policy", policy.to_str().expect("utf-8")]);
    assert_eq!(exit, 1, "the request is closed: {stderr}");
    assert!(staging.all().is_empty());
}
