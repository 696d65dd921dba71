//! Commit statuses of repository runs: `pending` when a run is queued,
//! then how it ended, sent to the repository's forge with its token.
//!
//! A report that fails is tried again with growing pauses
//! ([`BACKOFF`]); each attempt is recorded (the store's
//! [`ForgeStatus`](airlock_store::ForgeStatus), shown with the run), and
//! none of it ever changes the run's own outcome. The reports of one run
//! go out one after another, so a slow `pending` cannot land after the
//! final state; a `pending` whose run has ended meanwhile is not sent.

use crate::queue::RunQueue;
use airlock_host::forge_status::{self, CommitState, CommitStatus};
use airlock_store::{ForgeStatus, RunRecord, RunState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The pauses between attempts: about a minute and a half in all.
pub const BACKOFF: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];

/// The reports under way, one lock per run.
#[derive(Default)]
pub(crate) struct Reports {
    runs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Reports {
    fn lock_of(&self, run: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner).entry(run.to_owned()).or_default().clone()
    }

    fn done(&self, run: &str) {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner).remove(run);
    }
}

/// What the forge is told of a run in this state, in a few words.
fn status_of(run: &RunRecord) -> (CommitState, String) {
    let took = run
        .ended_ms
        .map(|end| humantime::format_duration(Duration::from_secs(end.saturating_sub(run.created_ms) / 1000)));
    match run.state {
        RunState::Queued => (CommitState::Pending, "queued".into()),
        RunState::Running => (CommitState::Pending, "running".into()),
        RunState::Succeeded => {
            (CommitState::Success, took.map_or_else(|| "succeeded".into(), |t| format!("succeeded in {t}")))
        }
        RunState::Failed => {
            let reason = run.reason.as_deref().map(|r| r.lines().next().unwrap_or(r)).unwrap_or("a step failed");
            (CommitState::Failure, format!("failed: {reason}"))
        }
        RunState::Cancelled => (CommitState::Cancelled, "cancelled".into()),
    }
}

impl RunQueue {
    /// Tells the forge where `run` is, in the background, if it is a run
    /// of a repository that has a token.
    pub(crate) fn report_status(&self, run: &RunRecord) {
        let Some(origin) = run.submission.as_ref().and_then(|s| s.origin.clone()) else { return };
        let Some(policy) = self.engine().policy.clone() else { return };
        let Some(repository) = policy.0.repositories.get(&origin.repository).cloned() else { return };
        let Some(token) = repository.token.clone() else { return };
        let (state, description) = status_of(run);
        let context = format!("airlock/{}", run.pipeline);
        let target = self.public_url().map(|base| format!("{base}/ui/runs/{}", run.id));
        let (reports, id, commit) = (self.reports.clone(), run.id.clone(), origin.commit);
        let store = self.engine().store().clone();
        let lock = reports.lock_of(&id);
        tokio::spawn(async move {
            let _one_at_a_time = lock.lock().await;
            let word = state.word(repository.forge).to_owned();
            let mut status = ForgeStatus { state: word, delivered: false, attempts: 0, error: None, at_ms: 0 };
            for pause in BACKOFF.iter().map(Some).chain([None]) {
                let ended = store.run(&id).ok().flatten().is_some_and(|r| r.state.is_final());
                if state == CommitState::Pending && ended {
                    return;
                }
                let (repository, token, dir) = (repository.clone(), token.clone(), policy.1.clone());
                let (commit, description, context, target) =
                    (commit.clone(), description.clone(), context.clone(), target.clone());
                let sent = tokio::task::spawn_blocking(move || {
                    let token = airlock_host::forge::read_secret(&token, "the repository's token", &dir)?;
                    let status = CommitStatus {
                        commit: &commit,
                        state,
                        description: &description,
                        context: &context,
                        target_url: target.as_deref(),
                    };
                    forge_status::report(&repository, token.expose(), &status)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the report stopped: {e}")));
                status.attempts += 1;
                status.at_ms = airlock_store::now_ms();
                status.delivered = sent.is_ok();
                status.error = sent.err();
                if let Err(e) = store.set_forge_status(&id, &status) {
                    tracing::warn!("run {id}: cannot record its commit status: {e}");
                }
                match (&status.error, pause) {
                    (None, _) => {
                        tracing::info!("run {id}: commit status `{}` reported", status.state);
                        break;
                    }
                    (Some(why), Some(pause)) => {
                        tracing::warn!("run {id}: commit status not reported ({why}); trying again in {pause:?}");
                        tokio::time::sleep(*pause).await;
                    }
                    (Some(why), None) => {
                        tracing::error!(
                            "run {id}: commit status not reported after {} attempts: {why}",
                            status.attempts
                        );
                    }
                }
            }
            if state != CommitState::Pending {
                reports.done(&id);
            }
        });
    }
}
