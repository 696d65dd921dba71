//! What a run reports as it goes, and what it leaves at its end.

use super::Shared;
use airlock_store::{
    ApprovalArtifact, CacheCheck, CachedRecord, DeployedRecord, OutputRecord, PublishedRecord, RunRecord, RunState,
    StepRecord, StepState,
};
use serde::Serialize;

/// What happened, as it happens: for progress displays and `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Progress {
    /// The run was recorded and starts.
    RunStarted {
        /// Its id.
        run: String,
        /// Its steps, in pipeline order.
        steps: Vec<String>,
    },
    /// An attempt of a step started.
    StepStarted {
        /// The step.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// A step is being made ready to run: a tool fetched or unpacked, a
    /// large plugin compiled for the first time.
    StepPreparing {
        /// The step.
        step: String,
        /// What is being done, in words.
        what: String,
        /// Bytes done so far, for work that has a size.
        #[serde(skip_serializing_if = "Option::is_none")]
        done: Option<u64>,
        /// Of how many, if known.
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// The step.
        step: String,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        reason: String,
        /// Wait before the next attempt, in ms.
        backoff_ms: u64,
    },
    /// A step reached its end state.
    StepFinished {
        /// The step.
        step: String,
        /// `succeeded`, `failed`, `skipped` or `cancelled`.
        state: StepState,
        /// Wall time of all its attempts, in ms.
        duration_ms: u64,
        /// Why it did not succeed.
        reason: Option<String>,
        /// Its outputs.
        outputs: Vec<OutputRecord>,
        /// Whether its log was cut at the limit.
        log_truncated: bool,
        /// What a publish step published.
        #[serde(skip_serializing_if = "Option::is_none")]
        published: Option<PublishedRecord>,
        /// What a deploy or approval step did.
        #[serde(skip_serializing_if = "Option::is_none")]
        deployed: Option<Box<DeployedRecord>>,
        /// The step whose outputs it took, when the step cache had them.
        #[serde(skip_serializing_if = "Option::is_none")]
        cached: Option<CachedRecord>,
        /// A cache hit run anyway to check the cache, and its outcome.
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_check: Option<CacheCheck>,
    },
    /// A step asks people to approve a deployment. The one-time code is
    /// shown here and nowhere else; the store keeps only its digest.
    ApprovalRequested {
        /// The run.
        run: String,
        /// The step that waits.
        step: String,
        /// The environment.
        environment: String,
        /// Its provider.
        provider: String,
        /// Where it would deploy.
        target: String,
        /// What, by digest.
        artifacts: Vec<ApprovalArtifact>,
        /// Who asked.
        requester: String,
        /// Approvals needed.
        required: u64,
        /// Who may decide.
        approvers: Vec<String>,
        /// Until when (ms since the epoch).
        deadline_ms: u64,
        /// The one-time code approvers give `airlock approve`.
        code: String,
    },
    /// The run ended.
    RunFinished {
        /// Its id.
        run: String,
        /// How it ended.
        state: RunState,
        /// Why it failed, if it did.
        reason: Option<String>,
    },
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run as recorded.
    pub run: RunRecord,
    /// Its steps as recorded.
    pub steps: Vec<StepRecord>,
}

pub(crate) fn emit_finished(shared: &Shared, record: &StepRecord, log_truncated: bool) {
    let duration_ms = match (record.started_ms, record.ended_ms) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    shared.metrics.step_finished(record.state, duration_ms);
    (shared.observer)(&Progress::StepFinished {
        step: record.name.clone(),
        state: record.state,
        duration_ms,
        reason: record.reason.clone(),
        outputs: record.outputs.clone(),
        log_truncated,
        published: record.published.clone(),
        deployed: record.deployed.clone().map(Box::new),
        cached: record.cached.clone(),
        cache_check: record.cache_check.clone(),
    });
}
