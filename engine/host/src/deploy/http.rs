//! The `http` provider: artifacts, or a JSON manifest of them, sent to a
//! URL with a bearer or basic credential.

use super::{DeployError, Deployed, Deployment, Secret};
use crate::ArtifactStore;
use airlock_model::policy::{HttpAuth, HttpMethod, Payload};
use base64::Engine as _;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::time::Duration;

/// How long one request may take, sending and answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of a refusal's body is kept for the message.
const MAX_ANSWER: u64 = 2048;
/// What is encoded in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?').add(b'<').add(b'>').add(b'`');

/// The `http` provider.
pub(super) struct Http {
    pub(super) url: String,
    pub(super) method: HttpMethod,
    pub(super) auth: HttpAuth,
    pub(super) payload: Payload,
}

impl super::DeployProvider for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn target(&self) -> String {
        self.url.clone()
    }

    fn deploy(
        &self,
        d: &Deployment,
        secrets: &[(String, Secret)],
        artifacts: &ArtifactStore,
        _now_ms: u64,
    ) -> Result<Deployed, DeployError> {
        let secret = secrets.first().map(|(_, s)| s);
        deploy(d, &self.url, self.method, self.auth, secret, self.payload, artifacts)
    }
}

fn deploy(
    d: &Deployment,
    url: &str,
    method: HttpMethod,
    auth: HttpAuth,
    secret: Option<&Secret>,
    payload: Payload,
    artifacts: &ArtifactStore,
) -> Result<Deployed, DeployError> {
    let fail =
        |target: &str, message: String| DeployError::Provider { provider: "http", target: target.to_owned(), message };
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(REQUEST_TIMEOUT)).http_status_as_error(false).build().into();
    let authorization = match (auth, secret) {
        (HttpAuth::None, _) => None,
        (HttpAuth::Bearer, Some(s)) => Some(format!("Bearer {}", s.expose())),
        (HttpAuth::Basic, Some(s)) => {
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s.expose())))
        }
        (_, None) => return Err(fail(url, "the policy names no credential for its `auth`".into())),
    };
    let request = |target: &str| {
        let mut r = match method {
            HttpMethod::Put => agent.put(target),
            HttpMethod::Post => agent.post(target),
        };
        if let Some(a) = &authorization {
            r = r.header("authorization", a);
        }
        // One deployment, one key: a receiver that sees the same key twice
        // is seeing a retry of the same deployment, never a new one.
        r.header("x-airlock-environment", &d.environment)
            .header("x-airlock-run", &d.run)
            .header("idempotency-key", d.idempotency_key())
    };
    let check = |target: &str, answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        let mut answer = answer.map_err(|e| fail(target, e.to_string()))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(status);
        }
        let body = answer.body_mut().with_config().limit(MAX_ANSWER).read_to_string().unwrap_or_default();
        Err(fail(target, format!("the server answered {status}: {}", airlock_model::text::one_line(&body, 500))))
    };
    match payload {
        Payload::Manifest => {
            let json = serde_json::to_vec(d).unwrap_or_default();
            let status = check(url, request(url).header("content-type", "application/json").send(&json[..]))?;
            Ok(Deployed {
                provider: "http",
                target: url.to_owned(),
                detail: format!("sent the manifest of {} artifacts; the server answered {status}", d.artifacts.len()),
            })
        }
        Payload::Artifacts => {
            let base = url.trim_end_matches('/');
            for a in &d.artifacts {
                crate::publish::check_path(&a.path).map_err(|e| fail(url, e.to_string()))?;
                let target = format!("{base}/{}", utf8_percent_encode(&a.path, SEGMENT));
                let artifact_error = |source| DeployError::Artifact { path: a.path.clone(), source };
                let blob = artifacts.local(&a.sha256).map_err(artifact_error)?;
                // The bytes sent are checked against the digest approved.
                artifacts.verify(&a.sha256).map_err(artifact_error)?;
                let file = std::fs::File::open(&blob).map_err(|e| fail(&target, e.to_string()))?;
                check(
                    &target,
                    request(&target)
                        .header("content-type", "application/octet-stream")
                        .header("x-airlock-sha256", &a.sha256)
                        .send(file),
                )?;
            }
            Ok(Deployed {
                provider: "http",
                target: url.to_owned(),
                detail: format!("sent {} artifacts to {base}/", d.artifacts.len()),
            })
        }
    }
}
