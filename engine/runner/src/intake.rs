//! Deliveries into runs: for each webhook delivery the server recorded,
//! fetch the exact commit, read the repository's pipeline files from
//! it, and submit those whose `on:` takes the event.
//!
//! The server answers the forge once a delivery is on disk; this worker
//! does the slow part after, one delivery at a time, oldest first. A
//! delivery left `received` by an engine that died is taken again when
//! the next one starts, and its runs are keyed by delivery and file, so
//! none starts twice.
//!
//! Trust is decided here, from the policy: a push of a branch or tag it
//! trusts runs trusted; anything else (another branch, any pull request
//! from a fork, a pull request whose branch is not trusted) runs
//! untrusted, and its publish and deploy steps are refused. Pull requests
//! the policy does not take (`pull_requests: off`, or a stranger's fork
//! under `members`) start nothing.

use crate::queue::{QueueError, RepositoryRun, RunQueue};
use airlock_host::checkout::{Checkouts, Remote};
use airlock_host::forge::Event;
use airlock_model::TriggerEvent;
use airlock_model::policy::{FirstTime, PullRequests, Repository};
use airlock_store::{DeliveryRecord, DeliveryState, Origin};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Pipeline files read from one commit, at most.
pub const MAX_PIPELINE_FILES: usize = 64;

/// How a delivery ended, as recorded.
#[derive(Debug)]
struct Outcome {
    state: DeliveryState,
    runs: Vec<String>,
    detail: Option<String>,
}

impl Outcome {
    fn ignored(why: impl Into<String>) -> Self {
        Self { state: DeliveryState::Ignored, runs: Vec::new(), detail: Some(why.into()) }
    }

    fn failed(why: impl Into<String>) -> Self {
        Self { state: DeliveryState::Failed, runs: Vec::new(), detail: Some(why.into()) }
    }

    fn waiting(why: impl Into<String>) -> Self {
        Self { state: DeliveryState::Waiting, runs: Vec::new(), detail: Some(why.into()) }
    }
}

/// Turns recorded deliveries into runs on a queue.
pub struct Intake {
    queue: Arc<RunQueue>,
    checkouts: Checkouts,
}

impl Intake {
    /// An intake that submits to `queue`, with the repositories of its
    /// engine's policy.
    pub fn new(queue: Arc<RunQueue>) -> Self {
        let checkouts = queue.checkouts().clone();
        Self { queue, checkouts }
    }

    /// Handles every delivery still `received`, then waits for
    /// `recorded` to say there are more, until `shutdown`.
    pub async fn serve(self: Arc<Self>, recorded: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let pending: Vec<DeliveryRecord> = match self.queue.engine().store().received_deliveries() {
                Ok(left) => left,
                Err(e) => {
                    tracing::error!("cannot read the recorded deliveries: {e}");
                    Vec::new()
                }
            };
            for delivery in pending {
                if shutdown.is_cancelled() {
                    return;
                }
                let intake = self.clone();
                let handled = tokio::task::spawn_blocking(move || intake.handle(&delivery)).await;
                if let Ok(Err(e)) = handled {
                    tracing::error!("a delivery was left to the next start: {e}");
                }
            }
            tokio::select! {
                () = recorded.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Handles one delivery to its end and records how it ended.
    pub fn handle(&self, delivery: &DeliveryRecord) -> Result<DeliveryState, QueueError> {
        let outcome = match self.runs_of(delivery) {
            Ok(outcome) => outcome,
            // The server is stopping: the delivery stays `received`.
            Err(QueueError::Stopping) => return Err(QueueError::Stopping),
            Err(e) => Outcome::failed(e.to_string()),
        };
        let store = self.queue.engine().store();
        let record =
            store.finish_delivery(&delivery.repository, &delivery.id, outcome.state, outcome.runs, outcome.detail)?;
        store.flush()?;
        tracing::info!(
            repository = delivery.repository,
            delivery = delivery.id,
            runs = record.runs.len(),
            "delivery {}{}",
            record.state.as_str(),
            record.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
        );
        Ok(record.state)
    }

    fn runs_of(&self, delivery: &DeliveryRecord) -> Result<Outcome, QueueError> {
        let name = &delivery.repository;
        let policy = self.queue.engine().policy.clone();
        let Some(repository) = policy.as_ref().and_then(|p| p.0.repositories.get(name)) else {
            return Ok(Outcome::failed(format!("the policy has no repository `{name}` any more")));
        };
        let policy_dir = policy.as_ref().map(|p| p.1.clone()).unwrap_or_default();
        let event: Event = match serde_json::from_value(delivery.event.clone()) {
            Ok(e) => e,
            Err(e) => return Ok(Outcome::failed(format!("the recorded event cannot be read: {e}"))),
        };
        let plan = match plan(repository, &event, delivery.approved_by.is_some()) {
            Ok(plan) => plan,
            Err(ignored) => return Ok(ignored),
        };
        let token = match &repository.token {
            Some(t) => match airlock_host::forge::read_secret(t, "the repository's token", &policy_dir) {
                Ok(t) => Some(t),
                Err(why) => return Ok(Outcome::failed(why)),
            },
            None => None,
        };
        let remote = Remote {
            forge: repository.forge,
            url: &repository.url,
            token: token.as_ref().map(|t| t.expose()),
            submodules: repository.submodules,
        };
        let commit = match &plan.commit {
            Some(commit) => commit.clone(),
            None => match self.checkouts.resolve(name, &remote, &plan.git_ref) {
                Ok(commit) => commit,
                Err(e) => return Ok(Outcome::failed(e.to_string())),
            },
        };
        let checkout = match self.checkouts.fetch(name, &remote, &commit, plan.since.as_deref()) {
            Ok(c) => c,
            Err(e) => return Ok(Outcome::failed(e.to_string())),
        };
        drop(token);
        let files = match self.checkouts.files(name, &commit) {
            Ok(files) => files,
            Err(e) => return Ok(Outcome::failed(e.to_string())),
        };
        let patterns: Vec<globset::GlobMatcher> =
            repository.pipelines.iter().filter_map(|p| airlock_model::policy::ref_glob(p)).collect();
        let pipelines: Vec<&String> =
            files.iter().filter(|f| patterns.iter().any(|p| p.is_match(f.as_str()))).take(MAX_PIPELINE_FILES).collect();
        if pipelines.is_empty() {
            return Ok(Outcome::ignored(format!(
                "no file of commit {} matches the repository's pipelines ({})",
                short(&commit),
                repository.pipelines.join(", ")
            )));
        }
        let changed = checkout.changed.as_deref();
        let trigger = match &plan.on {
            On::Push { name, tag } => TriggerEvent::Push { name, tag: *tag, changed },
            On::PullRequest { base } => TriggerEvent::PullRequest { base, changed },
            On::Manual => TriggerEvent::Manual,
        };
        let mut runs = Vec::new();
        for file in pipelines {
            let source = match self.checkouts.read_file(name, &commit, file) {
                Ok(Some(bytes)) => {
                    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text, as pipeline files must be".to_owned())
                }
                Ok(None) => continue,
                Err(e) => Err(airlock_model::text::one_line(&e.to_string(), 500)),
            };
            let origin = Origin {
                repository: name.clone(),
                event: plan.kind.into(),
                git_ref: plan.git_ref.clone(),
                commit: commit.clone(),
                pull_request: plan.pull_request,
                sender: plan.sender.clone(),
                delivery: Some(delivery.id.clone()),
                tree: checkout.tree.clone(),
                // A run by hand of a user the policy does not trust is
                // untrusted, whatever its ref.
                untrusted: plan.untrusted.clone().or_else(|| {
                    let user = plan.requester.as_deref()?;
                    policy.as_ref().and_then(|p| p.0.untrusted_user(user))
                }),
            };
            let run = RepositoryRun {
                pipeline: file.clone(),
                source,
                origin,
                requester: plan.requester.clone().unwrap_or_else(|| format!("forge:{name}")),
                key: format!("delivery:{}:{file}", delivery.id),
            };
            if let Some(record) = self.queue.submit_repository(run, &trigger)? {
                runs.push(record.id);
            }
        }
        if runs.is_empty() {
            return Ok(Outcome::ignored("no pipeline's `on:` takes this event"));
        }
        Ok(Outcome { state: DeliveryState::Started, runs, detail: None })
    }
}

/// The event as a pipeline's `on:` sees it.
#[derive(Debug)]
enum On {
    /// A branch (or tag) by its short name.
    Push { name: String, tag: bool },
    /// A pull request into the branch `base`.
    PullRequest { base: String },
    /// Asked for through the API.
    Manual,
}

/// What a delivery asks to run, once the policy agreed to run it.
#[derive(Debug)]
struct Plan {
    kind: &'static str,
    on: On,
    git_ref: String,
    /// The commit to run, or None for the one `git_ref` points at when
    /// the forge is asked.
    commit: Option<String>,
    /// The commit to tell changed paths against.
    since: Option<String>,
    pull_request: Option<u64>,
    sender: String,
    /// The user who asked for the run, when a user did.
    requester: Option<String>,
    untrusted: Option<String>,
}

/// Decides whether and how an event runs, by the repository's policy;
/// `approved` when a user let the delivery start its runs.
fn plan(repository: &Repository, event: &Event, approved: bool) -> Result<Plan, Outcome> {
    match event {
        Event::Push { git_ref, commit, before, sender } => {
            let (name, tag) = ref_name(git_ref);
            Ok(Plan {
                kind: "push",
                on: On::Push { name: name.to_owned(), tag },
                git_ref: git_ref.clone(),
                commit: Some(commit.clone()),
                since: if tag { None } else { before.clone() },
                pull_request: None,
                sender: sender.clone(),
                requester: None,
                untrusted: untrusted_ref(repository, name, tag),
            })
        }
        // A run by hand is trusted as a push of its ref would be: the
        // person asks for what the branch or tag holds, not for a commit.
        Event::Manual { git_ref, sender } => {
            let (name, tag) = ref_name(git_ref);
            Ok(Plan {
                kind: "manual",
                on: On::Manual,
                git_ref: git_ref.clone(),
                commit: None,
                since: None,
                pull_request: None,
                sender: sender.clone(),
                requester: Some(sender.clone()),
                untrusted: untrusted_ref(repository, name, tag),
            })
        }
        Event::PullRequest { number, commit, head_ref, base_ref, base_commit, fork, member, first_time, sender } => {
            match repository.pull_requests {
                PullRequests::Off => {
                    return Err(Outcome::ignored("the policy runs no pull requests of this repository"));
                }
                PullRequests::Members if *fork && !*member => {
                    return Err(Outcome::ignored(format!(
                        "pull request #{number} comes from a fork by `{sender}`, who is not a member; \
                         the policy runs such pull requests only with `pull_requests: forks`"
                    )));
                }
                _ => {}
            }
            if *first_time && repository.first_time_contributors == FirstTime::Approve && !approved {
                return Err(Outcome::waiting(format!(
                    "pull request #{number} is the first of `{sender}` here; the policy runs it once a user \
                     with the `runner` role approves this delivery"
                )));
            }
            let untrusted = if *fork {
                Some(format!("pull request #{number} comes from a fork"))
            } else if !repository.trusted.trusts(head_ref, false) {
                Some(format!("pull request #{number}: branch `{head_ref}` is not one the policy trusts"))
            } else {
                None
            };
            Ok(Plan {
                kind: "pull_request",
                on: On::PullRequest { base: base_ref.clone() },
                git_ref: head_ref.clone(),
                commit: Some(commit.clone()),
                since: base_commit.clone(),
                pull_request: Some(*number),
                sender: sender.clone(),
                requester: None,
                untrusted,
            })
        }
        Event::Ignored { what } => {
            Err(Outcome::ignored(format!("{what}: airlock starts runs on pushes and pull requests")))
        }
    }
}

/// A ref's branch or tag name, and whether it is a tag.
fn ref_name(git_ref: &str) -> (&str, bool) {
    match git_ref.strip_prefix("refs/tags/") {
        Some(tag) => (tag, true),
        None => (git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref), false),
    }
}

/// Why a branch or tag runs untrusted, if it does.
fn untrusted_ref(repository: &Repository, name: &str, tag: bool) -> Option<String> {
    (!repository.trusted.trusts(name, tag))
        .then(|| format!("{} `{name}` is not one the policy trusts", if tag { "tag" } else { "branch" }))
}

/// The first 12 digits of a commit id.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(pull_requests: &str) -> Repository {
        let policy = format!(
            "repositories:\n  r:\n    forge: github\n    url: https://forge.invalid/team/r.git\n    \
             webhook_secret: {{ env: S }}\n    trusted: {{ branches: [main, \"release/*\"], tags: [\"v*\"] }}\n    \
             pull_requests: {pull_requests}\n"
        );
        let policy = airlock_model::policy::load_policy("policy.yaml", &policy).expect("policy");
        policy.repositories["r"].clone()
    }

    const C: &str = "0123456789abcdef0123456789abcdef01234567";

    fn push(git_ref: &str) -> Event {
        Event::Push { git_ref: git_ref.into(), commit: C.into(), before: None, sender: "ann".into() }
    }

    fn pull(fork: bool, member: bool, head: &str) -> Event {
        Event::PullRequest {
            number: 7,
            commit: C.into(),
            head_ref: head.into(),
            base_ref: "main".into(),
            base_commit: None,
            fork,
            member,
            first_time: fork && !member,
            sender: "mal".into(),
        }
    }

    #[test]
    fn only_what_the_policy_trusts_runs_trusted() {
        let r = repository("members");
        let trust = |e: &Event| plan(&r, e, false).map(|p| p.untrusted).map_err(|o| o.detail.unwrap_or_default());
        assert_eq!(trust(&push("refs/heads/main")), Ok(None));
        assert_eq!(trust(&push("refs/heads/release/1.0")), Ok(None));
        assert_eq!(trust(&push("refs/tags/v1.2")), Ok(None));
        assert!(trust(&push("refs/heads/feature")).expect("runs").expect("untrusted").contains("branch `feature`"));
        assert!(trust(&push("refs/tags/nightly")).expect("runs").expect("untrusted").contains("tag `nightly`"));
        // A run by hand is trusted as a push of its ref, and never names
        // its commit: the forge is asked.
        let manual = |r: &str| Event::Manual { git_ref: r.into(), sender: "rita".into() };
        assert_eq!(trust(&manual("refs/heads/main")), Ok(None));
        assert!(trust(&manual("refs/heads/topic")).expect("runs").expect("untrusted").contains("branch `topic`"));
        let by_hand = plan(&r, &manual("refs/tags/v1"), false).expect("runs");
        assert_eq!((by_hand.commit, by_hand.requester.as_deref()), (None, Some("rita")));
        // A branch of the repository named like a trusted one is still a
        // pull request's code only when it is not a fork's.
        assert_eq!(trust(&pull(false, true, "main")), Ok(None));
        assert!(trust(&pull(false, true, "topic")).expect("runs").is_some());
        assert!(trust(&pull(true, true, "main")).expect("runs").expect("untrusted").contains("fork"));
        // A stranger's fork starts nothing under `members`, runs
        // untrusted under `forks`, and nothing starts under `off`.
        assert!(trust(&pull(true, false, "main")).expect_err("ignored").contains("not a member"));
        let forks = repository("forks");
        assert!(plan(&forks, &pull(true, false, "main"), false).expect("runs").untrusted.is_some());
        let off = repository("off");
        assert!(plan(&off, &push("refs/heads/main"), false).is_ok());
        assert!(plan(&off, &pull(false, true, "main"), false).is_err());
    }

    #[test]
    fn a_first_time_contributor_waits_for_approval_when_the_policy_says() {
        let mut r = repository("forks");
        let stranger = pull(true, false, "patch-1");
        assert!(plan(&r, &stranger, false).is_ok(), "`run` is the default");
        r.first_time_contributors = FirstTime::Approve;
        let held = plan(&r, &stranger, false).expect_err("held");
        assert_eq!(held.state, DeliveryState::Waiting);
        assert!(held.detail.expect("why").contains("first of `mal`"));
        // Approved, it runs, and still untrusted.
        assert!(plan(&r, &stranger, true).expect("runs").untrusted.is_some());
        // A member's pull request, and a push, never wait.
        assert!(plan(&r, &pull(false, true, "topic"), false).is_ok());
        assert!(plan(&r, &push("refs/heads/topic"), false).is_ok());
    }
}
