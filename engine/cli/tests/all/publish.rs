//! Publishing for real: `airlock serve` on loopback, the `airlock publish`
//! client, raw HTTP for what a hostile client would send, and publish
//! steps in pipelines.

use crate::support::{Scratch, airlock, files_below, output, plugins, repo};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A policy with the targets `snapshots` (1 KiB files at most) and
/// `releases`, kept in the scratch directory.
fn policy(s: &Scratch) -> PathBuf {
    s.file(
        "policy.yaml",
        "targets:\n  snapshots:\n    dir: published/snapshots\n    limits: { file: 1KiB }\n  releases:\n    dir: published/releases\n",
    )
}

/// `airlock serve` on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// What it printed after its first line (its access log).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(s: &Scratch) -> Self {
        Self::start_on(s, "127.0.0.1:0")
    }

    fn start_on(s: &Scratch, listen: &str) -> Self {
        let mut child = airlock(&s.state())
            .arg("--policy")
            .arg(policy(s))
            .args(["serve", "--listen", listen])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start airlock serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("first line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        // Keep reading what the server prints so it never blocks on it.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                lines.lock().expect("log").push(line);
            }
        });
        Self { child, addr, log }
    }

    /// Whether its access log has a call whose path ends with `suffix`.
    fn was_called(&self, suffix: &str) -> bool {
        // The log line of a call is written as its answer goes out.
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.log.lock().expect("log").iter().any(|l| l.contains(&format!("{suffix}\"")))
    }

    /// The access log's lines of calls whose path ends with `suffix`.
    fn calls(&self, suffix: &str) -> Vec<String> {
        std::thread::sleep(std::time::Duration::from_millis(100));
        self.log.lock().expect("log").iter().filter(|l| l.contains(&format!("{suffix}\""))).cloned().collect()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One HTTP/1.1 request; returns (status, body).
    fn http(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}content-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send");
        // The server may answer and close before reading all of a refused body.
        let _ = stream.write_all(body);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole response");
        let status = String::from_utf8_lossy(&answer[9..12]).parse().expect("status");
        (status, answer[split + 4..].to_vec())
    }

    /// The JSON error code of a refused call.
    fn refused(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
        let (status, body) = self.http(method, path, token, body);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
        (status, v["error"]["code"].as_str().expect("code").to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(s: &Scratch, args: &[&str]) -> String {
    let (code, stdout, stderr) = output(airlock(&s.state()).args(["token", "create"]).args(args));
    assert_eq!(code, 0, "{stderr}");
    stdout.trim().to_owned()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `airlock publish` from the scratch directory; the client keeps its
/// stat cache in its own state directory.
fn publish(s: &Scratch, server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    output(
        airlock(&s.path().join("client"))
            .current_dir(s.path())
            .env("AIRLOCK_TOKEN", token)
            .args(["publish", "--server", &server.url(), "--target", "snapshots"])
            .args(args),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Files written long enough ago that the stat cache trusts them.
fn settled_tree(s: &Scratch, files: &[(&str, &str)]) {
    for (path, text) in files {
        s.file(&format!("tree/{path}"), text);
    }
    let status = Command::new("touch")
        .args(["-d", "2020-01-01"])
        .args(files.iter().map(|(p, _)| s.path().join("tree").join(p)))
        .status();
    assert!(status.expect("touch").success());
    // ctime moved with the touch; the cache waits for it to be 2 s old.
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

#[test]
fn publish_uploads_only_what_the_server_lacks_and_serves_it_with_digests() {
    let s = Scratch::new();
    let t = token(&s, &["--scope", "publish:snapshots/b", "--ttl", "10m"]);
    let server = Server::start(&s);
    settled_tree(&s, &[("index.html", "<h1>hi</h1>"), ("css/a.css", "a{}"), ("css/copy.css", "a{}"), ("x y.txt", "x")]);

    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b1", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let first = json(&stdout);
    assert_eq!((first["files"].as_u64(), first["uploaded_files"].as_u64()), (Some(4), Some(3)), "{first}");
    assert_eq!(first["hashed_files"], 4);
    assert_eq!(first["url"], format!("{}/snapshots/b1/", server.url()));

    // Served: every file with its digest, the index pages listing them.
    let (status, body) = server.http("GET", "/snapshots/b1/css/a.css", None, b"");
    assert_eq!((status, body.as_slice()), (200, &b"a{}"[..]));
    let (status, body) = server.http("GET", "/snapshots/b1/x%20y.txt", None, b"");
    assert_eq!((status, body.as_slice()), (200, &b"x"[..]));
    let (_, page) = server.http("GET", "/snapshots/b1/css/", None, b"");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("copy.css") && page.contains(&sha(b"a{}")), "{page}");
    let (_, manifest) = server.http("GET", "/api/v1/targets/snapshots/builds/b1", None, b"");
    assert_eq!(json(&String::from_utf8_lossy(&manifest))["files"].as_array().map(Vec::len), Some(4));
    assert_eq!(server.http("GET", "/snapshots/b1/nope", None, b"").0, 404);

    // Unchanged: nothing hashed (stat cache), nothing uploaded.
    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b2", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let again = json(&stdout);
    assert_eq!((again["hashed_files"].as_u64(), again["uploaded_files"].as_u64()), (Some(0), Some(0)), "{again}");

    // Two files changed: those two are hashed and uploaded.
    s.file("tree/index.html", "<h1>changed</h1>");
    s.file("tree/css/a.css", "b{}");
    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b3", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let changed = json(&stdout);
    assert_eq!((changed["hashed_files"].as_u64(), changed["uploaded_files"].as_u64()), (Some(2), Some(2)), "{changed}");
    assert_eq!(server.http("GET", "/snapshots/b3/css/copy.css", None, b"").1, b"a{}");
    assert_eq!(server.http("GET", "/snapshots/b3/css/a.css", None, b"").1, b"b{}");

    // A build id is published once: the same tree again is fine, another is a conflict.
    let (code, _, stderr) = publish(&s, &server, &t, &["--strip", "1", "b3", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("already published"), "{stderr}");
    let (code, _, stderr) = publish(&s, &server, &t, &["--strip", "1", "b3", "tree/css"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("(conflict)") && stderr.contains("hint: published trees never change"), "{stderr}");
    assert_eq!(server.http("GET", "/snapshots/b3/css/a.css", None, b"").1, b"b{}", "the first tree stands");
}

/// An unchanged tree whose blobs all reached the target before is
/// committed straight away, without asking which blobs are missing; when
/// the server lost them after all (a new server, an empty target at the
/// same address), the commit is refused, nothing is published, and the
/// client goes the long way without being asked to.
#[test]
fn an_unchanged_tree_is_committed_at_once_and_a_server_that_lost_its_blobs_gets_them_again() {
    let s = Scratch::new();
    let t = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m"]);
    settled_tree(&s, &[("a.txt", "a"), ("b/c.txt", "c"), ("d.txt", "d")]);
    let server = Server::start(&s);
    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b1", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&stdout)["uploaded_files"], 3);
    assert!(server.was_called("/builds/b1/missing"));

    let first = json(&stdout);
    assert_eq!(first["committed_by_digest"], false, "the server has never seen the tree");

    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b2", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let second = json(&stdout);
    assert_eq!(second["uploaded_files"], 0);
    assert_eq!((&second["committed_by_digest"], &second["tree"]), (&true.into(), &first["tree"]));
    assert_eq!(server.calls("/builds/b2").len(), 1, "an unchanged tree is one call");
    assert!(!server.was_called("/builds/b2/missing"), "an unchanged tree asks nothing first");
    assert_eq!(server.http("GET", "/snapshots/b2/b/c.txt", None, b"").1, b"c");

    // Two files changed: a new tree, whose blobs are not all there.
    std::fs::write(s.path().join("tree/a.txt"), "a2").expect("change");
    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "--strip", "1", "b2b", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let changed = json(&stdout);
    assert_eq!((&changed["committed_by_digest"], &changed["uploaded_files"]), (&false.into(), &1.into()));
    assert_ne!(changed["tree"], first["tree"]);
    std::fs::write(s.path().join("tree/a.txt"), "a").expect("change back");

    // The server's storage is gone; a new one answers at the same address.
    let addr = server.addr;
    drop(server);
    std::fs::remove_dir_all(s.path().join("published")).expect("wipe the targets");
    let server = Server::start_on(&s, &addr.to_string());
    // A token for exactly these three files: the refused commit must not
    // have used them up.
    let exact = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m", "--max-files", "3"]);
    let (code, stdout, stderr) = publish(&s, &server, &exact, &["--json", "--strip", "1", "b3", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&stdout)["uploaded_files"], 3, "every blob sent again");
    assert!(server.was_called("/builds/b3/missing"), "after the refused commit");
    let refused: Vec<String> = server.calls("/builds/b3").into_iter().filter(|l| l.contains("status=422")).collect();
    assert_eq!(refused.len(), 2, "the tree, then the manifest, refused: {refused:?}");
    assert_eq!(server.http("GET", "/snapshots/b3/b/c.txt", None, b"").1, b"c");
    // What the client now knows of the new server holds for the next time.
    let (code, _, stderr) = publish(&s, &server, &t, &["--strip", "1", "b4", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!server.was_called("/builds/b4/missing"));
}

#[test]
fn every_token_constraint_is_enforced_over_http() {
    let s = Scratch::new();
    s.file("tree/a.txt", "aaaa");
    s.file("tree/b.txt", "bbbbbbbbbb");
    let expired = token(&s, &["--scope", "publish:snapshots/", "--ttl", "1s"]);
    let later = token(&s, &["--scope", "publish:snapshots/", "--not-before", "2099-01-01T00:00:00Z"]);
    let narrow = token(&s, &["--scope", "publish:snapshots/pr-7-"]);
    let calls = token(&s, &["--scope", "publish:snapshots/", "--max-calls", "2"]);
    let files = token(&s, &["--scope", "publish:snapshots/", "--max-files", "1"]);
    let bytes = token(&s, &["--scope", "publish:snapshots/", "--max-bytes", "10"]);
    let elsewhere = token(&s, &["--scope", "publish:snapshots/", "--cidr", "10.0.0.0/8"]);
    let revoked = token(&s, &["--scope", "publish:snapshots/", "--json"]);
    let revoked_json = json(&revoked);
    let (code, _, _) = output(airlock(&s.state()).args(["token", "revoke", revoked_json["id"].as_str().expect("id")]));
    assert_eq!(code, 0);
    let revoked = revoked_json["token"].as_str().expect("token").to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let server = Server::start(&s);

    let unknown = format!("alk_{}", "0".repeat(64));
    for (token, code, message) in [
        (expired.as_str(), "token_expired", "expired"),
        (&later, "token_not_yet_valid", "is not valid yet"),
        (&narrow, "token_out_of_scope", "allows `publish:snapshots/pr-7-`, not publish to `snapshots/b1`"),
        (&elsewhere, "token_wrong_source", "may only be used from 10.0.0.0/8, not from 127.0.0.1"),
        (&revoked, "token_revoked", "was revoked"),
        (&unknown, "token_unknown", "never issued by this engine"),
        ("hunter2", "token_malformed", "not an airlock token"),
        // In this order: the first to upload leaves the blobs on the
        // server, and later publishes of the same files send none.
        (&bytes, "token_quota_used_up", "has used up its bytes: 0 of 10 used, and this asks for 94 more"),
        (&calls, "token_quota_used_up", "has used up its calls: 2 of 2 used"),
        (&files, "token_quota_used_up", "has used up its files: 0 of 1 used, and this asks for 2 more"),
    ] {
        let (exit, _, stderr) = publish(&s, &server, token, &["--no-cache", "--strip", "1", "b1", "tree"]);
        assert_eq!(exit, 1, "{code}: {stderr}");
        assert!(stderr.contains(&format!("({code})")) && stderr.contains(message), "{code}: {stderr}");
        assert!(!stderr.contains(token) || token == "hunter2", "the token is not echoed");
    }
    let (status, code) = server.refused("POST", "/api/v1/targets/snapshots/builds/b1/missing", None, b"{}");
    assert_eq!((status, code.as_str()), (401, "token_missing"));
    assert_eq!(server.http("GET", "/api/v1/targets/snapshots/builds/b1", None, b"").0, 404, "nothing was published");
}

/// A blob upload frame: digest, length, bytes.
fn frame(digest: &str, bytes: &[u8]) -> Vec<u8> {
    let mut f = hex::decode(digest).expect("hex");
    f.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    f.extend_from_slice(bytes);
    f
}

#[test]
fn bad_manifests_and_uploads_are_refused_and_leave_nothing() {
    let s = Scratch::new();
    let t = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m"]);
    let server = Server::start(&s);
    let api = "/api/v1/targets/snapshots/builds/b1";
    let good = b"good bytes";
    let (status, body) = server.http("POST", &format!("{api}/blobs"), Some(&t), &frame(&sha(good), good));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let manifest = |path: &str, digest: &str, size: usize| {
        serde_json::to_vec(&serde_json::json!({ "files": [ { "path": path, "sha256": digest, "size": size } ] }))
            .expect("json")
    };
    let d = sha(good);
    let two = serde_json::to_vec(&serde_json::json!({ "files": [
        { "path": "a", "sha256": d, "size": good.len() }, { "path": "a", "sha256": d, "size": good.len() } ] }))
    .expect("json");
    let clash = serde_json::to_vec(&serde_json::json!({ "files": [
        { "path": "a", "sha256": d, "size": good.len() }, { "path": "a/b", "sha256": d, "size": good.len() } ] }))
    .expect("json");
    let absent = sha(b"never sent");
    for (body, status, code) in [
        (manifest("../../etc/passwd", &d, good.len()), 422, "bad_path"),
        (manifest("/etc/passwd", &d, good.len()), 422, "bad_path"),
        (manifest("a/./b", &d, good.len()), 422, "bad_path"),
        (manifest("evil\u{202e}gpj.exe", &d, good.len()), 422, "bad_path"),
        (two, 422, "duplicate_path"),
        (clash, 422, "path_clash"),
        (manifest("a", &absent, 10), 422, "missing_blob"),
        (manifest("a", &d, 3), 422, "size_mismatch"),
        (manifest("a", "abc", 3), 422, "bad_digest"),
        (b"{\"files\": 7}".to_vec(), 400, "bad_json"),
        (serde_json::to_vec(&serde_json::json!({ "tree": absent })).expect("json"), 422, "unknown_tree"),
        (serde_json::to_vec(&serde_json::json!({ "tree": "../x" })).expect("json"), 422, "bad_digest"),
        (
            serde_json::to_vec(
                &serde_json::json!({ "tree": absent, "files": [{ "path": "a", "sha256": d, "size": 10 }] }),
            )
            .expect("json"),
            400,
            "bad_json",
        ),
    ] {
        assert_eq!(server.refused("PUT", api, Some(&t), &body), (status, code.to_owned()));
    }
    // Uploads: bytes that do not match their digest, past the target's
    // 1 KiB file limit, cut short.
    let (status, code) = server.refused("POST", &format!("{api}/blobs"), Some(&t), &frame(&absent, b"other bytes"));
    assert_eq!((status, code.as_str()), (422, "digest_mismatch"));
    let big = vec![b'x'; 2048];
    let (status, code) = server.refused("POST", &format!("{api}/blobs"), Some(&t), &frame(&sha(&big), &big));
    assert_eq!((status, code.as_str()), (413, "file_too_large"));
    // The scratch policy's `snapshots` allows 20 GiB per publish; a
    // request claiming more is refused before anything is read.
    let (status, code) = {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        let head = format!(
            "POST {api}/blobs HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {t}\r\ncontent-length: {}\r\n\r\n",
            30u64 << 30
        );
        stream.write_all(head.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (answer[9..12].to_owned(), answer.contains("\"upload_too_large\""))
    };
    assert_eq!((status.as_str(), code), ("413", true));
    let mut short = frame(&absent, b"never sent");
    short.truncate(45);
    let (status, code) = server.refused("POST", &format!("{api}/blobs"), Some(&t), &short);
    assert_eq!((status, code.as_str()), (422, "truncated_upload"));
    let (status, code) = server.refused("PUT", "/api/v1/targets/snapshots/builds/..", Some(&t), b"{}");
    assert_eq!((status, code.as_str()), (422, "bad_build_id"));
    let (status, code) = server.refused("PUT", "/api/v1/targets/nope/builds/b1", Some(&t), b"{}");
    assert_eq!((status, code.as_str()), (404, "no_target"));

    // Nothing refused is visible, and no refused upload was kept.
    assert_eq!(server.http("GET", api, None, b"").0, 404);
    let blobs: Vec<PathBuf> = files_below(&s.path().join("published/snapshots/blobs/sha256"));
    assert_eq!(blobs.len(), 1, "only the good blob is kept: {blobs:?}");
    assert!(!s.path().join("published/snapshots/builds/b1.json").exists());
}

#[test]
fn racing_publishers_one_wins_the_other_gets_a_conflict() {
    let s = Scratch::new();
    let t = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m"]);
    let server = Server::start(&s);
    for i in 0..4 {
        s.file(&format!("one/f{i}"), format!("one {i}"));
        s.file(&format!("two/f{i}"), format!("two {i}"));
    }
    let spawn = |dir: &str| {
        airlock(&s.path().join(format!("client-{dir}")))
            .current_dir(s.path())
            .env("AIRLOCK_TOKEN", &t)
            .args(["publish", "--server", &server.url(), "--target", "snapshots", "--strip", "1", "race", dir])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn("one"), spawn("two"));
    let results: Vec<_> = [a, b].into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let codes: Vec<i32> = results.iter().map(|r| r.status.code().unwrap_or(-1)).collect();
    assert!(codes == [0, 1] || codes == [1, 0], "{codes:?}");
    let loser = results.iter().find(|r| r.status.code() == Some(1)).expect("a loser");
    assert!(String::from_utf8_lossy(&loser.stderr).contains("(conflict)"));
    // The winner's tree is whole: one side's four files, not a mix.
    let (_, m) = server.http("GET", "/api/v1/targets/snapshots/builds/race", None, b"");
    let m = json(&String::from_utf8_lossy(&m));
    let contents: Vec<String> = (0..4)
        .map(|i| {
            String::from_utf8_lossy(&server.http("GET", &format!("/snapshots/race/f{i}"), None, b"").1).into_owned()
        })
        .collect();
    assert_eq!(m["files"].as_array().map(Vec::len), Some(4));
    let side = if contents[0].starts_with("one") { "one" } else { "two" };
    assert!(contents.iter().enumerate().all(|(i, c)| *c == format!("{side} {i}")), "{contents:?}");
}

#[test]
fn a_token_expiring_mid_publish_leaves_nothing_and_a_retry_sends_only_the_rest() {
    let s = Scratch::new();
    let short = token(&s, &["--scope", "publish:snapshots/", "--ttl", "3s"]);
    let fresh = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m"]);
    let server = Server::start(&s);
    s.file("tree/sent.txt", "this arrived before the token expired");
    s.file("tree/later.txt", "this did not");
    let api = "/api/v1/targets/snapshots/builds/b1";
    let sent = b"this arrived before the token expired";
    let (status, _) = server.http("POST", &format!("{api}/blobs"), Some(&short), &frame(&sha(sent), sent));
    assert_eq!(status, 200);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let manifest = serde_json::to_vec(&serde_json::json!({ "files": [
        { "path": "sent.txt", "sha256": sha(sent), "size": sent.len() } ] }))
    .expect("json");
    assert_eq!(server.refused("PUT", api, Some(&short), &manifest), (401, "token_expired".to_owned()));
    assert_eq!(server.http("GET", api, None, b"").0, 404, "nothing is visible");

    let (code, stdout, stderr) = publish(&s, &server, &fresh, &["--json", "--strip", "1", "b1", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    let done = json(&stdout);
    assert_eq!((done["files"].as_u64(), done["uploaded_files"].as_u64()), (Some(2), Some(1)), "{done}");
}

#[test]
fn the_client_refuses_what_it_cannot_publish_before_calling() {
    let s = Scratch::new();
    s.file("tree/a.txt", "a");
    std::os::unix::fs::symlink("/etc/passwd", s.path().join("tree/link")).expect("symlink");
    let run = |args: &[&str]| {
        output(
            airlock(&s.state())
                .current_dir(s.path())
                .env("AIRLOCK_TOKEN", "alk_x")
                .args(["publish", "--server", "http://127.0.0.1:9", "--target", "snapshots"])
                .args(args),
        )
    };
    for (args, code, message) in [
        (&["b1", "tree"][..], 1, "`tree/link` is a symbolic link"),
        (&["b1", "tree/*"], 1, "`tree/link` is a symbolic link"),
        (&["b1", "tree/*.md"], 2, "`tree/*.md` matches no file"),
        (&["../b", "tree/a.txt"], 2, "build id `../b` is not valid"),
        (&["--strip", "2", "b1", "tree/a.txt"], 2, "`--strip 2` leaves nothing of `tree/a.txt`"),
        (&["b1", "tree/a.txt", "./tree/a.txt"], 0, ""),
    ] {
        let (exit, _, stderr) = run(args);
        if code == 0 {
            // Same file twice is one file; the server is not there.
            assert_eq!(exit, 3, "{stderr}");
            assert!(stderr.contains("cannot reach the server"), "{stderr}");
            continue;
        }
        assert_eq!(exit, code, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Finds `alk_` followed by 64 hex digits: a whole token.
fn holds_a_token(bytes: &[u8]) -> bool {
    bytes.windows(68).any(|w| w.starts_with(b"alk_") && w[4..].iter().all(u8::is_ascii_hexdigit))
}

#[test]
fn a_publish_step_publishes_artifacts_with_a_token_that_dies_with_the_run() {
    plugins();
    let s = Scratch::new();
    let policy = policy(&s);
    // The example policy's limits would refuse nothing here, but the
    // scratch policy's 1 KiB file limit would refuse the archive; give
    // the pipeline a target without it.
    std::fs::write(&policy, "targets:\n  snapshots:\n    dir: published/snapshots\n").expect("policy");
    let pipeline = repo().join("pipelines/release.yaml");
    let (code, stdout, stderr) =
        output(airlock(&s.state()).arg("--policy").arg(&policy).args(["run", "--json"]).arg(&pipeline));
    assert_eq!(code, 0, "{stderr}");
    assert!(!holds_a_token(stdout.as_bytes()) && !holds_a_token(stderr.as_bytes()));

    let step = s.step("publish");
    let published = &step["published"];
    let run_id = s.show()["run"]["id"].as_str().expect("id").to_owned();
    assert_eq!(published["build"], format!("site-{run_id}"));
    assert_eq!((published["files"].as_u64(), published["created"].as_bool()), (Some(2), Some(true)));

    // The tree is there, and holds exactly the upstream artifacts.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path().join(format!("published/snapshots/builds/site-{run_id}.json"))).expect("record"),
    )
    .expect("json");
    let tree = record["tree"].as_str().expect("the record names its tree");
    assert_eq!(published["tree"].as_str(), None, "the run's record does not need it");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path().join(format!("published/snapshots/trees/{tree}.json"))).expect("manifest"),
    )
    .expect("json");
    let paths: Vec<&str> =
        manifest["files"].as_array().expect("files").iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(paths, ["SHA256SUMS", "site.tar.gz"]);
    let pack = s.step("pack");
    assert_eq!(manifest["files"][1]["sha256"], pack["outputs"][0]["sha256"]);

    // The token it used was minted for that step alone and is revoked.
    let (_, tokens, _) = output(airlock(&s.state()).args(["token", "list", "--json"]));
    let tokens = json(&tokens);
    let minted = tokens.as_array().expect("tokens").iter().find(|t| t["id"] == published["token"]).expect("listed");
    assert!(minted["revoked_ms"].is_u64(), "{minted}");
    assert_eq!(minted["scope"]["prefix"], format!("site-{run_id}"));
    assert_eq!(minted["used"]["calls"], 3);
    // And it is nowhere: not in the state, the artifacts or what was published.
    for f in files_below(&s.state()).into_iter().chain(files_below(&s.path().join("published"))) {
        assert!(!holds_a_token(&std::fs::read(&f).expect("read")), "a token is in {}", f.display());
    }

    // Without the policy, the pipeline is refused before it starts.
    let (code, _, stderr) = output(airlock(&s.state()).arg("run").arg(&pipeline));
    assert_eq!(code, 1);
    assert!(stderr.contains("no admin policy was given"), "{stderr}");
}

#[test]
fn a_publish_step_that_cannot_publish_fails_and_its_token_is_revoked() {
    plugins();
    let s = Scratch::new();
    let policy =
        s.file("policy.yaml", "targets:\n  snapshots:\n    dir: published/snapshots\n    limits: { total: 100 }\n");
    let (code, _, stderr) =
        output(airlock(&s.state()).arg("--policy").arg(&policy).arg("run").arg(repo().join("pipelines/release.yaml")));
    assert_eq!(code, 1, "{stderr}");
    let step = s.step("publish");
    assert_eq!(step["state"], "failed");
    assert!(step["reason"].as_str().expect("reason").contains("target `snapshots` allows 100"), "{step}");
    let (_, tokens, _) = output(airlock(&s.state()).args(["token", "list", "--json"]));
    let tokens = json(&tokens);
    assert_eq!(tokens.as_array().map(Vec::len), Some(1));
    assert!(tokens[0]["revoked_ms"].is_u64(), "{tokens}");
    assert!(!Path::new(&s.path().join("published/snapshots/builds")).read_dir().is_ok_and(|mut d| d.next().is_some()));
}

#[test]
fn tokens_are_managed_through_the_running_server() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    s.file("tree/a.txt", "a");
    let server = Server::start(&s);
    let run_dir = s.state().join("run");
    assert_eq!(std::fs::metadata(&run_dir).expect("run dir").permissions().mode() & 0o777, 0o700);

    // The server holds the state directory; token commands go through it.
    let t = token(&s, &["--scope", "publish:snapshots/", "--ttl", "10m", "--max-calls", "50"]);
    let (code, stdout, stderr) = publish(&s, &server, &t, &["--json", "b1", "tree"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json(&stdout)["files"], 1);
    let (code, list, stderr) = output(airlock(&s.state()).args(["token", "list", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let listed = json(&list);
    assert_eq!(listed[0]["used"]["calls"], 3, "{listed}");
    let id = listed[0]["id"].as_str().expect("id");
    let (code, _, stderr) = output(airlock(&s.state()).args(["token", "revoke", id]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = publish(&s, &server, &t, &["b2", "tree"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("(token_revoked)"), "{stderr}");

    // The server checks scopes against its own targets.
    let (code, _, stderr) = output(airlock(&s.state()).args(["token", "create", "--scope", "publish:nightly/"]));
    assert_eq!(code, 3);
    assert!(stderr.contains("no publish target `nightly` on this server"), "{stderr}");
    let (code, _, stderr) = output(airlock(&s.state()).args(["token", "revoke", "tok-00000000"]));
    assert_eq!(code, 3);
    assert!(stderr.contains("no token `tok-00000000`"), "{stderr}");
}
