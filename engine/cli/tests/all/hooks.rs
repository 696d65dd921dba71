//! Webhook intake of `airlock serve`: GitHub's own example payloads,
//! signed as GitHub signs them, and what an attacker would send instead.

use crate::support::{Scratch, Server, http, repo};

const SECRET: &str = "canary-webhook-secret-8d2e";

fn sign(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// The first example of `event` in `@octokit/webhooks-examples` that
/// `pick` accepts.
fn example(event: &str, pick: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let index = repo().join("target/tools/octokit/node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let text = std::fs::read(&index).unwrap_or_else(|e| panic!("{}: {e}; run `bash .ci/test-setup`", index.display()));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&text).expect("JSON");
    let found = all.into_iter().find(|e| e["name"] == event).expect("event");
    found["examples"].as_array().expect("examples").iter().find(|e| pick(e)).expect("an example").clone()
}

/// Delivers `body` as GitHub would; answers status and body.
fn deliver(url: &str, event: &str, id: &str, body: &[u8], signature: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = ureq::http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id);
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let resp = http().run(req.body(body.to_vec()).expect("request")).expect("deliver");
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn start(scratch: &Scratch) -> Server {
    let policy = scratch.file(
        "policy.yaml",
        "repositories:\n  hello:\n    forge: github\n    url: http://127.0.0.1:9/Codertocat/Hello-World.git\n    \
         webhook_secret: { env: HELLO_WEBHOOK_SECRET }\n    trusted: { branches: [master] }\n",
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    Server::start(&scratch.state(), &policy, &pipelines, &[("HELLO_WEBHOOK_SECRET", SECRET)])
}

#[test]
fn a_signed_delivery_is_recorded_once_and_a_bad_one_not_at_all() {
    let scratch = Scratch::new();
    let mut server = start(&scratch);
    let url = format!("{}/hooks/hello", server.url);
    let push = serde_json::to_vec(&example("push", |e| e["ref"] == "refs/heads/master")).expect("JSON");

    // Refused before anything is recorded: no signature, a wrong one, a
    // signature of another body.
    let other = sign(b"{}");
    for signature in [None, Some("sha256=00"), Some(other.as_str())] {
        let (status, answer) = deliver(&url, "push", "delivery-1", &push, signature);
        assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("bad_signature")), "{answer}");
    }
    // So the same delivery id, signed, is new.
    let (status, answer) = deliver(&url, "push", "delivery-1", &push, Some(&sign(&push)));
    assert_eq!(status, 202, "{answer}");
    assert_eq!((answer["state"].as_str(), answer["duplicate"].as_bool()), (Some("received"), Some(false)));
    // A replay (or the forge's retry) is a duplicate.
    let (status, answer) = deliver(&url, "push", "delivery-1", &push, Some(&sign(&push)));
    assert_eq!((status, answer["duplicate"].as_bool()), (202, Some(true)), "{answer}");

    // An event airlock does not run on is acknowledged, and ignored.
    let ping = serde_json::to_vec(&example("ping", |_| true)).expect("JSON");
    let (status, answer) = deliver(&url, "ping", "delivery-2", &ping, Some(&sign(&ping)));
    assert_eq!((status, answer["state"].as_str()), (202, Some("ignored")), "{answer}");
    // A deleted branch starts nothing either.
    let deleted = serde_json::to_vec(&example("push", |e| e["deleted"] == true)).expect("JSON");
    let (_, answer) = deliver(&url, "push", "delivery-3", &deleted, Some(&sign(&deleted)));
    assert_eq!(answer["state"].as_str(), Some("ignored"), "{answer}");

    // Signed, but with a ref git would refuse: a clear 400.
    let mut bad = example("push", |e| e["ref"] == "refs/heads/master");
    bad["ref"] = "refs/heads/../../etc\u{1b}[2J".into();
    let bad = serde_json::to_vec(&bad).expect("JSON");
    let (status, answer) = deliver(&url, "push", "delivery-4", &bad, Some(&sign(&bad)));
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("bad_delivery")), "{answer}");

    // 25 MiB is refused from its declared length, before a byte of it
    // is sent.
    {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        let head = format!(
            "POST /hooks/hello HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: delivery-5\r\n\
             X-Hub-Signature-256: sha256=00\r\nContent-Length: {}\r\n\r\n",
            25 << 20
        );
        stream.write_all(head.as_bytes()).expect("send");
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).expect("answer");
        assert_eq!(&answer, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&answer));
    }
    // Another repository, or a GET: not taken.
    let (status, _) = deliver(&format!("{}/hooks/nope", server.url), "push", "d", &push, Some(&sign(&push)));
    assert_eq!(status, 404);
    let resp = http().get(&url).call().expect("get");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));

    // The server is still fine, and what it recorded survives it.
    server.stop();
    let store = airlock_store::Store::open(&scratch.state()).expect("store");
    // The push was taken (no git server is at its URL, so the intake
    // may already have failed to fetch it).
    let recorded: Vec<(String, String)> = store
        .deliveries()
        .expect("deliveries")
        .into_iter()
        .map(|d| (d.id, d.state.as_str().replace("failed", "received")))
        .collect();
    assert_eq!(
        recorded,
        [
            ("delivery-1".to_owned(), "received".to_owned()),
            ("delivery-2".to_owned(), "ignored".to_owned()),
            ("delivery-3".to_owned(), "ignored".to_owned()),
        ]
    );
    // The secret is in nothing the server wrote.
    for file in crate::support::files_below(&scratch.state()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(memchr::memmem::find(&bytes, SECRET.as_bytes()).is_none(), "{} holds the secret", file.display());
    }
}

/// A forge's commit-status API on loopback: records each request, and
/// answers the first one 502 so the server has to try again.
struct StatusApi {
    url: String,
    received: std::sync::mpsc::Receiver<(String, Option<String>, serde_json::Value)>,
}

impl StatusApi {
    fn start() -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let (tx, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, mut req) in server.incoming_requests().enumerate() {
                let auth = req.headers().iter().find(|h| h.field.equiv("authorization")).map(|h| h.value.to_string());
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
                let code = if n == 0 { 502 } else { 201 };
                let _ = tx.send((format!("{} {}", req.method(), req.url()), auth, body));
                let _ = req.respond(tiny_http::Response::from_string("{}").with_status_code(code));
            }
        });
        Self { url, received }
    }

    /// The statuses received for `commit` until one is final.
    fn until_final(&self, commit: &str) -> Vec<(String, Option<String>, serde_json::Value)> {
        let mut got = Vec::new();
        loop {
            let r = self.received.recv_timeout(std::time::Duration::from_secs(60)).expect("a commit status");
            let done = r.0.ends_with(commit) && r.2["state"] != "pending";
            got.push(r);
            if done {
                return got;
            }
        }
    }
}

/// Checks a commit status sent to the loopback GitHub against GitHub's
/// own REST description (the npm package `@octokit/openapi`): the call
/// must be one it lists, answered 201 as the loopback answers it, with
/// a body its schema takes. The schema allows fields GitHub ignores;
/// here none are allowed, so a misspelt field fails too.
struct GithubStatuses {
    path: String,
    body: jsonschema::Validator,
}

impl GithubStatuses {
    fn load() -> Self {
        let file = repo().join("target/tools/octokit/node_modules/@octokit/openapi/generated/api.github.com.json");
        let text =
            std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}; run `bash .ci/test-setup`", file.display()));
        let doc: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
        let path = "/repos/{owner}/{repo}/statuses/{sha}";
        let call = &doc["paths"][path]["post"];
        assert!(call["responses"]["201"].is_object(), "GitHub answers a new status 201: {}", call["responses"]);
        let mut schema = call["requestBody"]["content"]["application/json"]["schema"].clone();
        assert!(schema["properties"]["state"]["enum"].is_array(), "the description has the body's shape: {schema}");
        schema["additionalProperties"] = false.into();
        Self { path: path.to_owned(), body: jsonschema::validator_for(&schema).expect("a schema") }
    }

    /// Whether `line` and `body` are a call GitHub takes; if not, why.
    fn check(&self, line: &str, body: &serde_json::Value) -> Result<(), String> {
        let rest = line.strip_prefix("POST ").ok_or_else(|| format!("`{line}` is not a POST"))?;
        let shape: Vec<&str> = self.path.split('/').collect();
        let parts: Vec<&str> = rest.split('/').collect();
        let fits = shape.len() == parts.len()
            && shape.iter().zip(&parts).all(|(s, p)| if s.starts_with('{') { !p.is_empty() } else { s == p });
        if !fits {
            return Err(format!("`{rest}` is not `{}`", self.path));
        }
        let errors: Vec<String> = self.body.iter_errors(body).map(|e| e.to_string()).collect();
        if errors.is_empty() { Ok(()) } else { Err(format!("GitHub's description refuses {body}: {errors:?}")) }
    }
}

/// An empty bare repository `served/blinky.git` for the git server, and
/// a work tree `work` to commit from, with the tick plugin at
/// `tools/tick.wasm`: answers both directories.
fn blinky(scratch: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    use airlock_bench::git_http::git;
    let (served, work) = (scratch.path().join("served"), scratch.path().join("work"));
    std::fs::create_dir_all(work.join("tools")).expect("mkdir");
    git(scratch.path(), &["init", "--quiet", "--bare", "--initial-branch=main", "served/blinky.git"]).expect("git");
    git(&work, &["init", "--quiet", "--initial-branch=main"]).expect("git");
    std::fs::copy(crate::server::tick(), work.join("tools/tick.wasm")).expect("plugin");
    (served, work)
}

/// A loopback web server with the tick plugin at `/allowed/tick.wasm`
/// that records every path asked for.
fn tool_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let tick = std::fs::read(crate::server::tick()).expect("plugin");
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            seen.lock().expect("lock").push(req.url().to_owned());
            let answer = if req.url() == "/allowed/tick.wasm" {
                tiny_http::Response::from_data(tick.clone())
            } else {
                tiny_http::Response::from_data(b"instance secrets".to_vec())
            };
            let _ = req.respond(answer);
        }
    });
    (url, asked)
}

/// Polls the run API until a run of `commit` has ended.
fn run_of(server: &Server, token: &str, commit: &str) -> serde_json::Value {
    run_of_file(server, token, commit, None)
}

/// Polls the run API until a run of `commit` (of the pipeline `file`,
/// when given) has ended.
fn run_of_file(server: &Server, token: &str, commit: &str, file: Option<&str>) -> serde_json::Value {
    let (agent, url) = (http(), server.url.as_str());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, list) =
            crate::support::call(&agent, "GET", &format!("{url}/api/v1/runs"), Some(token), None, &[]).expect("runs");
        let found = list["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .find(|r| r["origin"]["commit"] == commit && file.is_none_or(|f| r["file"] == f))
            .cloned();
        if let Some(run) = found {
            let id = run["id"].as_str().expect("id");
            return crate::support::wait_for_end(&agent, url, token, id);
        }
        if std::time::Instant::now() > deadline {
            let said: Vec<String> = server.stderr.try_iter().collect();
            panic!("no run of {commit}: {list}\nthe server said:\n{}", said.join("\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_push_runs_its_exact_commit_and_a_forks_pull_request_may_not_deploy() {
    use airlock_bench::git_http::{GitServer, git};
    const TOKEN: &str = "canary-forge-token-41c7a0";
    let scratch = Scratch::new();
    let (served, work) = blinky(&scratch);
    // The step writes `out.txt`; `ship` deploys it, as only a trusted
    // run may.
    let pipeline = "name: ci\non:\n  push: { branches: [main] }\n  pull_request: {}\nsteps:\n  \
                    a:\n    uses: tools/tick.wasm\n    args: [\"1\", \"1\", out.txt]\n    outputs: [out.txt]\n  \
                    ship:\n    needs: [a]\n    deploy: { environment: www, from: [a] }\n";
    scratch.file("work/.airlock/ci.yaml", pipeline);
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-m", "first"]).expect("git");
    let first = git(&work, &["rev-parse", "HEAD"]).expect("git");
    // The branch moves on to a commit whose pipeline is broken: the
    // delivery of the first commit must still run the first commit's.
    scratch.file("work/.airlock/ci.yaml", pipeline.replace("steps:", "stepz:"));
    scratch.file("work/.airlock/latin1.yaml", b"name: caf\xe9\n");
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-am", "second"]).expect("git");
    let second = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["push", "--quiet", &served.join("blinky.git").display().to_string(), "main"]).expect("git");
    // A fork's commit, under the pull request's ref, as GitHub keeps it.
    // Besides its `ci`, it has a pipeline whose tool comes from a place
    // the policy lists, and one that would make the server fetch from a
    // service inside its network.
    let (tools_url, fetched) = tool_server();
    scratch.file("work/.airlock/ci.yaml", pipeline);
    git(&work, &["rm", "--quiet", ".airlock/latin1.yaml"]).expect("git");
    let tick = std::fs::read(crate::server::tick()).expect("plugin");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tick));
    let step = "steps:\n  a:\n    uses: tool:t\n    args: [\"1\", \"1\"]\n";
    scratch.file(
        "work/.airlock/tools.yaml",
        format!("name: tools\non: pull_request\ntools:\n  t: {{ url: {tools_url}/allowed/tick.wasm, sha256: {digest} }}\n{step}"),
    );
    scratch.file(
        "work/.airlock/probe.yaml",
        format!(
            "name: probe\non: pull_request\ntools:\n  t: {{ url: {tools_url}/internal/meta-data, sha256: {} }}\n{step}",
            "0".repeat(64)
        ),
    );
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-am", "from a fork"]).expect("git");
    let forked = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["push", "--quiet", &served.join("blinky.git").display().to_string(), "HEAD:refs/pull/7/head"])
        .expect("git");
    let forge = GitServer::start(&served, "x-access-token", TOKEN).expect("git server");
    let statuses = StatusApi::start();

    let viewer = crate::support::user_token(scratch.path());
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  vic: {{ token_sha256: {}, roles: [viewer] }}\n\
             environments:\n  www:\n    provider: {{ type: directory, path: www }}\n    pipelines: [ci]\n\
             repositories:\n  blinky:\n    forge: github\n    url: {}/blinky.git\n    api: {}\n    \
             project: team/blinky\n    webhook_secret: {{ env: HELLO_WEBHOOK_SECRET }}\n    \
             token: {{ env: BLINKY_TOKEN }}\n    trusted: {{ branches: [main] }}\n    pull_requests: forks\n    \
             tool_sources: ['{tools_url}/allowed/']\n",
            viewer.digest, forge.url, statuses.url
        ),
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let mut server = Server::start(
        &scratch.state(),
        &policy,
        &pipelines,
        &[("HELLO_WEBHOOK_SECRET", SECRET), ("BLINKY_TOKEN", TOKEN)],
    );
    let hook = format!("{}/hooks/blinky", server.url);

    // A push of the first commit (the branch has moved on since).
    let mut push = example("push", |e| e["ref"] == "refs/heads/master");
    push["ref"] = "refs/heads/main".into();
    push["after"] = first.as_str().into();
    push["before"] = "0".repeat(40).into();
    let body = serde_json::to_vec(&push).expect("JSON");
    let started = std::time::Instant::now();
    let (status, answer) = deliver(&hook, "push", "push-1", &body, Some(&sign(&body)));
    assert_eq!(status, 202, "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "the forge waited {:?}", started.elapsed());
    let run = run_of(&server, &viewer.token, &first);
    assert_eq!(run["run"]["state"], "succeeded", "{run}");
    let origin = &run["run"]["origin"];
    assert_eq!((origin["repository"].as_str(), origin["event"].as_str()), (Some("blinky"), Some("push")), "{run}");
    assert_eq!((origin["ref"].as_str(), origin["untrusted"].as_str()), (Some("refs/heads/main"), None), "{run}");
    assert_eq!(run["run"]["file"], ".airlock/ci.yaml");
    let shipped = crate::support::files_below(&scratch.path().join("www"));
    assert!(shipped.iter().any(|f| f.ends_with("out.txt")), "a trusted push deploys: {shipped:?}");
    // Pending, refused once by the forge and sent again, then success;
    // each as GitHub's statuses API takes it.
    let got = statuses.until_final(&first);
    let states: Vec<&str> = got.iter().map(|(_, _, b)| b["state"].as_str().expect("state")).collect();
    // (A `pending` still being retried when the run ends is dropped.)
    assert!(states.len() >= 2 && states[0] == "pending" && states.last() == Some(&"success"), "{got:?}");
    let id = run["run"]["id"].as_str().expect("id");
    let github = GithubStatuses::load();
    // The check bites: a state GitHub does not have, a misspelt field.
    let line = format!("POST /repos/team/blinky/statuses/{first}");
    for wrong in [serde_json::json!({ "state": "done" }), serde_json::json!({ "state": "success", "targetUrl": "x" })] {
        assert!(github.check(&line, &wrong).is_err(), "{wrong} passed");
    }
    assert!(github.check("POST /repos/team/statuses/x", &serde_json::json!({ "state": "success" })).is_err());
    for (line, auth, body) in &got {
        github.check(line, body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line, &format!("POST /repos/team/blinky/statuses/{first}"));
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(body["context"], "airlock/ci");
        assert!(body["target_url"].as_str().expect("link").ends_with(&format!("/ui/runs/{id}")), "{body}");
        assert!(body["description"].as_str().expect("description").len() <= 140, "{body}");
    }
    let detail = {
        let agent = http();
        let url = format!("{}/api/v1/runs/{id}", server.url);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, d) = crate::support::call(&agent, "GET", &url, Some(&viewer.token), None, &[]).expect("run");
            if d["forge_status"]["state"] == "success" || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert_eq!(detail["forge_status"]["delivered"], true, "{detail}");

    // The tip's pipeline is broken: the run fails with its diagnostics,
    // and the forge is told so.
    push["after"] = second.as_str().into();
    push["before"] = first.as_str().into();
    let body = serde_json::to_vec(&push).expect("JSON");
    assert_eq!(deliver(&hook, "push", "push-2", &body, Some(&sign(&body))).0, 202);
    let broken = run_of_file(&server, &viewer.token, &second, Some(".airlock/ci.yaml"));
    assert_eq!(broken["run"]["state"], "failed", "{broken}");
    let reason = broken["run"]["reason"].as_str().expect("reason");
    assert!(reason.contains("not valid at this commit") && reason.contains("stepz"), "{reason}");
    let latin1 = run_of_file(&server, &viewer.token, &second, Some(".airlock/latin1.yaml"));
    let reason = latin1["run"]["reason"].as_str().expect("reason");
    assert!(reason.contains("cannot be read at this commit: it is not UTF-8 text"), "{reason}");
    let got = statuses.until_final(&second);
    assert_eq!(got.last().expect("status").2["state"], "failure", "{got:?}");

    // A pull request from a fork: its plugin step runs, its deploy step
    // is refused and deploys nothing.
    let mut pr = example("pull_request", |e| e["action"] == "opened");
    pr["number"] = 7.into();
    pr["pull_request"]["number"] = 7.into();
    pr["pull_request"]["head"]["sha"] = forked.as_str().into();
    pr["pull_request"]["head"]["ref"] = "patch-1".into();
    pr["pull_request"]["head"]["repo"]["full_name"] = "mallory/blinky".into();
    pr["pull_request"]["base"]["repo"]["full_name"] = "team/blinky".into();
    pr["pull_request"]["base"]["ref"] = "main".into();
    pr["pull_request"]["base"]["sha"] = first.as_str().into();
    let body = serde_json::to_vec(&pr).expect("JSON");
    let before = crate::support::files_below(&scratch.path().join("www")).len();
    assert_eq!(deliver(&hook, "pull_request", "pr-1", &body, Some(&sign(&body))).0, 202);
    let run = run_of_file(&server, &viewer.token, &forked, Some(".airlock/ci.yaml"));
    assert_eq!(run["run"]["state"], "failed", "{run}");
    assert_eq!(run["run"]["origin"]["pull_request"], 7);
    assert!(run["run"]["origin"]["untrusted"].as_str().expect("untrusted").contains("fork"), "{run}");
    let steps = run["steps"].as_array().expect("steps");
    let step = |name: &str| steps.iter().find(|s| s["name"] == name).expect("step").clone();
    assert_eq!(step("a")["state"], "succeeded", "{run}");
    let ship = step("ship");
    assert_eq!(ship["state"], "failed", "{run}");
    assert!(ship["reason"].as_str().expect("reason").contains("untrusted"), "{ship}");
    assert_eq!(crate::support::files_below(&scratch.path().join("www")).len(), before, "a fork deployed");
    // A tool from a source the policy lists is fetched and runs; one
    // from anywhere else fails the run before the host fetches a byte.
    let tools = run_of_file(&server, &viewer.token, &forked, Some(".airlock/tools.yaml"));
    assert_eq!(tools["run"]["state"], "succeeded", "{tools}");
    let probe = run_of_file(&server, &viewer.token, &forked, Some(".airlock/probe.yaml"));
    assert_eq!(probe["run"]["state"], "failed", "{probe}");
    let reason = probe["run"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("tool `t` comes from") && reason.contains("`tool_sources` of repository `blinky`"),
        "{reason}"
    );
    assert_eq!(*fetched.lock().expect("lock"), ["/allowed/tick.wasm"], "the server fetched only the listed tool");

    // A push whose commit a force push removed before the fetch: the
    // delivery fails, saying so, and starts nothing.
    push["after"] = "0123456789abcdef0123456789abcdef01234567".into();
    push["before"] = second.as_str().into();
    let body = serde_json::to_vec(&push).expect("JSON");
    assert_eq!(deliver(&hook, "push", "push-gone", &body, Some(&sign(&body))).0, 202);
    let agent = http();
    let url = format!("{}/api/v1/repositories/blinky/deliveries/push-gone", server.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let gone = loop {
        let (_, d) = crate::support::call(&agent, "GET", &url, Some(&viewer.token), None, &[]).expect("delivery");
        if d["state"] != "received" || std::time::Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!((gone["state"].as_str(), gone["runs"].as_array().map(Vec::len)), (Some("failed"), Some(0)), "{gone}");
    assert!(gone["detail"].as_str().expect("detail").contains("removed (a force push?)"), "{gone}");

    // Neither secret is in anything the server wrote.
    server.stop();
    for file in crate::support::files_below(&scratch.state()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for canary in [SECRET, TOKEN] {
            assert!(memchr::memmem::find(&bytes, canary.as_bytes()).is_none(), "{} holds {canary}", file.display());
        }
    }
}

/// `airlock trigger`, as one user would use it; answers exit code,
/// stdout and stderr.
fn trigger(scratch: &Scratch, server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    as_user(scratch, server, token, &["trigger"], args)
}

/// `airlock COMMAND --server URL ARGS` as the user of `token`.
fn as_user(scratch: &Scratch, server: &Server, token: &str, command: &[&str], args: &[&str]) -> (i32, String, String) {
    crate::support::output(
        crate::support::airlock(&scratch.path().join("client"))
            .env("AIRLOCK_USER_TOKEN", token)
            .args(command)
            .args(["--server", &server.url])
            .args(args),
    )
}

#[test]
fn people_run_by_hand_what_a_ref_holds_and_let_first_time_contributors_in() {
    use airlock_bench::git_http::{GitServer, git};
    const TOKEN: &str = "canary-forge-token-5e0b11";
    let scratch = Scratch::new();
    let (served, work) = blinky(&scratch);
    let step = "steps:\n  a:\n    uses: tools/tick.wasm\n    args: [\"1\", \"1\"]\n";
    scratch.file("work/.airlock/ci.yaml", format!("name: ci\non:\n  push: {{}}\n{step}"));
    scratch.file("work/.airlock/nightly.yaml", format!("name: nightly\non:\n  manual: {{}}\n{step}"));
    scratch.file("work/.airlock/review.yaml", format!("name: review\non:\n  pull_request: {{}}\n{step}"));
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-m", "first"]).expect("git");
    let tagged = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["tag", "-a", "-m", "one", "v1"]).expect("git");
    scratch.file("work/notes.txt", "more");
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-m", "second"]).expect("git");
    let tip = git(&work, &["rev-parse", "HEAD"]).expect("git");
    let bare = served.join("blinky.git").display().to_string();
    git(&work, &["push", "--quiet", "--tags", &bare, "main"]).expect("git");
    // A newcomer's pull request, under the ref GitHub keeps it at.
    scratch.file("work/notes.txt", "a first contribution");
    git(&work, &["commit", "--quiet", "-am", "from a newcomer"]).expect("git");
    let newcomer = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["push", "--quiet", &bare, "HEAD:refs/pull/9/head"]).expect("git");
    let forge = GitServer::start(&served, "x-access-token", TOKEN).expect("git server");
    let statuses = StatusApi::start();

    let (rita, vic) = (crate::support::user_token(scratch.path()), crate::support::user_token(scratch.path()));
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  rita: {{ token_sha256: {}, roles: [runner] }}\n  vic: {{ token_sha256: {}, roles: [viewer] }}\n\
             repositories:\n  blinky:\n    forge: github\n    url: {}/blinky.git\n    api: {}\n    \
             project: team/blinky\n    webhook_secret: {{ env: HELLO_WEBHOOK_SECRET }}\n    \
             token: {{ env: BLINKY_TOKEN }}\n    trusted: {{ branches: [main] }}\n    pull_requests: forks\n    \
             first_time_contributors: approve\n",
            rita.digest, vic.digest, forge.url, statuses.url
        ),
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let mut server = Server::start(
        &scratch.state(),
        &policy,
        &pipelines,
        &[("HELLO_WEBHOOK_SECRET", SECRET), ("BLINKY_TOKEN", TOKEN)],
    );

    // The branch: only the pipeline whose `on:` has `manual` runs, at
    // the commit main holds now, trusted, as rita's.
    let (code, stdout, stderr) = trigger(&scratch, &server, &rita.token, &["blinky", "main", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let delivery: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!((delivery["state"].as_str(), delivery["event"].as_str()), (Some("started"), Some("manual")));
    assert_eq!((delivery["ref"].as_str(), delivery["sender"].as_str()), (Some("refs/heads/main"), Some("rita")));
    let runs = delivery["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{delivery}");
    let agent = http();
    let run = crate::support::wait_for_end(&agent, &server.url, &vic.token, runs[0].as_str().expect("id"));
    assert_eq!(run["run"]["state"], "succeeded", "{run}");
    assert_eq!(run["run"]["file"], ".airlock/nightly.yaml");
    assert_eq!(run["run"]["requester"], "rita");
    let origin = &run["run"]["origin"];
    assert_eq!((origin["event"].as_str(), origin["commit"].as_str()), (Some("manual"), Some(tip.as_str())), "{run}");
    assert!(origin["untrusted"].is_null(), "{run}");
    let told = statuses.until_final(&tip);
    assert_eq!(told.last().expect("a status").2["state"], "success", "{told:?}");

    // An annotated tag runs the commit it names, untrusted: the policy
    // trusts no tags.
    let (code, stdout, stderr) = trigger(&scratch, &server, &rita.token, &["blinky", "refs/tags/v1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let delivery: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let id = delivery["runs"][0].as_str().expect("a run");
    let run = crate::support::wait_for_end(&agent, &server.url, &vic.token, id);
    assert_eq!(run["run"]["origin"]["commit"], tagged.as_str(), "{run}");
    assert!(run["run"]["origin"]["untrusted"].as_str().expect("untrusted").contains("tag `v1`"), "{run}");

    // What goes wrong is said, with an exit code that means it.
    let (code, _, stderr) = trigger(&scratch, &server, &vic.token, &["blinky", "main"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs the `runner` role"), "{stderr}");
    let (code, _, stderr) = trigger(&scratch, &server, &rita.token, &["blinky", "nope"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("delivery manual-") && stderr.contains("failed") && stderr.contains("has no `refs/heads/nope`")
    );
    for bad in ["a..b", "refs/remotes/origin/main", "-x", "main\u{7}"] {
        let (code, _, stderr) = trigger(&scratch, &server, &rita.token, &["blinky", "--", bad]);
        assert_eq!(code, 1, "{bad}: {stderr}");
        assert!(stderr.contains("(bad_ref)"), "{bad}: {stderr}");
    }
    let (code, _, stderr) = trigger(&scratch, &server, &rita.token, &["nothing", "main"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no repository `nothing`"), "{stderr}");

    // The same idempotency key answers the same delivery, and starts nothing new.
    let url = format!("{}/api/v1/repositories/blinky/runs", server.url);
    let ask = || {
        let body = Some(serde_json::json!({ "ref": "main" }));
        crate::support::call(&agent, "POST", &url, Some(&rita.token), body, &[("idempotency-key", "k-1")])
            .expect("call")
    };
    let (first, second) = (ask(), ask());
    assert_eq!((first.0, second.0), (202, 202));
    assert_eq!(first.1["delivery"]["id"], second.1["delivery"]["id"]);
    assert_eq!((first.1["duplicate"].as_bool(), second.1["duplicate"].as_bool()), (Some(false), Some(true)));

    // A first-time contributor's pull request waits, runs nothing, and
    // is listed as waiting until a runner lets it in.
    let mut pr = example("pull_request", |e| e["action"] == "opened");
    pr["number"] = 9.into();
    pr["pull_request"]["number"] = 9.into();
    pr["pull_request"]["head"]["sha"] = newcomer.as_str().into();
    pr["pull_request"]["head"]["ref"] = "patch-1".into();
    pr["pull_request"]["head"]["repo"]["full_name"] = "newcomer/blinky".into();
    pr["pull_request"]["base"]["repo"]["full_name"] = "team/blinky".into();
    pr["pull_request"]["base"]["ref"] = "main".into();
    pr["pull_request"]["author_association"] = "FIRST_TIME_CONTRIBUTOR".into();
    let body = serde_json::to_vec(&pr).expect("JSON");
    let hook = format!("{}/hooks/blinky", server.url);
    assert_eq!(deliver(&hook, "pull_request", "pr-9", &body, Some(&sign(&body))).0, 202);
    let waiting = |state: &str| {
        let (code, stdout, stderr) =
            as_user(&scratch, &server, &vic.token, &["deliveries", "list"], &["blinky", "--state", state, "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let held = loop {
        let held = waiting("waiting");
        if held.as_array().is_some_and(|h| !h.is_empty()) || std::time::Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!((held[0]["id"].as_str(), held[0]["runs"].as_array().map(Vec::len)), (Some("pr-9"), Some(0)), "{held}");
    assert!(held[0]["detail"].as_str().expect("why").contains("first of `Codertocat`"), "{held}");
    let (approve, pr9) = (["deliveries", "approve"], ["blinky", "pr-9", "--json"]);
    let (code, _, stderr) = as_user(&scratch, &server, &vic.token, &approve, &pr9);
    assert_eq!(code, 2, "a viewer may not let it in: {stderr}");
    let (code, stdout, stderr) = as_user(&scratch, &server, &rita.token, &approve, &pr9);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON")["approved_by"], "rita");
    let run = run_of(&server, &vic.token, &newcomer);
    assert_eq!(
        (run["run"]["file"].as_str(), run["run"]["state"].as_str()),
        (Some(".airlock/review.yaml"), Some("succeeded"))
    );
    assert!(run["run"]["origin"]["untrusted"].as_str().expect("untrusted").contains("fork"), "{run}");
    let (code, _, stderr) = as_user(&scratch, &server, &rita.token, &approve, &pr9);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is started, not waiting for approval") && stderr.contains("(not_waiting)"), "{stderr}");
    assert_eq!(waiting("waiting"), serde_json::json!([]));

    server.stop();
    for file in crate::support::files_below(&scratch.state()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(memchr::memmem::find(&bytes, TOKEN.as_bytes()).is_none(), "{} holds the token", file.display());
    }
}

/// A server killed (SIGKILL) at random moments while pushes arrive: a
/// delivery the forge got its 202 for is never lost, one whose answer
/// was lost is sent again (as forges do) and counts once, a replay
/// starts nothing, and in the end each delivery started exactly one run
/// of each pipeline, of its own commit. `AIRLOCK_CRASH_SEED=N` repeats
/// the kill times.
#[test]
fn deliveries_survive_sigkills_between_the_answer_and_their_runs() {
    use airlock_bench::git_http::{GitServer, git};
    use rand::{Rng, SeedableRng};
    const PUSHES: usize = 8;
    const KILLS: usize = 10;
    let seed = std::env::var("AIRLOCK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash seed: {seed} (AIRLOCK_CRASH_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scratch = Scratch::new();
    let (served, work) = blinky(&scratch);
    for name in ["build", "lint"] {
        scratch.file(
            &format!("work/.airlock/{name}.yaml"),
            format!("name: {name}\non: push\nsteps:\n  a:\n    uses: tools/tick.wasm\n    args: [\"2\", \"20\"]\n"),
        );
    }
    let mut commits = Vec::new();
    for i in 0..PUSHES {
        scratch.file("work/n.txt", i.to_string());
        git(&work, &["add", "-A"]).expect("git");
        git(&work, &["commit", "--quiet", "-m", &format!("commit {i}")]).expect("git");
        commits.push(git(&work, &["rev-parse", "HEAD"]).expect("git"));
    }
    git(&work, &["push", "--quiet", &served.join("blinky.git").display().to_string(), "main"]).expect("git");
    let forge = GitServer::start(&served, "x-access-token", "t").expect("git server");
    let viewer = crate::support::user_token(scratch.path());
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  vic: {{ token_sha256: {}, roles: [viewer] }}\n\
             repositories:\n  blinky:\n    forge: github\n    url: {}/blinky.git\n    api: http://127.0.0.1:9\n    \
             project: team/blinky\n    webhook_secret: {{ env: HELLO_WEBHOOK_SECRET }}\n    \
             token: {{ env: BLINKY_TOKEN }}\n    trusted: {{ branches: [main] }}\n",
            viewer.digest, forge.url
        ),
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let env = [("HELLO_WEBHOOK_SECRET", SECRET), ("BLINKY_TOKEN", "t")];
    let template = example("push", |e| e["ref"] == "refs/heads/master");
    let body = |i: usize| {
        let mut push = template.clone();
        push["ref"] = "refs/heads/main".into();
        push["after"] = commits[i].as_str().into();
        push["before"] = if i == 0 { "0".repeat(40) } else { commits[i - 1].clone() }.into();
        serde_json::to_vec(&push).expect("JSON")
    };
    // Sends delivery `i`; whether the server answered 202.
    let send = |url: &str, i: usize| {
        let body = body(i);
        let mut req = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{url}/hooks/blinky"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("push-{i}"))
            .header("x-hub-signature-256", sign(&body));
        req = req.header("user-agent", "GitHub-Hookshot/test");
        match http().run(req.body(body).expect("request")) {
            Ok(resp) => {
                assert_eq!(resp.status().as_u16(), 202, "delivery {i}");
                true
            }
            // The server died under it: the forge sends it again later.
            Err(_) => false,
        }
    };

    let mut next = 0;
    let mut unanswered: Vec<usize> = Vec::new();
    let mut answered: Vec<usize> = Vec::new();
    for _ in 0..KILLS {
        let mut server = Server::start(&scratch.state(), &policy, &pipelines, &env);
        let kill_after = std::time::Duration::from_millis(rng.random_range(0..600));
        let started = std::time::Instant::now();
        if next < PUSHES {
            unanswered.push(next);
            next += 1;
        }
        // A replay of one answered before, as an attacker (or a retrying
        // forge) might send it.
        if let Some(&i) = answered.first() {
            send(&server.url, i);
        }
        for i in std::mem::take(&mut unanswered) {
            if send(&server.url, i) { answered.push(i) } else { unanswered.push(i) }
        }
        std::thread::sleep(kill_after.saturating_sub(started.elapsed()));
        server.kill();
    }
    let server = Server::start(&scratch.state(), &policy, &pipelines, &env);
    unanswered.extend(next..PUSHES);
    for i in unanswered {
        assert!(send(&server.url, i), "the last server answers delivery {i}");
    }

    // Every delivery ends started, with one run of each pipeline of its
    // own commit; nothing ran twice.
    let agent = http();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut runs_of_deliveries = Vec::new();
    for (i, commit) in commits.iter().enumerate() {
        let url = format!("{}/api/v1/repositories/blinky/deliveries/push-{i}", server.url);
        let delivery = loop {
            let (status, d) = crate::support::call(&agent, "GET", &url, Some(&viewer.token), None, &[]).expect("get");
            assert_eq!(status, 200, "{d}");
            if d["state"] != "received" {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "delivery {i} was never taken: {d}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_eq!(delivery["state"], "started", "{delivery}");
        let runs = delivery["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "{delivery}");
        for id in runs {
            let run = crate::support::wait_for_end(&agent, &server.url, &viewer.token, id.as_str().expect("id"));
            assert_eq!(run["run"]["state"], "succeeded", "{run}");
            assert_eq!(run["run"]["origin"]["commit"], commit.as_str(), "{run}");
            assert_eq!(run["run"]["origin"]["delivery"], format!("push-{i}"), "{run}");
            runs_of_deliveries.push(id.as_str().expect("id").to_owned());
        }
    }
    let (_, list) =
        crate::support::call(&agent, "GET", &format!("{}/api/v1/runs", server.url), Some(&viewer.token), None, &[])
            .expect("runs");
    let mut all: Vec<&str> =
        list["runs"].as_array().expect("runs").iter().map(|r| r["id"].as_str().expect("id")).collect();
    all.sort();
    runs_of_deliveries.sort();
    assert_eq!(all, runs_of_deliveries, "runs other than one per delivery and pipeline");
}

/// A repository's run whose server died is taken over by another server
/// on the same database, which has never seen the repository: it fetches
/// the run's commit itself, checks it is the same tree, and finishes the
/// run.
#[test]
fn a_repository_run_taken_over_by_another_server_fetches_its_commit() {
    use airlock_bench::git_http::{GitServer, git};
    let pg = airlock_store::testing::TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let scratch = Scratch::new();
    let (served, work) = blinky(&scratch);
    scratch.file(
        "work/.airlock/build.yaml",
        "name: build\non: push\nsteps:\n  a:\n    uses: tools/tick.wasm\n    args: [\"30\", \"100\"]\n",
    );
    git(&work, &["add", "-A"]).expect("git");
    git(&work, &["commit", "--quiet", "-m", "build"]).expect("git");
    let commit = git(&work, &["rev-parse", "HEAD"]).expect("git");
    git(&work, &["push", "--quiet", &served.join("blinky.git").display().to_string(), "main"]).expect("git");
    let forge = GitServer::start(&served, "x-access-token", "t").expect("git server");
    let viewer = crate::support::user_token(scratch.path());
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  vic: {{ token_sha256: {}, roles: [viewer] }}\n\
             repositories:\n  blinky:\n    forge: github\n    url: {}/blinky.git\n    api: http://127.0.0.1:9\n    \
             project: team/blinky\n    webhook_secret: {{ env: HELLO_WEBHOOK_SECRET }}\n    \
             token: {{ env: BLINKY_TOKEN }}\n    trusted: {{ branches: [main] }}\n",
            viewer.digest, forge.url
        ),
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let artifacts = scratch.path().join("artifacts").to_string_lossy().into_owned();
    let env = [("HELLO_WEBHOOK_SECRET", SECRET), ("BLINKY_TOKEN", "t"), ("AIRLOCK_DATABASE_URL", url.as_str())];
    let start = |state: &str| {
        Server::start_with(
            &scratch.path().join(state),
            &policy,
            &pipelines,
            &env,
            &["--lease", "1s", "--artifacts", &artifacts],
        )
    };
    let mut first = start("state-a");
    let mut push = example("push", |e| e["ref"] == "refs/heads/master");
    push["ref"] = "refs/heads/main".into();
    push["after"] = commit.as_str().into();
    push["before"] = "0".repeat(40).into();
    let body = serde_json::to_vec(&push).expect("JSON");
    let (status, answer) = deliver(&format!("{}/hooks/blinky", first.url), "push", "push-1", &body, Some(&sign(&body)));
    assert_eq!(status, 202, "{answer}");
    // Killed once the run is under way there.
    let agent = http();
    let delivery = format!("{}/api/v1/repositories/blinky/deliveries/push-1", first.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let id = loop {
        let (_, d) = crate::support::call(&agent, "GET", &delivery, Some(&viewer.token), None, &[]).expect("get");
        if let Some(id) = d["runs"][0].as_str() {
            let (_, run) = crate::support::call(
                &agent,
                "GET",
                &format!("{}/api/v1/runs/{id}", first.url),
                Some(&viewer.token),
                None,
                &[],
            )
            .expect("run");
            if run["steps"][0]["state"] == "running" {
                break id.to_owned();
            }
        }
        assert!(std::time::Instant::now() < deadline, "the run never started: {d}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    first.kill();
    let second = start("state-b");
    let run = crate::support::wait_for_end(&agent, &second.url, &viewer.token, &id);
    assert_eq!(run["run"]["state"], "succeeded", "{run}");
    assert_eq!(run["run"]["origin"]["commit"], commit.as_str(), "{run}");
    let trees: Vec<_> = std::fs::read_dir(scratch.path().join("state-b/checkouts/trees")).expect("trees").collect();
    assert_eq!(trees.len(), 1, "the second server did not write the commit's tree out: {trees:?}");
}

/// The poisoning attack on a step cache: an untrusted run (here a tag
/// the policy does not trust) runs a step whose key is the same as a
/// later trusted run's, and makes something else (its output carries
/// the modification time of its input, which the key does not cover).
/// The trusted run must not take it: it runs the step itself.
#[test]
fn an_untrusted_run_cannot_poison_the_step_cache_of_a_trusted_one() {
    use airlock_bench::git_http::{GitServer, git};
    const TOKEN: &str = "canary-forge-token-9a3c2e";
    let scratch = Scratch::new();
    let (served, work) = blinky(&scratch);
    std::fs::copy(
        crate::support::plugins().join("wasm32-wasip2/release/entropy.wasm"),
        work.join("tools/entropy.wasm"),
    )
    .expect("plugin");
    scratch.file(
        "work/.airlock/ci.yaml",
        "name: ci\non:\n  manual: {}\nsources:\n  rtl: rtl\nsteps:\n  stamp:\n    uses: tools/entropy.wasm\n    \
         inputs: [rtl]\n    args: [out.txt, '${{ inputs.rtl }}/top.v']\n    outputs: [out.txt]\n",
    );
    scratch.file("work/rtl/top.v", "module top(); endmodule\n");
    // Commits a day apart: their trees are written out with their
    // commit times, so the step's input has another modification time.
    let commit = |message: &str, date: &str| {
        git(&work, &["add", "-A"]).expect("git");
        let status = std::process::Command::new("git")
            .current_dir(&work)
            .env("GIT_COMMITTER_DATE", date)
            .args(["commit", "--quiet", "--date", date, "-m", message])
            .status()
            .expect("git");
        assert!(status.success());
        git(&work, &["rev-parse", "HEAD"]).expect("git")
    };
    let tagged = commit("first", "2024-01-01T00:00:00Z");
    git(&work, &["tag", "v1"]).expect("git");
    scratch.file("work/notes.txt", "the design is the same; only this file is new");
    let tip = commit("second", "2024-01-02T00:00:00Z");
    git(&work, &["push", "--quiet", "--tags", &served.join("blinky.git").display().to_string(), "main"]).expect("git");
    let forge = GitServer::start(&served, "x-access-token", TOKEN).expect("git server");
    let rita = crate::support::user_token(scratch.path());
    let policy = scratch.file(
        "policy.yaml",
        format!(
            "users:\n  rita: {{ token_sha256: {}, roles: [runner] }}\n\
             repositories:\n  blinky:\n    forge: github\n    url: {}/blinky.git\n    project: team/blinky\n    \
             webhook_secret: {{ env: HELLO_WEBHOOK_SECRET }}\n    token: {{ env: BLINKY_TOKEN }}\n    \
             trusted: {{ branches: [main] }}\n",
            rita.digest, forge.url
        ),
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    let server = Server::start(
        &scratch.state(),
        &policy,
        &pipelines,
        &[("HELLO_WEBHOOK_SECRET", SECRET), ("BLINKY_TOKEN", TOKEN)],
    );
    let agent = http();
    let stamp = |git_ref: &str| {
        let (code, stdout, stderr) = trigger(&scratch, &server, &rita.token, &["blinky", git_ref, "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let delivery: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        let run =
            crate::support::wait_for_end(&agent, &server.url, &rita.token, delivery["runs"][0].as_str().expect("run"));
        assert_eq!(run["run"]["state"], "succeeded", "{run}");
        let step = run["steps"][0].clone();
        (run["run"]["id"].as_str().expect("id").to_owned(), run["run"]["origin"].clone(), step)
    };

    // The untrusted run goes first and records what its step made.
    let (poisoner, origin, poisoned) = stamp("refs/tags/v1");
    assert_eq!(origin["commit"], tagged.as_str());
    assert!(origin["untrusted"].is_string(), "{origin}");
    assert!(poisoned["cached"].is_null(), "{poisoned}");

    // The trusted run's step has the very same key, and runs anyway.
    let (trusted, origin, step) = stamp("main");
    assert_eq!((origin["commit"].as_str(), origin["untrusted"].as_str()), (Some(tip.as_str()), None));
    assert_eq!(step["cache_key"], poisoned["cache_key"], "the attack needs the same key");
    assert!(step["cached"].is_null(), "the trusted run took the untrusted run's outputs: {step}");
    let digest = |s: &serde_json::Value| s["outputs"][0]["sha256"].as_str().expect("digest").to_owned();
    assert_ne!(digest(&step), digest(&poisoned), "the two runs made the same bytes; the test attacks nothing");

    // Later runs of either kind take the trusted run's outputs.
    for git_ref in ["main", "refs/tags/v1"] {
        let (_, _, again) = stamp(git_ref);
        assert_eq!(again["cached"]["run"], trusted.as_str(), "{git_ref}: {again}");
        assert_eq!(again["cached"]["scope"], "trusted", "{git_ref}: {again}");
        assert_eq!(digest(&again), digest(&step));
    }
    assert_ne!(poisoner, trusted);
}
