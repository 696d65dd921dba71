//! Helpers shared by the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Builds the example plugins (a no-op when they are up to date).
pub fn plugins() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("plugins/build"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run plugins/build");
        assert!(status.success(), "plugins/build failed");
    });
    repo().join("plugins/target")
}

/// Spawns `cmd` (an `airlock run ... --json`), waits for a progress line
/// containing `event`, then interrupts it as a terminal's Ctrl-C would.
/// Returns how it exited and how long it took to, from the interrupt.
pub fn interrupt_at(mut cmd: Command, event: &str) -> (std::process::ExitStatus, std::time::Duration) {
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains(event))), "no `{event}` event");
    let started = std::time::Instant::now();
    let kill = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    (status, started.elapsed())
}

/// An `airlock` command using `state` as its state directory, with a
/// clean environment (no colour, no inherited state directory).
pub fn airlock(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.arg("--state-dir")
        .arg(state)
        .env("NO_COLOR", "1")
        .env_remove("AIRLOCK_STATE_DIR")
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("spawn airlock");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A scratch directory holding a pipeline file written from `yaml`, with
/// `{plugins}` replaced by the absolute path of the built plugins.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Writes `pipeline.yaml` and returns its path.
    pub fn pipeline(&self, yaml: &str) -> PathBuf {
        let text = yaml.replace("{plugins}", &plugins().display().to_string());
        let path = self.path().join("pipeline.yaml");
        std::fs::write(&path, text).expect("write pipeline");
        path
    }

    /// Writes a file below the scratch directory.
    pub fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    /// `airlock run` on the scratch pipeline.
    pub fn run(&self, extra: &[&str]) -> (i32, String, String) {
        let mut cmd = airlock(&self.state());
        cmd.arg("run").arg(self.path().join("pipeline.yaml")).args(extra);
        output(&mut cmd)
    }

    /// `airlock show last --json`, parsed.
    pub fn show(&self) -> serde_json::Value {
        let (code, stdout, stderr) = output(airlock(&self.state()).args(["show", "last", "--json"]));
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).expect("show --json is JSON")
    }

    /// The JSON record of one step of the last run.
    pub fn step(&self, name: &str) -> serde_json::Value {
        let show = self.show();
        show["steps"].as_array().expect("steps").iter().find(|s| s["name"] == name).cloned().expect("step present")
    }
}

/// Every file below `dir`, at any depth.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { out.push(path) }
        }
    }
    out
}

/// A user of a test policy: their API token and its digest.
pub struct User {
    pub token: String,
    pub digest: String,
}

/// Makes a user API token with `airlock user token`.
pub fn user_token(scratch: &Path) -> User {
    let (code, json, stderr) = output(airlock(&scratch.join("user-tokens")).args(["user", "token", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    User {
        token: v["token"].as_str().expect("token").to_owned(),
        digest: v["token_sha256"].as_str().expect("digest").to_owned(),
    }
}

/// An `airlock serve` process on a free loopback port.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    /// What the server wrote on stderr before the line with its address.
    pub before: Vec<String>,
    /// The rest of its stderr, line by line.
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Starts `airlock serve` on `state` with `policy` and `pipelines`,
    /// and waits until it listens.
    pub fn start(state: &Path, policy: &Path, pipelines: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(state, policy, pipelines, env, &[])
    }

    /// Like [`start`](Self::start), with more `airlock serve` arguments.
    pub fn start_with(state: &Path, policy: &Path, pipelines: &Path, env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", state, policy, pipelines, env, args)
    }

    /// [`start_with`](Self::start_with), listening on `listen`.
    // The child is waited for by `kill`, which `Drop` calls.
    #[allow(clippy::zombie_processes)]
    pub fn start_on(
        listen: &str,
        state: &Path,
        policy: &Path,
        pipelines: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        use std::io::BufRead;
        let mut cmd = airlock(state);
        cmd.arg("--policy")
            .arg(policy)
            .args(["serve", "--listen", listen, "--pipelines"])
            .arg(pipelines)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("airlock serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("airlock serve did not start ({e}); it said:\n{}", before.join("\n")));
            if let Some(rest) = line.strip_prefix("serving on ") {
                let url = rest.split_whitespace().next().expect("url").trim_end_matches('/').to_owned();
                return Self { child, url, before, stderr: rx };
            }
            before.push(line);
        }
    }

    /// Stops reading its stderr: the pipe closes once it writes again, as
    /// when a supervisor's log reader dies.
    pub fn close_stderr(&mut self) {
        self.stderr = std::sync::mpsc::channel().1;
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.trim_start_matches("http://").parse().expect("address")
    }

    /// Stops it with SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client that hands back every status as it is.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// A call with a user's token: (status, body as JSON or as a string).
pub fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> Result<(u16, serde_json::Value), ureq::Error> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.map(|b| serde_json::to_vec(&b).expect("json")).unwrap_or_default();
    let req = req.header("content-type", "application/json").body(bytes).expect("request");
    let resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string()?;
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, value))
}

/// Submits `pipeline` through the run API as the user of `token`, and
/// answers the new run's id.
pub fn submit_run(agent: &ureq::Agent, url: &str, token: &str, pipeline: &str) -> String {
    let body = serde_json::json!({ "pipeline": pipeline });
    let (status, answer) =
        call(agent, "POST", &format!("{url}/api/v1/runs"), Some(token), Some(body), &[]).expect("submit");
    assert_eq!(status, 201, "{answer}");
    answer["run"]["id"].as_str().expect("id").to_owned()
}

/// Waits until `step` of `run` asks for approval, and answers its
/// one-time code as the user of `token` (who submitted the run) sees it.
pub fn approval_code(agent: &ureq::Agent, url: &str, token: &str, run: &str, step: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, detail) = call(agent, "GET", &format!("{url}/api/v1/runs/{run}"), Some(token), None, &[]).expect("get");
        if let Some(code) = detail["codes"][step].as_str() {
            return code.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no approval request: {detail}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until a run has ended; answers its detail.
pub fn wait_for_end(agent: &ureq::Agent, url: &str, token: &str, run: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (status, detail) =
            call(agent, "GET", &format!("{url}/api/v1/runs/{run}"), Some(token), None, &[]).expect("get run");
        assert_eq!(status, 200, "{detail}");
        let state = detail["run"]["state"].as_str().expect("state");
        if !["queued", "running"].contains(&state) {
            return detail;
        }
        assert!(std::time::Instant::now() < deadline, "run {run} did not end: {detail}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
