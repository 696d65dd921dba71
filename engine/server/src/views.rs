//! What the API answers with: views of the store's records, made here,
//! with only what a client may see.
//!
//! The store's records are how airlock keeps its state; these are the
//! API's contract, described in its OpenAPI document. Keeping them apart
//! means a field added to a record (a code's digest, a salt, when an
//! effect began) is not sent to every viewer until it is put here on
//! purpose, and a change of storage is not a change of the API.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Submitted, waiting for its turn.
    Queued,
    /// Steps are being scheduled.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed; its dependants were skipped.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        airlock_store::RunState::from(self).as_str()
    }
}

impl From<airlock_store::RunState> for RunState {
    fn from(s: airlock_store::RunState) -> Self {
        use airlock_store::RunState as S;
        match s {
            S::Queued => Self::Queued,
            S::Running => Self::Running,
            S::Succeeded => Self::Succeeded,
            S::Failed => Self::Failed,
            S::Cancelled => Self::Cancelled,
        }
    }
}

impl From<RunState> for airlock_store::RunState {
    fn from(s: RunState) -> Self {
        match s {
            RunState::Queued => Self::Queued,
            RunState::Running => Self::Running,
            RunState::Succeeded => Self::Succeeded,
            RunState::Failed => Self::Failed,
            RunState::Cancelled => Self::Cancelled,
        }
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for the steps it needs.
    Pending,
    /// In the sandbox, or its outputs being taken out.
    Running,
    /// Waiting before a retry.
    Retrying,
    /// Done, outputs stored.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
    /// Not run because a step it needs did not succeed.
    Skipped,
    /// Stopped, or never started, because the run was cancelled.
    Cancelled,
}

impl StepState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl From<airlock_store::StepState> for StepState {
    fn from(s: airlock_store::StepState) -> Self {
        use airlock_store::StepState as S;
        match s {
            S::Pending => Self::Pending,
            S::Running => Self::Running,
            S::Retrying => Self::Retrying,
            S::Succeeded => Self::Succeeded,
            S::Failed => Self::Failed,
            S::Skipped => Self::Skipped,
            S::Cancelled => Self::Cancelled,
        }
    }
}

/// A step of a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// Its name in the pipeline.
    pub name: String,
    /// Where it is.
    pub state: StepState,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the first attempt started (ms since the epoch).
    pub started_ms: Option<u64>,
    /// When it reached an end state.
    pub ended_ms: Option<u64>,
    /// Why it failed, was skipped or cancelled, or why its last attempt failed.
    pub reason: Option<String>,
    /// sha256 of the plugin that ran.
    pub plugin_sha256: Option<String>,
    /// Its outputs, by path.
    pub outputs: Vec<Output>,
    /// What a publish step published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    /// What a deploy or approval step did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<Deployed>,
    /// When a deploy step handed its artifacts to its provider: from then
    /// on the deployment may have happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_started_ms: Option<u64>,
    /// The step's cache key: the sha256 of everything it saw (a
    /// deterministic plugin step's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// The step whose outputs it took, when the step cache had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<Cached>,
    /// A cache hit run anyway to check the cache (the policy's
    /// `step_cache.verify_percent`), and whether it made the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_check: Option<CacheCheck>,
}

/// A step run although the cache had it, to check the cache.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CacheCheck {
    /// The run whose step's outputs the cache held.
    pub run: String,
    /// That step's name.
    pub step: String,
    /// Whether the step made the same bytes again.
    pub same: bool,
}

/// Where a cached step's outputs came from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Cached {
    /// The run whose step made them.
    pub run: String,
    /// That step's name.
    pub step: String,
    /// The cache scope they were in: `trusted`, or `untrusted:WHO` for
    /// an entry an untrusted run of WHO wrote.
    pub scope: String,
}

impl From<&airlock_store::StepRecord> for Step {
    fn from(s: &airlock_store::StepRecord) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state.into(),
            attempts: s.attempts,
            started_ms: s.started_ms,
            ended_ms: s.ended_ms,
            reason: s.reason.clone(),
            plugin_sha256: s.plugin_sha256.clone(),
            outputs: s
                .outputs
                .iter()
                .map(|o| Output { path: o.path.clone(), sha256: o.sha256.clone(), size: o.size })
                .collect(),
            published: s.published.as_ref().map(|p| Published {
                target: p.target.clone(),
                build: p.build.clone(),
                files: p.files,
                bytes: p.bytes,
                uploaded: p.uploaded,
                created: p.created,
                provenance: p.provenance.clone(),
            }),
            deployed: s.deployed.as_ref().map(|d| Deployed {
                environment: d.environment.clone(),
                provider: d.provider.clone(),
                target: d.target.clone(),
                detail: d.detail.clone(),
                artifacts: d.artifacts,
                approval: d.approval.clone(),
                provenance: d.provenance.clone(),
            }),
            effect_started_ms: s.effect_started_ms,
            cache_key: s.cache_key.clone(),
            cached: s.cached.as_ref().map(|c| Cached {
                run: c.run.clone(),
                step: c.step.clone(),
                scope: c.scope.clone(),
            }),
            cache_check: s.cache_check.as_ref().map(|c| CacheCheck {
                run: c.run.clone(),
                step: c.step.clone(),
                same: c.same,
            }),
        }
    }
}

/// An output of a step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Output {
    /// Its path in the step's workspace, `/`-separated.
    pub path: String,
    /// sha256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a publish step published.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Published {
    /// The publish target.
    pub target: String,
    /// The build id.
    pub build: String,
    /// Files in the tree.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs the target did not have and got.
    pub uploaded: u64,
    /// False when the same tree was published under the build id before.
    pub created: bool,
    /// The sha256 of its signed provenance (served beside the tree, as
    /// `/TARGET/BUILD.intoto.jsonl`), when the policy signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// What a deploy or approval step did.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Deployed {
    /// The environment.
    pub environment: String,
    /// The provider that deployed, for a deploy step.
    pub provider: Option<String>,
    /// Where it deployed.
    pub target: Option<String>,
    /// What happened, in a line.
    pub detail: String,
    /// Artifacts deployed or approved.
    pub artifacts: u64,
    /// How the approval ended, and by whom, when one was needed.
    pub approval: Option<String>,
    /// The sha256 of the deployment's signed provenance (an artifact),
    /// when the policy signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// Where an approval request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for decisions.
    Pending,
    /// Enough approvals.
    Approved,
    /// Someone denied it.
    Denied,
    /// Not enough approvals before the deadline: denied.
    TimedOut,
    /// The run was cancelled while the request waited.
    Cancelled,
}

impl ApprovalState {
    /// The name in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed out",
            Self::Cancelled => "cancelled",
        }
    }
}

impl From<airlock_store::ApprovalState> for ApprovalState {
    fn from(s: airlock_store::ApprovalState) -> Self {
        use airlock_store::ApprovalState as S;
        match s {
            S::Pending => Self::Pending,
            S::Approved => Self::Approved,
            S::Denied => Self::Denied,
            S::TimedOut => Self::TimedOut,
            S::Cancelled => Self::Cancelled,
        }
    }
}

/// An approval request: exactly what would happen, who may decide, and
/// the decisions so far. Never its one-time code, nor anything made from
/// it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    /// The run.
    pub run: String,
    /// The step that waits.
    pub step: String,
    /// The environment.
    pub environment: String,
    /// What would deploy (`http`, `directory`, `command`).
    pub provider: String,
    /// Where it would deploy.
    pub target: String,
    /// What it would deploy.
    pub artifacts: Vec<Output>,
    /// Who asked.
    pub requester: String,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub required: u64,
    /// Whether the requester may be one of them.
    pub requester_may_approve: bool,
    /// When it was asked.
    pub created_ms: u64,
    /// When it times out, which denies it.
    pub deadline_ms: u64,
    /// Where it is.
    pub state: ApprovalState,
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
    /// When it reached its end state.
    pub decided_ms: Option<u64>,
}

impl From<&airlock_store::ApprovalRecord> for Approval {
    fn from(a: &airlock_store::ApprovalRecord) -> Self {
        Self {
            run: a.run.clone(),
            step: a.step.clone(),
            environment: a.environment.clone(),
            provider: a.provider.clone(),
            target: a.target.clone(),
            artifacts: a
                .artifacts
                .iter()
                .map(|x| Output { path: x.path.clone(), sha256: x.sha256.clone(), size: x.size })
                .collect(),
            requester: a.requester.clone(),
            approvers: a.approvers.clone(),
            required: a.required,
            requester_may_approve: a.requester_may_approve,
            created_ms: a.created_ms,
            deadline_ms: a.deadline_ms,
            state: a.state.into(),
            decisions: a
                .decisions
                .iter()
                .map(|d| Decision {
                    user: d.user.clone(),
                    approve: d.approve,
                    reason: d.reason.clone(),
                    at_ms: d.at_ms,
                })
                .collect(),
            decided_ms: a.decided_ms,
        }
    }
}

/// One person's decision on a request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// Who (a user of the policy).
    pub user: String,
    /// Approve, or deny.
    pub approve: bool,
    /// Why, as they said.
    pub reason: Option<String>,
    /// When.
    pub at_ms: u64,
}

/// A publish token, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Token {
    /// Its id, e.g. `tok-3f9a61c2...`: revoke it by this.
    pub id: String,
    /// What it allows, e.g. `publish:snapshots/pr-481-`.
    pub scope: String,
    /// `active`, `not yet valid`, `expired` or `revoked`, now.
    pub state: String,
    /// When it was made.
    pub created_ms: u64,
    /// Not usable before.
    pub not_before_ms: u64,
    /// Not usable from.
    pub expires_ms: u64,
    /// Calls at most.
    pub max_calls: Option<u64>,
    /// Files at most.
    pub max_files: Option<u64>,
    /// Bytes at most.
    pub max_bytes: Option<u64>,
    /// Addresses it may be used from, e.g. `127.0.0.1/32`.
    pub cidr: Option<String>,
    /// Calls made with it.
    pub used_calls: u64,
    /// Files charged to it.
    pub used_files: u64,
    /// Bytes charged to it.
    pub used_bytes: u64,
    /// When it was revoked.
    pub revoked_ms: Option<u64>,
    /// Who asked for it, or what for.
    pub note: Option<String>,
    /// The run it was minted for, when the engine minted it for a step.
    pub run: Option<String>,
}

impl From<&airlock_store::TokenRecord> for Token {
    fn from(t: &airlock_store::TokenRecord) -> Self {
        Self {
            id: t.id.clone(),
            scope: t.scope.to_string(),
            state: t.state(airlock_store::now_ms()).to_owned(),
            created_ms: t.created_ms,
            not_before_ms: t.not_before_ms,
            expires_ms: t.expires_ms,
            max_calls: t.max_calls,
            max_files: t.max_files,
            max_bytes: t.max_bytes,
            cidr: t.cidr.clone(),
            used_calls: t.used.calls,
            used_files: t.used.files,
            used_bytes: t.used.bytes,
            revoked_ms: t.revoked_ms,
            note: t.note.clone(),
            run: t.run.clone(),
        }
    }
}

/// Where a run of a repository's pipeline came from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    /// The repository, by the policy's name for it.
    pub repository: String,
    /// `push`, `pull_request` or `manual`.
    pub event: String,
    /// The ref pushed (`refs/heads/NAME`, `refs/tags/NAME`), or the pull
    /// request's branch.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The exact commit the run builds.
    pub commit: String,
    /// The pull request's number.
    pub pull_request: Option<u64>,
    /// Who pushed, opened the pull request or asked for the run.
    pub sender: String,
    /// The delivery that started the run (the forge's id, or `manual-…`).
    pub delivery: Option<String>,
    /// Why the run may not publish or deploy; none for a trusted run.
    pub untrusted: Option<String>,
}

impl From<&airlock_store::Origin> for Origin {
    fn from(o: &airlock_store::Origin) -> Self {
        Self {
            repository: o.repository.clone(),
            event: o.event.clone(),
            git_ref: o.git_ref.clone(),
            commit: o.commit.clone(),
            pull_request: o.pull_request,
            sender: o.sender.clone(),
            delivery: o.delivery.clone(),
            untrusted: o.untrusted.clone(),
        }
    }
}

/// What the forge was last told of the run's commit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ForgeStatus {
    /// The state sent, in the forge's word (`pending`, `success`, ...).
    pub state: String,
    /// Whether the forge took it.
    pub delivered: bool,
    /// Attempts made for this state.
    pub attempts: u32,
    /// Why the last attempt failed, while not delivered.
    pub error: Option<String>,
    /// When the last attempt was made (ms since the epoch).
    pub at_ms: u64,
}

impl From<airlock_store::ForgeStatus> for ForgeStatus {
    fn from(s: airlock_store::ForgeStatus) -> Self {
        Self { state: s.state, delivered: s.delivered, attempts: s.attempts, error: s.error, at_ms: s.at_ms }
    }
}

/// A delivery from the forge, or a run asked for by hand, and what it
/// became.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    /// The repository, by the policy's name for it.
    pub repository: String,
    /// Its id: the forge's, or `manual-…` for one asked for through the API.
    pub id: String,
    /// When it was recorded (ms since the epoch).
    pub received_ms: u64,
    /// `push`, `pull_request`, `manual`, or `ignored` for an event
    /// airlock does not run on.
    pub event: String,
    /// The ref it is about, when it names one.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Who caused it.
    pub sender: Option<String>,
    /// `received` (its runs are still to be started), `started`,
    /// `ignored`, `failed`, or `waiting` for a user to approve it.
    pub state: String,
    /// The runs it started.
    pub runs: Vec<String>,
    /// Why it started nothing, or what it waits for.
    pub detail: Option<String>,
    /// The user who approved it, when it had to wait.
    pub approved_by: Option<String>,
}

impl From<&airlock_store::DeliveryRecord> for Delivery {
    fn from(d: &airlock_store::DeliveryRecord) -> Self {
        let text = |name: &str| d.event.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            repository: d.repository.clone(),
            id: d.id.clone(),
            received_ms: d.received_ms,
            event: text("kind").unwrap_or_default(),
            git_ref: text("ref").or_else(|| text("head_ref")),
            sender: text("sender"),
            state: d.state.as_str().to_owned(),
            runs: d.runs.clone(),
            detail: d.detail.clone(),
            approved_by: d.approved_by.clone(),
        }
    }
}
