//! Credentials: read by the engine at the moment of a deployment, from
//! where the policy says, checked before anything happens, and kept in
//! values that never print themselves.

use airlock_model::policy::{CredentialSource, Environment};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A secret value. It has no `Display`, and its `Debug` shows nothing of
/// it, so a secret cannot reach a log or a message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from the environment or a file.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why an environment's credentials cannot be used. No variant holds a
/// secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Past its expiry, as the policy states it.
    #[error(
        "credential `{name}` of environment `{environment}` expired on {when}; renew it and update `expires` in the policy"
    )]
    Expired {
        /// The environment.
        environment: String,
        /// The credential.
        name: String,
        /// When it expired, RFC 3339.
        when: String,
    },
    /// The engine's environment variable is not set or is empty.
    #[error(
        "credential `{name}` of environment `{environment}` is missing: the engine's environment variable `{var}` is not set"
    )]
    MissingEnv {
        /// The environment.
        environment: String,
        /// The credential.
        name: String,
        /// The variable.
        var: String,
    },
    /// The file cannot be read or is empty.
    #[error("credential `{name}` of environment `{environment}` is missing: cannot read `{file}`: {why}")]
    MissingFile {
        /// The environment.
        environment: String,
        /// The credential.
        name: String,
        /// The file.
        file: String,
        /// What went wrong.
        why: String,
    },
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Reads one credential, or says why it cannot be used.
pub fn read(
    environment: &str,
    name: &str,
    env: &Environment,
    policy_dir: &Path,
    now_ms: u64,
) -> Result<Secret, CredentialError> {
    let Some(c) = env.credentials.get(name) else {
        // Validation makes every credential a provider names exist.
        return Err(CredentialError::MissingEnv {
            environment: environment.into(),
            name: name.into(),
            var: "(not in the policy)".into(),
        });
    };
    if let Some(expires) = c.expires_ms
        && expires <= now_ms
    {
        return Err(CredentialError::Expired {
            environment: environment.into(),
            name: name.into(),
            when: rfc3339(expires),
        });
    }
    read_source(&c.source, policy_dir).map_err(|missing| match missing {
        Unreadable::Env(var) => CredentialError::MissingEnv { environment: environment.into(), name: name.into(), var },
        Unreadable::File { file, why } => {
            CredentialError::MissingFile { environment: environment.into(), name: name.into(), file, why }
        }
    })
}

/// The value at a credential's source: the engine's environment
/// variable, or a file (relative to the policy's directory) without its
/// trailing line break; never empty. Why there is none, in words that
/// finish "the policy's `KEY` …".
pub fn read_credential(source: &CredentialSource, policy_dir: &Path) -> Result<Secret, String> {
    read_source(source, policy_dir).map_err(|missing| match missing {
        Unreadable::Env(var) => format!("is in the environment variable {var}, which is not set or empty"),
        Unreadable::File { file, why } => format!("is in {file}, which cannot be read: {why}"),
    })
}

/// Why a credential's source gave no value.
pub(crate) enum Unreadable {
    /// The engine's environment variable is not set or is empty.
    Env(String),
    /// The file cannot be read or is empty.
    File {
        /// The file, as resolved.
        file: String,
        /// What went wrong.
        why: String,
    },
}

/// The value at a credential's source: the engine's environment
/// variable, or a file (relative to the policy's directory) without its
/// trailing line break; never empty.
pub(crate) fn read_source(source: &CredentialSource, policy_dir: &Path) -> Result<Secret, Unreadable> {
    match source {
        CredentialSource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            _ => Err(Unreadable::Env(var.clone())),
        },
        CredentialSource::File(file) => {
            let path = policy_dir.join(file);
            let missing = |why: String| Unreadable::File { file: path.display().to_string(), why };
            let text = std::fs::read_to_string(&path).map_err(|e| missing(e.to_string()))?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(missing("the file is empty".into()));
            }
            Ok(Secret(value))
        }
    }
}

/// How one credential stands, for `airlock env check`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CredentialStatus {
    /// The environment.
    pub environment: String,
    /// The credential.
    pub name: String,
    /// `ok`, `expiring`, `expired` or `missing`.
    pub state: &'static str,
    /// When it expires, RFC 3339, when the policy says.
    pub expires: Option<String>,
    /// Days left, when the policy gives an expiry.
    pub days_left: Option<i64>,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// Every credential of every environment: present or not, and how long
/// it has left. `expiring` means within `within_days`. No value is read
/// into the report.
pub fn check_all(
    environments: &indexmap::IndexMap<String, Environment>,
    policy_dir: &Path,
    now_ms: u64,
    within_days: u64,
) -> Vec<CredentialStatus> {
    let mut out = Vec::new();
    for (env_name, env) in environments {
        let names: BTreeMap<&String, _> = env.credentials.iter().collect();
        for (name, c) in names {
            let days_left = c.expires_ms.map(|e| (e as i64 - now_ms as i64).div_euclid(86_400_000));
            let (state, problem) = match read(env_name, name, env, policy_dir, now_ms) {
                Err(e @ CredentialError::Expired { .. }) => ("expired", Some(e.to_string())),
                Err(e) => ("missing", Some(e.to_string())),
                Ok(_) if c.expires_ms.is_some_and(|e| e <= now_ms + within_days * 86_400_000) => ("expiring", None),
                Ok(_) => ("ok", None),
            };
            out.push(CredentialStatus {
                environment: env_name.clone(),
                name: name.clone(),
                state,
                expires: c.expires_ms.map(rfc3339),
                days_left,
                problem,
            });
        }
    }
    out
}

/// Replaces every occurrence of a secret in `text` (an answer from a
/// server, a program's output) before it is shown or recorded: as it is,
/// and in base64, the form HTTP basic authentication sends.
pub fn redact(text: &str, secrets: &[&Secret]) -> String {
    use base64::Engine as _;
    let mut out = text.to_owned();
    for s in secrets {
        if s.0.len() >= 4 {
            out = out.replace(&s.0, "[credential]");
            out = out.replace(&base64::engine::general_purpose::STANDARD.encode(&s.0), "[credential]");
        }
    }
    out
}
