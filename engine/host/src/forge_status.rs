//! Commit statuses: telling the forge how a run of one of its commits
//! went, with the repository's token, through the forge's REST API.
//!
//! Each forge has its own request: GitHub and Gitea take
//! `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `state`,
//! `target_url`, `description` and `context` (GitHub with a bearer
//! token, Gitea with `Authorization: token ...`); GitLab takes
//! `POST {api}/projects/{id}/statuses/{sha}` with `state`, `target_url`,
//! `description` and `name`, its project id being the path with its `/`
//! escaped, and the token in `PRIVATE-TOKEN`. A failure is a value with
//! the forge's own words; the token is in none of them.

use airlock_model::policy::{Forge, Repository};
use std::time::Duration;

/// The longest one report may take, connecting included.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// GitHub keeps at most this many characters of a description.
const MAX_DESCRIPTION: usize = 140;
/// Most bytes of the forge's answer kept for a message.
const MAX_ANSWER: u64 = 4 << 10;

/// What a commit status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// The run is queued or running.
    Pending,
    /// It succeeded.
    Success,
    /// It failed (or its pipeline is not valid at this commit).
    Failure,
    /// It was cancelled.
    Cancelled,
}

impl CommitState {
    /// The word each forge takes for it.
    pub fn word(self, forge: Forge) -> &'static str {
        match (self, forge) {
            (Self::Pending, _) => "pending",
            (Self::Success, _) => "success",
            (Self::Failure, Forge::Gitlab) => "failed",
            (Self::Failure, _) => "failure",
            (Self::Cancelled, Forge::Gitlab) => "canceled",
            // GitHub and Gitea have no word for it; `error` is the
            // closest that is not the code's fault.
            (Self::Cancelled, _) => "error",
        }
    }
}

/// One status to report.
#[derive(Debug, Clone)]
pub struct CommitStatus<'a> {
    /// The commit.
    pub commit: &'a str,
    /// What it says.
    pub state: CommitState,
    /// What the forge shows under it (cut to what it keeps).
    pub description: &'a str,
    /// Which of the repository's checks this is: `airlock/PIPELINE`.
    pub context: &'a str,
    /// The run's page.
    pub target_url: Option<&'a str>,
}

/// Sends one commit status with `token`. The error says what the forge
/// answered, or why it could not be reached.
pub fn report(repository: &Repository, token: &str, status: &CommitStatus<'_>) -> Result<(), String> {
    let api = repository.api_base();
    let forge = repository.forge;
    let project = &repository.project;
    let mut description: String = status.description.chars().take(MAX_DESCRIPTION).collect();
    if description.is_empty() {
        description = status.state.word(forge).into();
    }
    let mut body = serde_json::json!({ "state": status.state.word(forge), "description": description });
    if let Some(url) = status.target_url {
        body["target_url"] = url.into();
    }
    let (url, auth) = match forge {
        Forge::Github => {
            body["context"] = status.context.into();
            (format!("{api}/repos/{project}/statuses/{}", status.commit), ("authorization", format!("Bearer {token}")))
        }
        Forge::Gitea => {
            body["context"] = status.context.into();
            (format!("{api}/repos/{project}/statuses/{}", status.commit), ("authorization", format!("token {token}")))
        }
        Forge::Gitlab => {
            body["name"] = status.context.into();
            let id = percent_encoding::utf8_percent_encode(project, percent_encoding::NON_ALPHANUMERIC);
            (format!("{api}/projects/{id}/statuses/{}", status.commit), ("private-token", token.to_owned()))
        }
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REPORT_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
        .build()
        .into();
    let accept = if forge == Forge::Github { "application/vnd.github+json" } else { "application/json" };
    let mut request = agent
        .post(&url)
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("user-agent", concat!("airlock/", env!("CARGO_PKG_VERSION")))
        .header(auth.0, &auth.1);
    if forge == Forge::Github {
        request = request.header("x-github-api-version", "2022-11-28");
    }
    let response = request.send(body.to_string()).map_err(|e| format!("cannot reach `{url}`: {e}"))?;
    let code = response.status().as_u16();
    if (200..300).contains(&code) {
        return Ok(());
    }
    let text = response.into_body().with_config().limit(MAX_ANSWER).read_to_string().unwrap_or_default();
    let said = airlock_model::text::one_line(text.trim(), 300);
    Err(format!("`{url}` answered {code}{}{said}", if said.is_empty() { "" } else { ": " }))
}
