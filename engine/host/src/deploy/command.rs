//! The `command` provider: the admin's program, a fixed argv, a clean
//! environment.
//!
//! The program is started directly (never through a shell) with exactly
//! the argv the policy gives. What the deployment is about arrives as
//! environment variables, and nothing of the engine's own environment
//! does:
//!
//! | variable | value |
//! |----------|-------|
//! | `AIRLOCK_ENVIRONMENT`, `AIRLOCK_PIPELINE`, `AIRLOCK_RUN`, `AIRLOCK_STEP`, `AIRLOCK_REQUESTER` | who and what |
//! | `AIRLOCK_IDEMPOTENCY_KEY` | `RUN/STEP`: the same for every try of one deployment |
//! | `AIRLOCK_ARTIFACTS` | a directory holding the artifacts at their paths, checked against their digests |
//! | `AIRLOCK_MANIFEST` | a JSON file: the deployment and each artifact's path, sha256 and size |
//! | `AIRLOCK_CREDENTIAL_<NAME>` | each credential the policy passes it |
//! | `PATH` | `/usr/local/bin:/usr/bin:/bin` |

use super::{DeployError, Deployed, Deployment, Secret, copy_out};
use crate::ArtifactStore;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Output of the program kept for the record.
const MAX_OUTPUT: usize = 16 << 10;

/// The `command` provider.
pub(super) struct Command {
    pub(super) argv: Vec<String>,
    pub(super) timeout: Duration,
}

impl super::DeployProvider for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn target(&self) -> String {
        self.argv.first().cloned().unwrap_or_default()
    }

    fn deploy(
        &self,
        d: &Deployment,
        secrets: &[(String, Secret)],
        artifacts: &ArtifactStore,
        _now_ms: u64,
    ) -> Result<Deployed, DeployError> {
        deploy(d, &self.argv, self.timeout, secrets, artifacts)
    }
}

fn deploy(
    d: &Deployment,
    argv: &[String],
    timeout: Duration,
    secrets: &[(String, Secret)],
    artifacts: &ArtifactStore,
) -> Result<Deployed, DeployError> {
    let program = argv.first().cloned().unwrap_or_default();
    let fail = |message: String| DeployError::Provider { provider: "command", target: program.clone(), message };
    let work = tempfile::tempdir().map_err(|e| fail(format!("cannot lay out the artifacts: {e}")))?;
    let dir = work.path().join("artifacts");
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot lay out the artifacts: {e}")))?;
    for a in &d.artifacts {
        crate::publish::check_path(&a.path).map_err(|e| fail(e.to_string()))?;
        copy_out(artifacts, a, &dir.join(&a.path))?;
    }
    let manifest = work.path().join("manifest.json");
    std::fs::write(&manifest, serde_json::to_vec_pretty(d).unwrap_or_default())
        .map_err(|e| fail(format!("cannot write the manifest: {e}")))?;

    let mut cmd = std::process::Command::new(&program);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("AIRLOCK_ENVIRONMENT", &d.environment)
        .env("AIRLOCK_PIPELINE", &d.pipeline)
        .env("AIRLOCK_RUN", &d.run)
        .env("AIRLOCK_STEP", &d.step)
        .env("AIRLOCK_REQUESTER", &d.requester)
        .env("AIRLOCK_IDEMPOTENCY_KEY", d.idempotency_key())
        .env("AIRLOCK_ARTIFACTS", &dir)
        .env("AIRLOCK_MANIFEST", &manifest)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, secret) in secrets {
        let var = format!("AIRLOCK_CREDENTIAL_{}", name.to_ascii_uppercase().replace('-', "_"));
        cmd.env(var, secret.expose());
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start it: {e}")))?;
    // Read both pipes on threads so a chatty program never blocks.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            kept
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "ran past its {} timeout and was stopped",
                    humantime::format_duration(timeout)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let said = airlock_model::text::one_line(
        &format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)),
        2000,
    );
    if !status.success() {
        return Err(fail(format!("it exited with {status}: {said}")));
    }
    Ok(Deployed { provider: "command", target: program.clone(), detail: format!("`{program}` succeeded: {said}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::DeployArtifact;

    fn deployment(store: &ArtifactStore, run: &str) -> Deployment {
        let (sha256, size, _) = store.put(&b"payload"[..]).expect("put");
        Deployment {
            environment: "cdn".into(),
            pipeline: "site".into(),
            run: run.into(),
            step: "ship".into(),
            requester: "alice".into(),
            artifacts: vec![DeployArtifact { path: "dist/app.js".into(), sha256, size }],
        }
    }

    fn argv(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into(), "deploy".into()]
    }

    #[test]
    fn values_arrive_as_variables_never_through_a_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let hostile = "$(touch /tmp/airlock-pwned)`id`;rm -rf /";
        let d = deployment(&store, hostile);
        let secrets = vec![("key".to_owned(), Secret::new("canary-secret-9f1".into()))];
        let script = "printf '%s|' \"$AIRLOCK_RUN\" \"$(cat \"$AIRLOCK_ARTIFACTS/dist/app.js\")\" \"${HOME:-nohome}\"; \
                      test \"$AIRLOCK_CREDENTIAL_KEY\" = canary-secret-9f1 && echo key-ok; echo leak: $AIRLOCK_CREDENTIAL_KEY";
        let done = deploy(&d, &argv(script), Duration::from_secs(10), &secrets, &store).expect("deploy");
        assert!(done.detail.contains(&format!("{hostile}|payload|nohome|key-ok")), "{}", done.detail);
        assert!(!std::path::Path::new("/tmp/airlock-pwned").exists());
        // The provider reports what the program printed; the service
        // scrubs credentials out of it (see `deploy::tests`).
        assert!(done.detail.contains("leak: canary-secret-9f1"));
    }

    #[test]
    fn failures_and_timeouts_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let d = deployment(&store, "r1");
        let e = deploy(&d, &argv("echo nope >&2; exit 3"), Duration::from_secs(10), &[], &store).expect_err("fails");
        assert!(e.to_string().contains("exit status: 3") && e.to_string().contains("nope"), "{e}");
        let started = Instant::now();
        let e = deploy(&d, &argv("sleep 30"), Duration::from_millis(300), &[], &store).expect_err("times out");
        assert!(e.to_string().contains("ran past its 300ms timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = deploy(&d, &["/nonexistent/deploy".into()], Duration::from_secs(1), &[], &store).expect_err("missing");
        assert!(e.to_string().contains("cannot start it"), "{e}");
    }
}
