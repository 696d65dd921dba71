//! The deploy service's hands: credentials and providers.
//!
//! A deployment is an environment of the admin policy, the artifacts to
//! deploy (by path and sha256, from the artifact store) and who asked.
//! [`deploy`] reads the environment's credentials first and fails,
//! naming the credential, before anything happens if one is missing or
//! expired; then it runs the environment's provider, each one a
//! [`DeployProvider`]:
//!
//! - `http` sends each artifact (or a JSON manifest of them) to a URL,
//!   authenticated with a bearer or basic credential;
//! - `directory` copies the artifacts into a new release directory and
//!   switches a `current` link to it in one rename, keeping the last few
//!   releases for [`directory::rollback`];
//! - `command` runs the admin's program with a fixed argv and a clean
//!   environment: pipeline values arrive as `AIRLOCK_*` variables, never
//!   through a shell.
//!
//! Every artifact's bytes are checked against its digest on the way, so
//! what is deployed is exactly what was approved. Credentials are
//! [`Secret`]s: nothing here prints one, and anything a provider reports
//! back (a server's answer, a program's output) is scrubbed of them.
//! Who may deploy where, and approvals, are decided before this is
//! called.

mod command;
pub(crate) mod credentials;
pub mod directory;
mod http;

pub use credentials::{CredentialError, CredentialStatus, Secret, check_all, read, read_credential, redact};

use crate::ArtifactStore;
use airlock_model::policy::{Environment, Provider};
use serde::Serialize;
use std::path::Path;

/// One artifact to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployArtifact {
    /// Its path, as the step that made it named it.
    pub path: String,
    /// Its sha256: the bytes deployed must have it.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// What to deploy, where, for whom.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    /// The environment, by name.
    pub environment: String,
    /// The pipeline asking.
    pub pipeline: String,
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// Who asked (the user who started the run).
    pub requester: String,
    /// What.
    pub artifacts: Vec<DeployArtifact>,
}

impl Deployment {
    /// `RUN/STEP`: names this deployment to the receiver, the same on
    /// every try, so a receiver can refuse to apply it twice.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.run, self.step)
    }
}

/// What a provider did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    /// `http`, `directory` or `command`.
    pub provider: &'static str,
    /// Where: a URL, a release directory, a program.
    pub target: String,
    /// What happened, in a line.
    pub detail: String,
}

/// Why a deployment did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A credential is missing or expired: nothing was done.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// An artifact is not in the store, or its bytes changed.
    #[error("artifact `{path}`: {source}")]
    Artifact {
        /// The artifact's path.
        path: String,
        /// What is wrong.
        source: crate::ArtifactError,
    },
    /// The provider failed; the message is scrubbed of credentials.
    #[error("{provider} deploy to {target} failed: {message}")]
    Provider {
        /// The provider.
        provider: &'static str,
        /// Where it was deploying.
        target: String,
        /// What went wrong.
        message: String,
    },
}

/// What every provider does. The deploy service picks the environment's
/// with [`provider`], checks credentials and artifacts, and calls it.
pub trait DeployProvider: Send + Sync {
    /// `http`, `directory` or `command`.
    fn kind(&self) -> &'static str;
    /// Where it deploys, as the approval request and the record show it.
    fn target(&self) -> String;
    /// Deploys `d` with `secrets`, the credentials the policy gives it
    /// (already checked), copying artifacts out of `artifacts` verified.
    fn deploy(
        &self,
        d: &Deployment,
        secrets: &[(String, Secret)],
        artifacts: &ArtifactStore,
        now_ms: u64,
    ) -> Result<Deployed, DeployError>;
}

/// The provider of an environment; relative paths start at `policy_dir`.
pub fn provider(env: &Environment, policy_dir: &Path) -> Box<dyn DeployProvider> {
    match &env.provider {
        Provider::Http { url, method, auth, payload, .. } => {
            Box::new(http::Http { url: url.clone(), method: *method, auth: *auth, payload: *payload })
        }
        Provider::Directory { path, keep } => {
            Box::new(directory::Directory { root: policy_dir.join(path), keep: *keep as usize })
        }
        Provider::Command { argv, timeout, .. } => Box::new(command::Command { argv: argv.clone(), timeout: *timeout }),
    }
}

/// Checks the credentials the environment's provider needs and returns
/// them, or the first that cannot be used.
pub fn preflight(
    name: &str,
    env: &Environment,
    policy_dir: &Path,
    now_ms: u64,
) -> Result<Vec<(String, Secret)>, CredentialError> {
    let needed: Vec<&String> = match &env.provider {
        Provider::Http { credential, .. } => credential.iter().collect(),
        Provider::Directory { .. } => Vec::new(),
        Provider::Command { credentials, .. } => credentials.iter().collect(),
    };
    needed.into_iter().map(|c| read(name, c, env, policy_dir, now_ms).map(|s| (c.clone(), s))).collect()
}

/// Deploys `d` to the environment `env` (named `d.environment`).
pub fn deploy(
    d: &Deployment,
    env: &Environment,
    policy_dir: &Path,
    artifacts: &ArtifactStore,
    now_ms: u64,
) -> Result<Deployed, DeployError> {
    let secrets = preflight(&d.environment, env, policy_dir, now_ms)?;
    // Every artifact is in the store with its digest before anything is sent.
    for a in &d.artifacts {
        // Fetched now from a shared object store, so nothing is sent if one is missing.
        artifacts.local(&a.sha256).map_err(|source| DeployError::Artifact { path: a.path.clone(), source })?;
    }
    let values: Vec<&Secret> = secrets.iter().map(|(_, s)| s).collect();
    let scrub = |e: DeployError| match e {
        DeployError::Provider { provider, target, message } => {
            DeployError::Provider { provider, target, message: redact(&message, &values) }
        }
        other => other,
    };
    let done = provider(env, policy_dir).deploy(d, &secrets, artifacts, now_ms);
    done.map(|ok| Deployed { detail: redact(&ok.detail, &values), ..ok }).map_err(scrub)
}

/// Copies an artifact out of the store to `dest`, verified.
fn copy_out(artifacts: &ArtifactStore, a: &DeployArtifact, dest: &Path) -> Result<(), DeployError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DeployError::Artifact {
            path: a.path.clone(),
            source: crate::ArtifactError::Io { dir: parent.to_owned(), source: e },
        })?;
    }
    artifacts
        .copy_verified(&a.sha256, dest)
        .map(drop)
        .map_err(|source| DeployError::Artifact { path: a.path.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_model::policy::{Credential, CredentialSource, Grants, HttpAuth, HttpMethod, Payload};
    use base64::Engine as _;

    const CANARY: &str = "canary-credential-7d2e91";

    fn env(provider: Provider, credentials: &[(&str, CredentialSource, Option<u64>)]) -> Environment {
        Environment {
            description: None,
            provider,
            credentials: credentials
                .iter()
                .map(|(n, s, e)| {
                    ((*n).to_owned(), Credential { source: s.clone(), expires_ms: *e, span: Default::default() })
                })
                .collect(),
            pipelines: vec!["*".into()],
            approvals: None,
            grants: Grants::default(),
            span: Default::default(),
        }
    }

    fn http(url: &str, auth: HttpAuth, payload: Payload) -> Provider {
        Provider::Http {
            url: url.into(),
            method: HttpMethod::Put,
            auth,
            credential: Some("key".into()),
            payload,
            idempotent: false,
        }
    }

    fn deployment(store: &ArtifactStore) -> Deployment {
        let mut artifacts = Vec::new();
        for (path, bytes) in [("site.tar.gz", &b"archive"[..]), ("docs/read me.txt", b"hello")] {
            let (sha256, size, _) = store.put(bytes).expect("put");
            artifacts.push(DeployArtifact { path: path.into(), sha256, size });
        }
        Deployment {
            environment: "staging".into(),
            pipeline: "release".into(),
            run: "r1".into(),
            step: "deploy".into(),
            requester: "alice".into(),
            artifacts,
        }
    }

    /// What the test server saw of a request: method, URL, the
    /// Authorization header, the body.
    type Seen = (String, String, Option<String>, Vec<u8>);

    /// A real HTTP server on loopback that records each request and
    /// answers with `status` (echoing the request's Authorization header
    /// in its body, as a careless server might).
    fn server(status: u16, requests: usize) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("server");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..requests {
                let Ok(mut req) = server.recv() else { break };
                let auth = req.headers().iter().find(|h| h.field.equiv("authorization")).map(|h| h.value.to_string());
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                seen.push((req.method().to_string(), req.url().to_owned(), auth.clone(), body));
                let answer = format!("echo: {}", auth.unwrap_or_default());
                let _ = req.respond(tiny_http::Response::from_string(answer).with_status_code(status));
            }
            seen
        });
        (url, handle)
    }

    #[test]
    fn http_sends_each_artifact_with_its_credential() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{CANARY}\n")).expect("key");
        let (url, seen) = server(201, 2);
        let e = env(
            http(&format!("{url}/deploy/"), HttpAuth::Bearer, Payload::Artifacts),
            &[("key", CredentialSource::File("key".into()), None)],
        );
        let done = deploy(&deployment(&store), &e, dir.path(), &store, 0).expect("deploy");
        assert_eq!(done.detail, format!("sent 2 artifacts to {url}/deploy/"));
        let seen = seen.join().expect("server");
        assert_eq!(seen[0].0, "PUT");
        assert_eq!(seen[0].1, "/deploy/site.tar.gz");
        assert_eq!(seen[0].2.as_deref(), Some(format!("Bearer {CANARY}").as_str()));
        assert_eq!(seen[0].3, b"archive");
        assert_eq!(seen[1].1, "/deploy/docs/read%20me.txt");
        assert!(!format!("{done:?}").contains(CANARY));
    }

    #[test]
    fn http_sends_a_manifest_with_basic_auth_and_scrubs_refusals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        std::fs::write(dir.path().join("basic"), format!("deployer:{CANARY}")).expect("key");
        let (url, seen) = server(500, 1);
        let e = env(
            http(&url, HttpAuth::Basic, Payload::Manifest),
            &[("key", CredentialSource::File("basic".into()), None)],
        );
        let err = deploy(&deployment(&store), &e, dir.path(), &store, 0).expect_err("the server refuses").to_string();
        let seen = seen.join().expect("server");
        let sent: serde_json::Value = serde_json::from_slice(&seen[0].3).expect("a JSON manifest");
        assert_eq!(sent["artifacts"][1]["path"], "docs/read me.txt");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("deployer:{CANARY}"));
        assert_eq!(seen[0].2.as_deref(), Some(format!("Basic {basic}").as_str()));
        assert!(err.contains("the server answered 500"), "{err}");
        assert!(!err.contains(&basic) && !err.contains(CANARY), "the echoed credential is scrubbed: {err}");
    }

    #[test]
    fn a_credential_is_read_from_the_engines_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let (url, seen) = server(200, 1);
        // Cargo sets this variable for every test process.
        let e = env(
            http(&url, HttpAuth::Bearer, Payload::Manifest),
            &[("key", CredentialSource::Env("CARGO_PKG_NAME".into()), None)],
        );
        deploy(&deployment(&store), &e, dir.path(), &store, 0).expect("deploy");
        assert_eq!(seen.join().expect("server")[0].2.as_deref(), Some("Bearer airlock-host"));
    }

    #[test]
    fn missing_and_expired_credentials_stop_a_deploy_before_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let (url, seen) = server(200, 0);
        let provider = || http(&url, HttpAuth::Bearer, Payload::Artifacts);
        let cases = [
            (
                CredentialSource::Env("AIRLOCK_TEST_SURELY_UNSET".into()),
                None,
                "environment variable `AIRLOCK_TEST_SURELY_UNSET` is not set",
            ),
            (CredentialSource::File("absent.key".into()), None, "absent.key`"),
            (CredentialSource::File("key".into()), Some(1_000), "expired on 1970-01-01T00:00:01Z"),
        ];
        std::fs::write(dir.path().join("key"), CANARY).expect("key");
        for (source, expires, message) in cases {
            let e = env(provider(), &[("key", source, expires)]);
            let err = deploy(&deployment(&store), &e, dir.path(), &store, 5_000).expect_err("refused").to_string();
            assert!(err.contains("credential `key` of environment `staging`") && err.contains(message), "{err}");
        }
        drop(seen);
    }

    #[test]
    fn what_a_command_prints_of_a_credential_is_scrubbed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        std::fs::write(dir.path().join("k"), CANARY).expect("key");
        let argv = vec!["/bin/sh".into(), "-c".into(), "echo using $AIRLOCK_CREDENTIAL_KEY".into()];
        let provider =
            Provider::Command { argv, timeout: std::time::Duration::from_secs(10), credentials: vec!["key".into()] };
        let e = env(provider, &[("key", CredentialSource::File("k".into()), None)]);
        let done = deploy(&deployment(&store), &e, dir.path(), &store, 0).expect("deploy");
        assert!(done.detail.contains("using [credential]"), "{}", done.detail);
        assert!(!done.detail.contains(CANARY));
    }

    #[test]
    fn credential_report_names_states_without_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("k"), CANARY).expect("key");
        let day = 86_400_000;
        let e = env(
            Provider::Directory { path: "www".into(), keep: 1 },
            &[
                ("fresh", CredentialSource::File("k".into()), Some(100 * day)),
                ("soon", CredentialSource::File("k".into()), Some(3 * day)),
                ("old", CredentialSource::File("k".into()), Some(day / 2)),
                ("gone", CredentialSource::Env("AIRLOCK_TEST_SURELY_UNSET".into()), None),
            ],
        );
        let envs: indexmap::IndexMap<String, Environment> = [("staging".to_owned(), e)].into_iter().collect();
        let report = check_all(&envs, dir.path(), day, 7);
        let states: Vec<(&str, &str)> = report.iter().map(|r| (r.name.as_str(), r.state)).collect();
        assert_eq!(states, [("fresh", "ok"), ("gone", "missing"), ("old", "expired"), ("soon", "expiring")]);
        assert_eq!(report[3].days_left, Some(2));
        assert!(!serde_json::to_string(&report).expect("json").contains(CANARY));
    }
}
