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

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback forge that answers each request with the next of
    /// `codes` and hands over what it was sent: request line, headers
    /// (lowercase names) and JSON body.
    type Seen = (String, Vec<(String, String)>, serde_json::Value);

    fn forge(codes: Vec<u16>) -> (String, std::sync::mpsc::Receiver<Seen>) {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (code, mut req) in codes.into_iter().zip(server.incoming_requests()) {
                let headers =
                    req.headers().iter().map(|h| (h.field.to_string().to_ascii_lowercase(), h.value.to_string()));
                let headers = headers.collect();
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
                let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
                let _ = tx.send((format!("{} {}", req.method(), req.url()), headers, body));
                let answer = if code < 300 { "{}" } else { r#"{"message":"sha not found"}"# };
                let _ = req.respond(tiny_http::Response::from_string(answer).with_status_code(code));
            }
        });
        (url, rx)
    }

    fn repository(forge: &str, url: &str) -> Repository {
        let policy = format!(
            "repositories:\n  r:\n    forge: {forge}\n    url: {url}\n    webhook_secret: {{ env: S }}\n    \
             token: {{ env: T }}\n"
        );
        airlock_model::policy::load_policy("policy.yaml", &policy).expect("policy").repositories["r"].clone()
    }

    fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
        seen.1.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    const SHA: &str = "bffeb74224043ba2feb48d137756c8a9331c449a";
    const TOKEN: &str = "canary-status-token-77aa";

    fn status(state: CommitState) -> CommitStatus<'static> {
        CommitStatus {
            commit: SHA,
            state,
            description: "run 20261205-1 succeeded",
            context: "airlock/ci",
            target_url: Some("https://ci.example/ui/runs/20261205-1"),
        }
    }

    /// Gitea's `POST /repos/{owner}/{repo}/statuses/{sha}` (its API
    /// reference: `CreateStatusOption` of state, target_url, description
    /// and context; states pending, success, error, failure, warning),
    /// at the API under the clone URL's origin.
    #[test]
    fn gitea_is_sent_its_own_request() {
        let (url, seen) = forge(vec![201; 4]);
        let r = repository("gitea", &format!("{url}/team/blinky.git"));
        for (state, word) in [
            (CommitState::Pending, "pending"),
            (CommitState::Success, "success"),
            (CommitState::Failure, "failure"),
            (CommitState::Cancelled, "error"),
        ] {
            report(&r, TOKEN, &status(state)).expect("reported");
            let got = seen.recv().expect("a request");
            assert_eq!(got.0, format!("POST /api/v1/repos/team/blinky/statuses/{SHA}"));
            assert_eq!(header(&got, "authorization"), Some(format!("token {TOKEN}").as_str()));
            assert_eq!(header(&got, "content-type"), Some("application/json"));
            let mut keys: Vec<&str> = got.2.as_object().expect("object").keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["context", "description", "state", "target_url"]);
            assert_eq!((got.2["state"].as_str(), got.2["context"].as_str()), (Some(word), Some("airlock/ci")));
        }
    }

    /// GitLab's `POST /projects/:id/statuses/:sha` (its Commits API:
    /// state pending, running, success, failed, canceled, skipped; name,
    /// target_url, description; the project id URL-encoded; the token in
    /// `PRIVATE-TOKEN`), and a refusal, said with GitLab's words and
    /// without the token.
    #[test]
    fn gitlab_is_sent_its_own_request_and_a_refusal_is_said() {
        let (url, seen) = forge(vec![201, 201, 201, 201, 404]);
        let r = repository("gitlab", &format!("{url}/group/sub/blinky.git"));
        for (state, word) in [
            (CommitState::Pending, "pending"),
            (CommitState::Success, "success"),
            (CommitState::Failure, "failed"),
            (CommitState::Cancelled, "canceled"),
        ] {
            report(&r, TOKEN, &status(state)).expect("reported");
            let got = seen.recv().expect("a request");
            assert_eq!(got.0, format!("POST /api/v4/projects/group%2Fsub%2Fblinky/statuses/{SHA}"));
            assert_eq!(header(&got, "private-token"), Some(TOKEN));
            assert_eq!(header(&got, "authorization"), None);
            let mut keys: Vec<&str> = got.2.as_object().expect("object").keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["description", "name", "state", "target_url"]);
            assert_eq!((got.2["state"].as_str(), got.2["name"].as_str()), (Some(word), Some("airlock/ci")));
        }
        let e = report(&r, TOKEN, &status(CommitState::Success)).expect_err("refused");
        assert!(e.contains("answered 404") && e.contains("sha not found"), "{e}");
        assert!(!e.contains(TOKEN), "{e}");
    }
}
