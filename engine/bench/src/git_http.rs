//! A real git server on loopback for tests and benchmarks: Debian's
//! `git http-backend` behind a small CGI bridge that, like a forge,
//! asks for the repository's token before it serves anything.
//!
//! Repositories are the bare ones under the root given; the bridge
//! answers `401` to any request without `Authorization: Basic` of
//! `USER:TOKEN`, so a test sees a clone fail without the credential.

use base64::Engine as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A git server on a loopback port, serving until it is dropped.
pub struct GitServer {
    /// `http://127.0.0.1:PORT`; a repository `NAME.git` under the root is
    /// at `{url}/NAME.git`.
    pub url: String,
    server: std::sync::Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitServer {
    /// Serves the bare repositories under `root` to clients that present
    /// `user:token` (GitHub's clone user is `x-access-token`).
    pub fn start(root: &Path, user: &str, token: &str) -> std::io::Result<Self> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(std::io::Error::other)?;
        let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or_default();
        let server = std::sync::Arc::new(server);
        let wanted = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")));
        let (serving, root, user) = (server.clone(), root.to_owned(), user.to_owned());
        let thread = std::thread::spawn(move || {
            for request in serving.incoming_requests() {
                serve_one(request, &root, &user, &wanted);
            }
        });
        Ok(Self { url: format!("http://127.0.0.1:{port}"), server, thread: Some(thread) })
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(mut request: tiny_http::Request, root: &PathBuf, user: &str, wanted: &str) {
    let header = |name: &str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.to_string())
    };
    if header("Authorization").as_deref() != Some(wanted) {
        let challenge = tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"git\"").ok();
        let response = tiny_http::Response::empty(401);
        let _ = request.respond(match challenge {
            Some(h) => response.with_header(h),
            None => response,
        });
        return;
    }
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", request.method().as_str())
        .env("CONTENT_TYPE", header("Content-Type").unwrap_or_default())
        .env("GIT_PROTOCOL", header("Git-Protocol").unwrap_or_default())
        .env("HTTP_CONTENT_ENCODING", header("Content-Encoding").unwrap_or_default())
        .env("REMOTE_USER", user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        let _ = request.respond(tiny_http::Response::empty(500));
        return;
    };
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let Ok(out) = child.wait_with_output() else {
        let _ = request.respond(tiny_http::Response::empty(500));
        return;
    };
    // A CGI answer: headers, a blank line, the body.
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, gap)) = split else {
        let _ = request.respond(tiny_http::Response::empty(502));
        return;
    };
    let head = String::from_utf8_lossy(&out.stdout[..end]).into_owned();
    let mut response = tiny_http::Response::from_data(out.stdout[end + gap..].to_vec());
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.eq_ignore_ascii_case("Status") {
            let code = value.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            response = response.with_status_code(code);
        } else if let Ok(h) = tiny_http::Header::from_bytes(name.trim(), value.trim()) {
            response = response.with_header(h);
        }
    }
    let _ = request.respond(response);
}

/// Runs git in `dir` with no user or system configuration and a fixed
/// author; returns its output, trimmed, or what it said on failure.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}
