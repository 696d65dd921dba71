//! Artifacts in an S3-compatible object store: a real S3-protocol server
//! (s3s-fs, from the Rust package registry, installed by
//! `.ci/test-setup`) on loopback, checking every request's signature.

use crate::database::wait_until_running;
use crate::server::{People, tick};
use crate::support::{Scratch, Server, airlock, call, files_below, http, repo, submit_run, wait_for_end};
use airlock_host::{ArtifactError, ArtifactStore, ObjectTier};
use airlock_store::testing::TestPostgres;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The secret key every test bucket is opened with: a canary that must
/// show up nowhere but in the servers' environment.
const SECRET: &str = "canary-s3-secret-5e1f0c2a";

/// A running s3s-fs server with one bucket, `airlock`.
pub struct TestS3 {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Where it keeps objects: `ROOT/BUCKET/KEY`.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestS3 {
    pub fn start() -> Self {
        let program = repo().join("target/tools/s3s-fs/bin/s3s-fs");
        assert!(program.is_file(), "{} is missing: run `bash .ci/test-setup`", program.display());
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("objects");
        std::fs::create_dir_all(root.join("airlock")).expect("the bucket");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
        let child = Command::new(program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "airlock-test"])
            .args(["--secret-key", SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("s3s.log")).expect("log"))
            .spawn()
            .expect("s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, endpoint: format!("http://127.0.0.1:{port}"), root, _dir: dir }
    }

    /// The environment a server reaches the bucket with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "airlock-test".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// An artifact store caching in `cache`, keeping blobs under
    /// `s3://airlock/ci`.
    pub fn store(&self, cache: &Path) -> ArtifactStore {
        let env = self.env().into_iter().map(|(k, v)| (k.to_owned(), v));
        let tier = ObjectTier::s3("s3://airlock/ci", env).expect("the bucket");
        ArtifactStore::new(cache.to_owned()).with_shared(tier)
    }

    /// Where s3s-fs keeps the object of a blob.
    pub fn object(&self, sha256: &str) -> PathBuf {
        self.root.join("airlock/ci/sha256").join(&sha256[..2]).join(&sha256[2..])
    }
}

/// Bytes that do not repeat, `len` of them.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A blob stored through one cache is in the bucket, and another cache
/// fetches it from there; one larger than a part goes up in parts. A
/// blob damaged in the bucket is refused and leaves nothing behind.
#[test]
fn blobs_are_kept_in_the_bucket_and_checked_when_fetched() {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = s3.store(&dir.path().join("a"));
    let big = noise(40 << 20);
    let (small_sha, _, _) = writer.put(&b"hello"[..]).expect("put");
    let (big_sha, size, new) = writer.put(big.as_slice()).expect("put in parts");
    assert_eq!((size, new), (big.len() as u64, true));
    assert_eq!(std::fs::read(s3.object(&small_sha)).expect("the object"), b"hello");
    assert_eq!(std::fs::metadata(s3.object(&big_sha)).expect("the object").len(), big.len() as u64);

    let reader = s3.store(&dir.path().join("b"));
    assert!(reader.contains(&big_sha));
    assert_eq!(reader.size(&small_sha).expect("size"), Some(5));
    assert!(!reader.path(&big_sha).expect("path").exists(), "not fetched before it is read");
    assert!(reader.read_verified(&big_sha).expect("fetched") == big, "the big blob came back changed");
    assert!(reader.path(&big_sha).expect("path").is_file(), "kept in the cache");

    // Damaged in the bucket behind the store's back.
    std::fs::write(s3.object(&small_sha), b"jello").expect("damage");
    let third = s3.store(&dir.path().join("c"));
    match third.read_verified(&small_sha) {
        Err(ArtifactError::Corrupt { expected, actual }) => {
            assert_eq!(expected, small_sha);
            assert_ne!(actual, small_sha);
        }
        other => panic!("a damaged object was not refused: {other:?}"),
    }
    assert!(!third.path(&small_sha).expect("path").exists(), "the damaged bytes were kept");
    let nowhere = "0".repeat(64);
    assert!(matches!(third.local(&nowhere), Err(ArtifactError::Missing(_))));
    assert!(!third.contains(&nowhere));
}

/// An object store that is down, or refuses the key, fails the store
/// with its URL named, and the secret named nowhere.
#[test]
fn an_object_store_that_fails_is_named_and_its_secret_is_not() {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong =
        s3.env().into_iter().map(|(k, v)| (k.to_owned(), if k == "AWS_SECRET_ACCESS_KEY" { "nope".into() } else { v }));
    let store =
        ArtifactStore::new(dir.path().join("a")).with_shared(ObjectTier::s3("s3://airlock/ci", wrong).expect("tier"));
    let e = store.put(&b"hello"[..]).expect_err("a wrong key is refused");
    let text = e.to_string();
    assert!(text.contains("s3://airlock/ci"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(matches!(e, ArtifactError::Shared { .. }), "{e:?}");

    // The server's answer at start: it does not start.
    let people = People::new(&Scratch::new());
    let s = Scratch::new();
    let policy = s.file("policy.yaml", people.yaml());
    std::fs::create_dir_all(s.path().join("pipes")).expect("pipes");
    let mut cmd = airlock(&s.path().join("state"));
    cmd.arg("--policy").arg(&policy).args(["serve", "--listen", "127.0.0.1:0", "--artifacts", "s3://no-such-bucket/x"]);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("airlock serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("airlock serve started on a bucket that does not exist");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("airlock serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("s3://no-such-bucket/x") && stderr.contains("hint:"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// Two servers on one database keep artifacts in one bucket, each with a
/// cache of its own. The first is killed mid-run; the second takes the
/// run over and deploys what the first made, which it has only from the
/// bucket. The secret key is nowhere in what either server wrote.
#[test]
fn a_run_taken_over_reads_its_outputs_from_the_bucket() {
    let pg = TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    let s3 = TestS3::start();
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file(
        "policy.yaml",
        format!(
            "{}environments:\n  www:\n    provider: {{ type: directory, path: www }}\n    pipelines: [relay]\n",
            people.yaml()
        ),
    );
    let tick = tick();
    s.file(
        "pipes/relay.yaml",
        format!(
            "name: relay\nsteps:\n  a:\n    uses: {tick}\n    args: [\"3\", \"1\", out.txt]\n    outputs: [out.txt]\n  \
             wait:\n    uses: {tick}\n    needs: [a]\n    args: [\"40\", \"100\"]\n  \
             read:\n    uses: {tick}\n    needs: [wait]\n    inputs: [a]\n    args: [\"1\", \"1\"]\n  \
             ship:\n    needs: [read]\n    deploy: {{ environment: www, from: [a] }}\n"
        ),
    );
    let env: Vec<(&str, String)> = s3.env().into_iter().chain([("AIRLOCK_DATABASE_URL", url.clone())]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |state: &str| {
        Server::start_with(
            &s.path().join(state),
            &policy,
            &s.path().join("pipes"),
            &env,
            &["--lease", "1s", "--artifacts", "s3://airlock/ci"],
        )
    };
    let (agent, runner) = (http(), people.runner.token.as_str());
    let mut first = start("state-a");
    let id = submit_run(&agent, &first.url, runner, "relay.yaml");
    wait_until_running(&agent, &first.url, runner, &id);
    // `a` is done and `wait` under way: the output is in the bucket.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sha = loop {
        let (_, detail) =
            call(&agent, "GET", &format!("{}/api/v1/runs/{id}/artifacts", first.url), Some(runner), None, &[])
                .expect("artifacts");
        if let Some(sha) = detail["artifacts"][0]["sha256"].as_str() {
            break sha.to_owned();
        }
        assert!(Instant::now() < deadline, "step a made no artifact: {detail}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(s3.object(&sha).is_file(), "the output is not in the bucket");
    first.kill();

    let second = start("state-b");
    let detail = wait_for_end(&agent, &second.url, runner, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let a = detail["steps"].as_array().expect("steps").iter().find(|st| st["name"] == "a").cloned();
    assert_eq!(a.expect("a")["attempts"], 1, "step a ran again: {detail}");
    let deployed = std::fs::read(s.path().join("www/current/out.txt")).expect("the deployment");
    assert_eq!(deployed, b"tick 1\ntick 2\ntick 3\n");
    assert!(
        s.path().join("state-b/artifacts/sha256").join(&sha[..2]).join(&sha[2..]).is_file(),
        "the second server read the output from somewhere other than its cache"
    );
    // Downloaded through a third server, whose cache is empty.
    let third = start("state-c");
    let bytes = agent
        .get(format!("{}/api/v1/artifacts/{sha}", third.url))
        .header("authorization", format!("Bearer {runner}"))
        .call()
        .and_then(|resp| resp.into_body().read_to_vec())
        .expect("download");
    assert_eq!(bytes, b"tick 1\ntick 2\ntick 3\n");

    let mut said = Vec::new();
    for mut server in [first, second, third] {
        server.kill();
        said.extend(server.before.clone());
        said.extend(server.stderr.try_iter());
    }
    assert!(said.iter().any(|l| l.contains("s3://airlock/ci")), "{said:#?}");
    for line in &said {
        assert!(!line.contains(SECRET), "a server logged the secret: {line}");
    }
    for file in files_below(s.path()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret is in {}", file.display());
    }
}

/// In front of a bucket, a server's artifacts directory is a cache: it
/// is kept to AIRLOCK_ARTIFACT_CACHE_LIMIT, the blobs used least recently
/// going first but none used within the hour, and what went is fetched
/// from the bucket again when it is needed.
#[test]
fn a_servers_cache_of_the_bucket_keeps_to_its_bound() {
    let s3 = TestS3::start();
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    std::fs::create_dir_all(s.path().join("pipes")).expect("pipes");
    let cache = s.state().join("artifacts");
    let store = s3.store(&cache);
    let (old, _, _) = store.put(&b"used long ago"[..]).expect("put");
    let (recent, _, _) = store.put(&b"used just now"[..]).expect("put");
    let ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::open(store.path(&old).expect("path")).expect("open").set_modified(ago).expect("set time");

    let env: Vec<(&str, String)> = s3.env().into_iter().chain([("AIRLOCK_ARTIFACT_CACHE_LIMIT", "1".into())]).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server =
        Server::start_with(&s.state(), &policy, &s.path().join("pipes"), &env, &["--artifacts", "s3://airlock/ci"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = server.before.clone();
    while !said.iter().any(|l| l.contains("artifact cache: removed 1 blobs")) {
        assert!(Instant::now() < deadline, "the cache was not trimmed: {said:#?}");
        said.extend(server.stderr.recv_timeout(Duration::from_millis(100)).ok());
    }
    server.kill();
    assert!(!store.path(&old).expect("path").exists(), "the blob used least recently is still cached");
    assert!(store.path(&recent).expect("path").is_file(), "a blob in use was removed");
    assert!(s3.object(&old).is_file(), "trimming the cache removed the blob from the bucket");
    assert_eq!(store.read_verified(&old).expect("fetched again"), b"used long ago");
}
