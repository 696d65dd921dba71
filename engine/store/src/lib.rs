//! airlock's durable state: runs, their steps, every state transition with
//! its time, step logs, the index of artifacts by sha256, and the tokens
//! the engine has issued (by digest; see [`Scope`]), and approval
//! requests with their decisions (see [`ApprovalRecord`]).
//!
//! This is the only crate that touches the database: sled in the state
//! directory by default, or PostgreSQL (see [`postgres`]). Each of the
//! store's operations is written once, against ordered trees of keys and
//! values that both provide, and its tests run on both. Records are
//! JSON, so they can be inspected and migrated with ordinary tools.
//!
//! A transition is written before the engine acts on it. A step's record
//! and its history are one sled value, so a write changes both or neither
//! and the two never disagree. sled makes writes durable in batches
//! (within half a second); [`Store::flush`] makes everything written so far
//! durable at once, and callers flush before any effect others can see.
//! (A sled transaction per transition would sync the log each time: on
//! this project's reference machine that doubled what a step costs.)
//!
//! ```
//! use airlock_store::{RunState, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path()).unwrap();
//! let run = store.create_run("site", "pipelines/site.yaml", Default::default(), &["build".into()]).unwrap();
//! assert_eq!(store.run(&run.id).unwrap().unwrap().state, RunState::Running);
//! ```

mod approvals;
mod deliveries;
mod jobs;
mod kv;
mod leases;
pub mod postgres;
mod sessions;
mod step_cache;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tokens;

pub use approvals::{ApprovalArtifact, ApprovalError, ApprovalRecord, ApprovalState, Decision, hash_code, new_code};
pub use deliveries::{DeliveryRecord, DeliveryState, ForgeStatus};
pub use jobs::{Awaited, JobRecord, JobRefusal, JobState, WaitingClaim, job_id};
pub use leases::{DEFAULT_LEASE, Lease, LeaseCounts, Signal};
pub use sessions::SessionRefusal;
pub use step_cache::{CacheEntry, TRUSTED_SCOPE, untrusted_scope};

pub use tokens::{
    ACTIONS, MAX_TTL_MS, Scope, TOKEN_PREFIX, TokenError, TokenRecord, TokenSpec, TokenUsage, TokenUse,
    USER_TOKEN_PREFIX, new_user_token, user_token_digest,
};

use kv::{Tree, TxError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, or the directory is locked by another
    /// airlock process).
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    /// PostgreSQL failed, or could not be reached.
    #[error("state database: {0}")]
    Database(String),
    /// A record could not be read back.
    #[error("state store record `{key}` is damaged: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong with it.
        source: serde_json::Error,
    },
    /// No run with that id (or prefix).
    #[error("no run `{0}`")]
    NoRun(String),
    /// A prefix matched several runs.
    #[error("`{prefix}` matches {count} runs; give more of the id")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// How many runs it matches.
        count: usize,
    },
    /// No token with that id.
    #[error("no token `{0}`; `airlock token list` shows them")]
    NoToken(String),
    /// Several tokens share an id (made by an older airlock, whose ids
    /// were short): revoking by it could hit the wrong one.
    #[error(
        "{count} tokens have the id `{id}`; nothing was revoked (revoke them by letting them expire, or make new ones)"
    )]
    AmbiguousToken {
        /// The id given.
        id: String,
        /// How many tokens have it.
        count: usize,
    },
    /// No delivery with that id for the repository.
    #[error("no delivery `{id}` of repository `{repository}`")]
    NoDelivery {
        /// The repository.
        repository: String,
        /// The delivery id.
        id: String,
    },
    /// A delivery that is not waiting for approval was to be approved.
    #[error("delivery `{id}` is {state}, not waiting for approval; only a waiting delivery is approved")]
    NotWaiting {
        /// The delivery id.
        id: String,
        /// Where it is.
        state: &'static str,
    },
    /// This engine no longer holds the run it wrote to: its lease
    /// expired and another engine claimed the run (see [`Lease`]).
    #[error(
        "run `{0}` is now in the hands of another engine (this one's lease on it expired); this engine stops working on it"
    )]
    LeaseLost(String),
    /// No step with that name in the run.
    #[error("run `{run}` has no step `{step}`")]
    NoStep {
        /// The run.
        run: String,
        /// The step asked for.
        step: String,
    },
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Submitted to a server, waiting for its turn.
    Queued,
    /// Steps are being scheduled.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed; its dependants were skipped.
    Failed,
    /// The run was stopped by the user.
    Cancelled,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for the steps it needs.
    Pending,
    /// In the sandbox (or its outputs being extracted).
    Running,
    /// Waiting before a retry.
    Retrying,
    /// Done, outputs stored.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
    /// Not run because a step it needs did not succeed.
    Skipped,
    /// Stopped or never started because the run was cancelled.
    Cancelled,
}

impl StepState {
    /// Whether the step has reached an end state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled)
    }

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

/// A run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Time-ordered id, e.g. `20261122-150353-7f3a`.
    pub id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline file as given.
    pub file: String,
    /// Parameter values of the run.
    pub params: BTreeMap<String, String>,
    /// Where it is.
    pub state: RunState,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Step names in pipeline order.
    pub steps: Vec<String>,
    /// How a server was asked for the run, so that a server that
    /// restarts can run it again from where it was. None for `airlock run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<Submission>,
}

/// A run submitted to `airlock serve`: what it needs to start or resume
/// the run without the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The pipeline file, relative to the server's pipelines directory.
    pub pipeline: String,
    /// The pipeline file's text when the run was submitted: a resumed
    /// run runs what was submitted, even if the file has changed since.
    pub source: String,
    /// Parameters as given, in order.
    pub params: Vec<(String, String)>,
    /// The user who submitted it.
    pub requester: String,
    /// The client's idempotency key, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The repository event that started it, for runs of a repository's
    /// pipelines; None for pipelines of the server's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a run of a repository's pipeline came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The repository, by the policy's name for it.
    pub repository: String,
    /// What happened: `push`, `pull_request` or `manual`.
    pub event: String,
    /// The ref: `refs/heads/NAME`, `refs/tags/NAME`, or the pull
    /// request's head branch.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The exact commit the run builds.
    pub commit: String,
    /// The pull request's number, for pull requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// Who pushed, opened the pull request or started the run.
    pub sender: String,
    /// The forge's delivery that started it (none for a manual run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// The git tree id of the commit: its files are the checkout
    /// `checkouts/trees/TREE` of the state directory.
    pub tree: String,
    /// Why the run is untrusted (it may not publish or deploy), or None
    /// when it is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<String>,
}

/// One file a step produced, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Path relative to the workspace, `/`-separated.
    pub path: String,
    /// sha256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Where it is.
    pub state: StepState,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the first attempt started.
    pub started_ms: Option<u64>,
    /// When it reached an end state.
    pub ended_ms: Option<u64>,
    /// Why it failed, was skipped or cancelled; or why the last attempt failed.
    pub reason: Option<String>,
    /// sha256 of the plugin that ran.
    pub plugin_sha256: Option<String>,
    /// Its outputs, sorted by path.
    pub outputs: Vec<OutputRecord>,
    /// What a publish step published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<PublishedRecord>,
    /// What a deploy or approval step did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedRecord>,
    /// When a deploy step handed its artifacts to the provider. Written
    /// and flushed before the provider is called: a step found with this
    /// set and no end state may have deployed, so it is never repeated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_started_ms: Option<u64>,
    /// The step's cache key: the sha256 of everything it saw (a
    /// deterministic plugin step's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Where its outputs came from, when the step cache had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<CachedRecord>,
    /// A cache hit that was run anyway (the policy's `step_cache`
    /// check), and whether it made the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_check: Option<CacheCheck>,
}

/// A step run although the cache had it, to check the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCheck {
    /// The step whose outputs the cache held: its run.
    pub run: String,
    /// Its name there.
    pub step: String,
    /// Whether this run made the same bytes.
    pub same: bool,
}

/// The step whose outputs a cached step took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedRecord {
    /// Its run.
    pub run: String,
    /// Its name there.
    pub step: String,
    /// The scope of the entry: `trusted` or `untrusted:WHO`.
    pub scope: String,
}

/// What a deploy step deployed (or an approval step had approved). Never
/// holds a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedRecord {
    /// The environment.
    pub environment: String,
    /// The provider that deployed, for a deploy step.
    pub provider: Option<String>,
    /// Where it deployed.
    pub target: Option<String>,
    /// What happened, in a line (scrubbed of credentials).
    pub detail: String,
    /// Artifacts deployed or approved.
    pub artifacts: u64,
    /// How the approval ended, and by whom, when one was needed.
    pub approval: Option<String>,
    /// The sha256 of the deployment's signed provenance (an artifact),
    /// when the policy has a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

/// What a publish step published, and with which token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRecord {
    /// The publish target.
    pub target: String,
    /// The build id.
    pub build: String,
    /// Files in the published tree.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs the target did not have and got.
    pub uploaded: u64,
    /// False when the same tree was already published under the build id.
    pub created: bool,
    /// The id of the token the engine minted for it (revoked since).
    pub token: String,
    /// The sha256 of the tree's signed provenance, when the policy has a
    /// signing key (a blob of the target, served beside the tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

impl StepRecord {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: StepState::Pending,
            attempts: 0,
            started_ms: None,
            ended_ms: None,
            reason: None,
            plugin_sha256: None,
            outputs: Vec::new(),
            published: None,
            deployed: None,
            effect_started_ms: None,
            cache_key: None,
            cached: None,
            cache_check: None,
        }
    }
}

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store's history: later events have larger numbers.
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The step concerned, or none for the run itself.
    pub step: Option<String>,
    /// The state entered.
    pub state: String,
    /// Detail: a reason, an attempt number.
    pub detail: Option<String>,
}

/// A step as stored: its record and every transition it went through.
#[derive(Serialize, Deserialize)]
struct StoredStep {
    record: StepRecord,
    history: Vec<Event>,
}

/// What the artifact index knows of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Size in bytes.
    pub size: u64,
    /// When it was first stored.
    pub first_seen_ms: u64,
}

/// A step's log for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The kept bytes.
    pub bytes: Vec<u8>,
    /// Bytes the guest wrote in all.
    pub written: u64,
}

/// The state store. Cheap to clone; all clones share one database.
///
/// Its records live in ordered trees of keys and values, in sled or in
/// PostgreSQL ([`Store::open_postgres`]): runs; steps (a step's
/// record and its history, by run and step); the run-level events; logs;
/// the artifact index; tokens by the sha256 of their secret, and their
/// ids (claimed first, so no two tokens share one); approval requests by
/// run and step; run ids by submitter and idempotency key; deliveries by
/// repository and id, and the keys of those still `received` (what the
/// intake has left to do, without a walk over every delivery); what the
/// forge was last told of each run; the step cache by scope and key.
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<kv::Db>,
    leases: std::sync::Arc<leases::Leases>,
    recent: std::sync::Arc<Recent>,
}

/// What this process wrote or saw last, so as not to ask the database
/// again: on PostgreSQL every question is a round trip.
#[derive(Default)]
struct Recent {
    /// Each unfinished step's record as this process last wrote it. A
    /// step's task is the only writer of its record, so its next change
    /// swaps from these bytes without reading them first; if anything
    /// else wrote the record meanwhile, the swap fails and the record is
    /// read.
    steps: std::sync::Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// Blobs known to be in the artifact index, which only grows.
    indexed: std::sync::Mutex<HashSet<String>>,
    /// Jobs this process offered and waits for; those an agent completed
    /// through this process, as completed (see [`Store::take_done_job`]).
    awaited: std::sync::Mutex<HashSet<String>>,
    done: std::sync::Mutex<HashMap<String, jobs::JobRecord>>,
    /// Jobs handed over from `done` whose rows are still being deleted
    /// in the background: to this process they are gone already.
    taken: std::sync::Mutex<HashSet<String>>,
    /// Agents' claims waiting in this process for a job to come (see
    /// [`Store::wait_for_job`]).
    waiting: jobs::Waiting,
}

/// At most this many entries in each of [`Recent`]'s maps; past that
/// one is emptied, and what it held is asked for again.
const RECENT: usize = 16_384;

impl Recent {
    fn step(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.steps.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).cloned()
    }

    fn wrote_step(&self, key: &[u8], value: Option<Vec<u8>>) {
        let mut steps = self.steps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(value) => {
                if steps.len() >= RECENT {
                    steps.clear();
                }
                steps.insert(key.to_vec(), value);
            }
            None => {
                steps.remove(key);
            }
        }
    }

    fn is_indexed(&self, sha256: &str) -> bool {
        self.indexed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(sha256)
    }

    fn indexed(&self, sha256: &str) {
        let mut indexed = self.indexed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if indexed.len() >= RECENT {
            indexed.clear();
        }
        indexed.insert(sha256.to_owned());
    }

    /// This process offered job `id` and waits for it.
    fn awaits(&self, id: &str) {
        let mut awaited = self.awaited.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if awaited.len() >= RECENT {
            awaited.clear();
        }
        awaited.insert(id.to_owned());
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// Job `id` was completed through this process: kept for the
    /// engine here that waits for it, if one does.
    fn completed(&self, job: &jobs::JobRecord) {
        if self.awaited.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&job.id) {
            self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(job.id.clone(), job.clone());
        }
    }

    /// Job `id`, if it was completed through this process; from then
    /// on it counts as taken until [`Recent::deleted`].
    fn take(&self, id: &str) -> Option<jobs::JobRecord> {
        let mut done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = done.remove(id)?;
        // Marked while `done` is still held, so no one sees the job in
        // neither place and asks the database, which still has it.
        let mut taken = self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if taken.len() >= RECENT {
            taken.clear();
        }
        taken.insert(id.to_owned());
        Some(job)
    }

    /// Job `id` was handed over here and its row may still be in the
    /// database.
    fn was_taken(&self, id: &str) -> bool {
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(id)
    }

    /// The row of taken job `id` is deleted.
    fn deleted(&self, id: &str) {
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// Job `id` is no longer waited for here (taken back, or completed
    /// through another process), and its row is gone or going.
    fn forget(&self, id: &str) {
        self.awaited.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }
}

fn step_key(run: &str, step: &str) -> Vec<u8> {
    [run.as_bytes(), b"\0", step.as_bytes()].concat()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), source })
}

impl Store {
    /// Opens (or creates) the store in `dir`, in sled.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            db: std::sync::Arc::new(kv::Db::sled(&dir.join("db"))?),
            leases: Default::default(),
            recent: Default::default(),
        })
    }

    /// Opens the store in a PostgreSQL database (`postgres://…`),
    /// creating its tables or bringing them up to this airlock's schema
    /// first; refused if the database holds a newer schema.
    pub fn open_postgres(url: &str) -> Result<Self> {
        let db = kv::Db::Postgres(Box::new(postgres::PgDb::open(url)?));
        Ok(Self { db: std::sync::Arc::new(db), leases: Default::default(), recent: Default::default() })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()
    }

    /// The same records, as another process would see them: no leases
    /// held, no name.
    #[cfg(test)]
    pub(crate) fn clone_unidentified(&self) -> Self {
        Self { db: self.db.clone(), leases: Default::default(), recent: Default::default() }
    }

    /// Whether the records are in a database several engines share
    /// (PostgreSQL), rather than in sled, which one process holds.
    pub fn is_shared(&self) -> bool {
        matches!(&*self.db, kv::Db::Postgres(_))
    }

    fn new_run_id(&self) -> String {
        #[cfg(test)]
        if let Some(id) = FORCED_RUN_IDS.with(|ids| ids.borrow_mut().pop()) {
            return id;
        }
        let secs = now_ms() / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        let suffix: u16 = rand::random();
        format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{suffix:04x}", rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// Records a new run in state `running`, with its steps pending.
    pub fn create_run(
        &self,
        pipeline: &str,
        file: &str,
        params: BTreeMap<String, String>,
        steps: &[String],
    ) -> Result<RunRecord> {
        self.insert_run(pipeline, file, params, steps, None).map(|(run, _)| run)
    }

    /// Records a run submitted to a server, `queued`, with its steps
    /// pending. With an idempotency key the submitter used before, answers
    /// the run that key made instead, and `false`.
    pub fn submit_run(
        &self,
        pipeline: &str,
        params: BTreeMap<String, String>,
        steps: &[String],
        submission: Submission,
    ) -> Result<(RunRecord, bool)> {
        let file = submission.pipeline.clone();
        self.insert_run(pipeline, &file, params, steps, Some(submission))
    }

    fn insert_run(
        &self,
        pipeline: &str,
        file: &str,
        params: BTreeMap<String, String>,
        steps: &[String],
        submission: Option<Submission>,
    ) -> Result<(RunRecord, bool)> {
        // A run id is the second it was made and a random 16-bit suffix:
        // two runs of the same second take the same id once in 65,536
        // pairs (a server taking a burst of submissions meets it). The
        // second then takes another suffix, unseen by the caller.
        let mut tries = 0;
        loop {
            match self.insert_run_once(pipeline, file, params.clone(), steps, submission.clone()) {
                Err(StoreError::Ambiguous { .. }) if tries < 8 => tries += 1,
                inserted => return inserted,
            }
        }
    }

    /// [`Store::insert_run`] with one id, `Ambiguous` if another run has it.
    fn insert_run_once(
        &self,
        pipeline: &str,
        file: &str,
        params: BTreeMap<String, String>,
        steps: &[String],
        submission: Option<Submission>,
    ) -> Result<(RunRecord, bool)> {
        let key = submission.as_ref().and_then(|s| Some(idempotency_key(&s.requester, s.key.as_deref()?)));
        let run = RunRecord {
            id: self.new_run_id(),
            pipeline: pipeline.to_owned(),
            file: file.to_owned(),
            params,
            state: if submission.is_some() { RunState::Queued } else { RunState::Running },
            created_ms: now_ms(),
            ended_ms: None,
            reason: None,
            steps: steps.to_vec(),
            submission,
        };
        let event_id = self.db.next_id()?;
        // A submitted run waits for an engine to claim it; a run of
        // `airlock run` is its engine's from the start (an engine that
        // has not said who it is takes no lease).
        let lease = match (&run.submission, self.me()) {
            (Some(_), _) => Some(None),
            (None, me) => me.map(Some),
        };
        let (record, created) =
            self.db.transaction(&[Tree::Runs, Tree::Steps, Tree::Events, Tree::Keys, Tree::Leases], |tx| {
                if let Some(key) = &key
                    && let Some(id) = tx.get(Tree::Keys, key)?
                    && let Some(existing) = tx.get(Tree::Runs, &id)?
                {
                    let existing: RunRecord = decode(&id, &existing)?;
                    return Ok((existing, false));
                }
                if tx.get(Tree::Runs, run.id.as_bytes())?.is_some() {
                    // Two runs in the same second with the same random
                    // suffix: `insert_run` tries another.
                    return Err(TxError::Abort(StoreError::Ambiguous { prefix: run.id.clone(), count: 2 }));
                }
                tx.insert(Tree::Runs, run.id.as_bytes(), encode(&run))?;
                if let Some(key) = &key {
                    tx.insert(Tree::Keys, key, run.id.as_bytes().to_vec())?;
                }
                for step in steps {
                    let stored = StoredStep { record: StepRecord::new(step), history: Vec::new() };
                    tx.insert(Tree::Steps, &step_key(&run.id, step), encode(&stored))?;
                }
                let event = Event {
                    seq: event_id,
                    at_ms: run.created_ms,
                    step: None,
                    state: run.state.as_str().into(),
                    detail: None,
                };
                tx.insert(Tree::Events, &event_key(&run.id, event_id), encode(&event))?;
                if let Some(holder) = lease {
                    tx.offer_lease(&run.id, holder, event_id)?;
                }
                Ok((run.clone(), true))
            })?;
        match lease {
            Some(Some(_)) if created => self.hold(&Lease { run: record.id.clone(), fence: 1, taken_over: false }),
            Some(None) if created => self.signal(&Signal::Work)?,
            _ => {}
        }
        Ok((record, created))
    }

    /// Moves a run that has not ended to `state` (`running` when its turn
    /// comes, or when a restarted server resumes it), recording why.
    pub fn set_run_state(&self, id: &str, state: RunState, detail: Option<String>) -> Result<RunRecord> {
        self.transition(id, state, detail, false)
    }

    /// Moves a run to `state`, recording the event.
    pub fn finish_run(&self, id: &str, state: RunState, reason: Option<String>) -> Result<RunRecord> {
        self.transition(id, state, reason, true)
    }

    fn transition(&self, id: &str, state: RunState, detail: Option<String>, end: bool) -> Result<RunRecord> {
        let event_id = self.db.next_id()?;
        let fence = self.fence(id);
        let run = self.db.transaction(&[Tree::Runs, Tree::Events, Tree::Leases], |tx| {
            tx.check_fence(id, fence)?;
            let Some(bytes) = tx.get(Tree::Runs, id.as_bytes())? else {
                return Err(TxError::Abort(StoreError::NoRun(id.to_owned())));
            };
            let mut run: RunRecord = decode(id.as_bytes(), &bytes)?;
            run.state = state;
            if end {
                run.reason = detail.clone();
                run.ended_ms = Some(now_ms());
            }
            tx.insert(Tree::Runs, id.as_bytes(), encode(&run))?;
            let event = Event {
                seq: event_id,
                at_ms: now_ms(),
                step: None,
                state: state.as_str().into(),
                detail: detail.clone(),
            };
            tx.insert(Tree::Events, &event_key(id, event_id), encode(&event))?;
            if end {
                tx.end_lease(id)?;
            }
            Ok(run)
        })?;
        if end {
            self.forget(id);
        }
        Ok(run)
    }

    /// Applies `change` to a step's record and records the transition, in
    /// one atomic write. Returns the new record.
    pub fn update_step(
        &self,
        run: &str,
        step: &str,
        detail: Option<String>,
        change: impl Fn(&mut StepRecord),
    ) -> Result<StepRecord> {
        let key = step_key(run, step);
        let mut known = self.recent.step(&key);
        loop {
            let old = match known.take() {
                Some(old) => old,
                None => match self.db.get(Tree::Steps, &key)? {
                    Some(old) => old,
                    None => return Err(StoreError::NoStep { run: run.into(), step: step.into() }),
                },
            };
            let mut stored: StoredStep = decode(&key, &old)?;
            let before = stored.record.state;
            change(&mut stored.record);
            if stored.record.state != before || detail.is_some() {
                stored.history.push(Event {
                    seq: self.db.next_id()?,
                    at_ms: now_ms(),
                    step: Some(step.into()),
                    state: stored.record.state.as_str().into(),
                    detail: detail.clone(),
                });
            }
            // Only the step's own task writes its record, so the swap fails
            // only if that rule is broken, or if the bytes it swapped from
            // were this process's last write and another (a server that
            // took the run over, a cancellation) wrote since; applying the
            // change again to what is there now is still right.
            let new = encode(&stored);
            let swapped = self.db.cas_fenced(self.fence(run).map(|f| (run, f)), Tree::Steps, &key, &old, new.clone());
            match swapped {
                Ok(Ok(())) => {
                    self.recent.wrote_step(&key, (!stored.record.state.is_final()).then_some(new));
                    return Ok(stored.record);
                }
                Ok(Err(_)) => self.recent.wrote_step(&key, None),
                Err(e) => {
                    self.recent.wrote_step(&key, None);
                    return Err(e);
                }
            }
        }
    }

    /// A run by id, or by a unique prefix of its id, or `last` for the newest.
    pub fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        if id_or_prefix == "last" {
            // Ids sort by their second, then by a random suffix: of the
            // runs of the newest second, the last created is the newest.
            let Some((k, _)) = self.db.last(Tree::Runs)? else { return Err(StoreError::NoRun("last".into())) };
            let second = &k[..k.len().min(15)];
            let mut newest: Option<RunRecord> = None;
            for (k, v) in self.db.scan_prefix(Tree::Runs, second, None)? {
                let run: RunRecord = decode(&k, &v)?;
                if newest.as_ref().is_none_or(|n| run.created_ms >= n.created_ms) {
                    newest = Some(run);
                }
            }
            return newest.ok_or_else(|| StoreError::NoRun("last".into()));
        }
        if let Some(run) = self.run(id_or_prefix)? {
            return Ok(run);
        }
        let mut found = Vec::new();
        for (k, v) in self.db.scan_prefix(Tree::Runs, id_or_prefix.as_bytes(), Some(2))? {
            found.push(decode::<RunRecord>(&k, &v)?);
        }
        match found.len() {
            0 => Err(StoreError::NoRun(id_or_prefix.into())),
            1 => Ok(found.remove(0)),
            _ => Err(StoreError::Ambiguous {
                prefix: id_or_prefix.into(),
                count: self.db.scan_prefix(Tree::Runs, id_or_prefix.as_bytes(), None)?.len(),
            }),
        }
    }

    /// A run by exact id.
    pub fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        self.db.get(Tree::Runs, id.as_bytes())?.map(|v| decode(id.as_bytes(), &v)).transpose()
    }

    /// All runs, newest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<RunRecord> =
            self.db.all(Tree::Runs)?.iter().map(|(k, v)| decode(k, v)).collect::<Result<_>>()?;
        // Within one second, ids are in random order; creation times are not.
        runs.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(runs)
    }

    /// A run's steps, in pipeline order.
    pub fn steps(&self, run: &RunRecord) -> Result<Vec<StepRecord>> {
        run.steps
            .iter()
            .map(|s| {
                let key = step_key(&run.id, s);
                match self.db.get(Tree::Steps, &key)? {
                    Some(v) => decode::<StoredStep>(&key, &v).map(|s| s.record),
                    None => Err(StoreError::NoStep { run: run.id.clone(), step: s.clone() }),
                }
            })
            .collect()
    }

    /// One step of a run.
    pub fn step(&self, run: &str, step: &str) -> Result<StepRecord> {
        let key = step_key(run, step);
        match self.db.get(Tree::Steps, &key)? {
            Some(v) => decode::<StoredStep>(&key, &v).map(|s| s.record),
            None => Err(StoreError::NoStep { run: run.into(), step: step.into() }),
        }
    }

    /// A run's history, oldest first: the run's own transitions and every
    /// step's.
    pub fn events(&self, run: &str) -> Result<Vec<Event>> {
        let prefix = [run.as_bytes(), b"\0"].concat();
        let mut events = self
            .db
            .scan_prefix(Tree::Events, &prefix, None)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect::<Result<Vec<Event>>>()?;
        for (k, v) in self.db.scan_prefix(Tree::Steps, &prefix, None)? {
            events.extend(decode::<StoredStep>(&k, &v)?.history);
        }
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    /// Stores the log of one attempt of a step.
    pub fn put_log(&self, run: &str, step: &str, log: &LogRecord) -> Result<()> {
        let key = log_key(run, step, log.attempt);
        let mut value = log.written.to_be_bytes().to_vec();
        value.extend_from_slice(&log.bytes);
        self.db.insert_fenced(self.fence(run).map(|f| (run, f)), Tree::Logs, &key, value)
    }

    /// Every attempt's log of a step, in order.
    pub fn logs(&self, run: &str, step: &str) -> Result<Vec<LogRecord>> {
        let prefix = [run.as_bytes(), b"\0", step.as_bytes(), b"\0"].concat();
        self.db
            .scan_prefix(Tree::Logs, &prefix, None)?
            .into_iter()
            .map(|(k, v)| {
                let attempt =
                    k.get(prefix.len()..).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
                let (written, bytes) = v.split_at(8.min(v.len()));
                let written = written.try_into().map(u64::from_be_bytes).unwrap_or(0);
                Ok(LogRecord { attempt, bytes: bytes.to_vec(), written })
            })
            .collect()
    }

    /// Records that a blob is in the artifact store. Returns whether it was new.
    pub fn index_artifact(&self, sha256: &str, size: u64) -> Result<bool> {
        if self.recent.is_indexed(sha256) {
            return Ok(false);
        }
        let record = ArtifactRecord { size, first_seen_ms: now_ms() };
        let previous = self.db.cas(Tree::Artifacts, sha256.as_bytes(), None, Some(encode(&record)))?;
        self.recent.indexed(sha256);
        Ok(previous.is_ok())
    }

    /// What the index knows of a blob.
    pub fn artifact(&self, sha256: &str) -> Result<Option<ArtifactRecord>> {
        self.db.get(Tree::Artifacts, sha256.as_bytes())?.map(|v| decode(sha256.as_bytes(), &v)).transpose()
    }

    /// Every indexed blob: (sha256, record).
    pub fn artifacts(&self) -> Result<Vec<(String, ArtifactRecord)>> {
        self.db
            .all(Tree::Artifacts)?
            .into_iter()
            .map(|(k, v)| Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?)))
            .collect()
    }
}

/// Keys are per submitter: one user's key never answers another's run.
fn idempotency_key(requester: &str, key: &str) -> Vec<u8> {
    [requester.as_bytes(), b"\0", key.as_bytes()].concat()
}

fn event_key(run: &str, id: u64) -> Vec<u8> {
    [run.as_bytes(), b"\0", &id.to_be_bytes()].concat()
}

fn log_key(run: &str, step: &str, attempt: u32) -> Vec<u8> {
    [run.as_bytes(), b"\0", step.as_bytes(), b"\0", &attempt.to_be_bytes()].concat()
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), so run ids need no calendar crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
impl Submission {
    /// A submission of `p.yaml` by `requester`, as the store's tests make.
    pub(crate) fn by(requester: &str) -> Self {
        Self {
            pipeline: "p.yaml".into(),
            source: String::new(),
            params: Vec::new(),
            requester: requester.into(),
            key: None,
            origin: None,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// The ids the next runs made on this thread take, last first: for
    /// tests of what two runs of the same id do.
    static FORCED_RUN_IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `test` on a store of each backend: sled in a temporary
/// directory, and a new database on a PostgreSQL server of its own.
#[cfg(test)]
pub(crate) fn on_each_backend(test: impl Fn(&Store)) {
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open sled");
        eprintln!("--- on sled");
        test(&store);
    }
    let server = testing::TestPostgres::start().expect("a PostgreSQL server for the test");
    let store = Store::open_postgres(&server.database().expect("database")).expect("open postgres");
    eprintln!("--- on PostgreSQL");
    test(&store);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }

    #[test]
    fn transitions_are_recorded_in_order() {
        crate::on_each_backend(|store| {
            let run = store.create_run("p", "p.yaml", BTreeMap::new(), &["a".into(), "b".into()]).expect("run");
            store.update_step(&run.id, "a", None, |s| s.state = StepState::Running).expect("update");
            store.update_step(&run.id, "a", Some("done".into()), |s| s.state = StepState::Succeeded).expect("update");
            let states: Vec<_> =
                store.events(&run.id).expect("events").into_iter().map(|e| (e.step, e.state)).collect();
            assert_eq!(
                states,
                vec![
                    (None, "running".into()),
                    (Some("a".into()), "running".into()),
                    (Some("a".into()), "succeeded".into())
                ]
            );
            assert!(matches!(store.update_step(&run.id, "zz", None, |_| {}), Err(StoreError::NoStep { .. })));
        });
    }

    /// A step's change swaps from what this process wrote last, without
    /// reading it; a write from elsewhere in between (another server)
    /// makes the swap fail, and the change is applied to what is there.
    #[test]
    fn a_step_written_elsewhere_meanwhile_is_read_again() {
        crate::on_each_backend(|store| {
            let run = store.create_run("p", "p.yaml", BTreeMap::new(), &["a".into()]).expect("run");
            store.update_step(&run.id, "a", None, |s| s.state = StepState::Running).expect("update");
            let elsewhere = store.clone_unidentified();
            elsewhere.update_step(&run.id, "a", None, |s| s.attempts = 7).expect("update elsewhere");
            let record = store
                .update_step(&run.id, "a", Some("done".into()), |s| s.state = StepState::Succeeded)
                .expect("update after");
            assert_eq!((record.state, record.attempts), (StepState::Succeeded, 7));
            let stored = store.step(&run.id, "a").expect("step");
            assert_eq!((stored.state, stored.attempts), (StepState::Succeeded, 7));
            // Only unfinished steps are remembered.
            assert!(store.recent.step(&step_key(&run.id, "a")).is_none());
        });
    }

    /// Eight submissions with one idempotency key, at once, make one run:
    /// the check and the insert are one transaction (on PostgreSQL,
    /// serializable, and run again when it loses).
    #[test]
    fn one_idempotency_key_makes_one_run_however_many_race() {
        on_each_backend(|store| {
            for round in 0..5 {
                let made = std::sync::atomic::AtomicUsize::new(0);
                let ids = std::sync::Mutex::new(std::collections::BTreeSet::new());
                std::thread::scope(|s| {
                    for _ in 0..8 {
                        s.spawn(|| {
                            let submission =
                                Submission { key: Some(format!("key-{round}")), ..Submission::by("alice") };
                            let (run, new) =
                                store.submit_run("p", BTreeMap::new(), &["a".into()], submission).expect("submit");
                            made.fetch_add(usize::from(new), std::sync::atomic::Ordering::Relaxed);
                            ids.lock().expect("ids").insert(run.id);
                        });
                    }
                });
                assert_eq!(made.into_inner(), 1, "round {round}");
                assert_eq!(ids.into_inner().expect("ids").len(), 1, "round {round}: every caller got the same run");
            }
            assert_eq!(store.runs().expect("runs").len(), 5);
        });
    }

    #[test]
    fn last_is_the_newest_run_even_within_one_second() {
        crate::on_each_backend(|store| {
            for _ in 0..20 {
                let run = store.create_run("p", "p.yaml", BTreeMap::new(), &["a".into()]).expect("run");
                assert_eq!(store.find_run("last").expect("last").id, run.id);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
    }

    /// Two runs given the same id (the same second, the same random
    /// suffix) are both made: the second takes another id.
    #[test]
    fn a_run_id_taken_already_is_made_again() {
        crate::on_each_backend(|store| {
            let (taken, other) = ("20261207-063455-e4bc", "20261207-063455-0001");
            FORCED_RUN_IDS.with(|ids| *ids.borrow_mut() = vec![other.into(), taken.into(), taken.into()]);
            let first = store.create_run("p", "p.yaml", BTreeMap::new(), &["a".into()]).expect("run");
            let (second, created) = store
                .submit_run("p", BTreeMap::new(), &["a".into()], Submission::by("ci"))
                .expect("submitted all the same");
            assert!(created);
            assert_eq!((first.id.as_str(), second.id.as_str()), (taken, other));
            assert_eq!(store.find_run(other).expect("found").state, RunState::Queued);
        });
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let store = Store::open(dir.path()).expect("open");
            let run = store.create_run("p", "p.yaml", BTreeMap::new(), &["a".into()]).expect("run");
            store.put_log(&run.id, "a", &LogRecord { attempt: 1, bytes: b"hello".to_vec(), written: 9 }).expect("log");
            store.flush().expect("flush");
            run.id
        };
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.find_run(&id[..8]).expect("by prefix").id, id);
        assert_eq!(
            store.logs(&id, "a").expect("logs"),
            vec![LogRecord { attempt: 1, bytes: b"hello".to_vec(), written: 9 }]
        );
    }
}
