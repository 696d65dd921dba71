//! The run queue of `airlock serve`: submitted runs wait here for their
//! turn and run on the same engine as `airlock run`.
//!
//! A submission is recorded `queued`, with a free lease, and flushed
//! before it is answered, so a run a client was told about survives the
//! server. Servers claim runs through their leases (see
//! [`airlock_store::Lease`]), oldest first: several servers on one
//! database share the queue, a run is worked on by one at a time, and a
//! run whose server stopped renewing its lease is taken over by another
//! and resumed from where it was (see [`Engine::run_recorded`]). A server
//! that starts again takes back its own runs at once.
//!
//! Runs come from two places: a pipeline file of the server's pipelines
//! directory, named by a client; or a pipeline file of a repository at
//! one commit, read by the intake (see [`crate::intake`]) from the
//! commit's objects and run in its checkout, where its paths start from
//! the repository's root.

use crate::{Engine, FsLookup, Progress, RunOptions, RunnerError};
use airlock_host::checkout::Checkouts;
use airlock_model::TriggerEvent;
use airlock_store::{Lease, Origin, RunRecord, RunState, Signal, Submission};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Longest pipeline file a submission may name.
const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// What a client asks to run.
#[derive(Debug, Clone)]
pub struct Submit {
    /// The pipeline file, relative to the server's pipelines directory.
    pub pipeline: String,
    /// `NAME=VALUE` parameters, in order.
    pub params: Vec<(String, String)>,
    /// The user submitting it.
    pub requester: String,
    /// The client's idempotency key: the same key from the same user
    /// answers the same run, however often it is sent.
    pub key: Option<String>,
}

/// A pipeline file of a repository at one commit, to run if its
/// triggers say so.
#[derive(Debug, Clone)]
pub struct RepositoryRun {
    /// The file's path in the repository.
    pub pipeline: String,
    /// Its text at the commit, or why it cannot be read as text (too
    /// large, not UTF-8): then the run fails at once with that reason.
    pub source: Result<String, String>,
    /// Where the run comes from; its tree is the checkout it runs in.
    pub origin: Origin,
    /// Who the run is for (`forge:REPOSITORY`).
    pub requester: String,
    /// Names the run among every run of the same requester: the same
    /// key answers the run it made, so a delivery handled twice (the
    /// engine died in between) starts each run once.
    pub key: String,
}

/// Why a submission or a cancellation was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The pipeline file is not one the server runs.
    #[error("{0}")]
    NoPipeline(String),
    /// The pipeline file has mistakes; each diagnostic says where.
    #[error("the pipeline is not valid:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// Bad parameters.
    #[error("{}", .0.join("\n"))]
    Params(Vec<String>),
    /// The policy does not allow it.
    #[error("{0}")]
    Policy(String),
    /// The run has ended already.
    #[error("run `{0}` has already ended")]
    Ended(String),
    /// The server is stopping.
    #[error("the server is stopping; submit again when it is back")]
    Stopping,
    /// The engine failed.
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

impl From<airlock_store::StoreError> for QueueError {
    fn from(e: airlock_store::StoreError) -> Self {
        Self::Runner(e.into())
    }
}

/// Submitted runs, and the workers that run them.
pub struct RunQueue {
    engine: Arc<Engine>,
    /// The server's pipelines directory, if it has one.
    pipelines: Option<PathBuf>,
    /// The repositories' mirrors and the trees their runs run in.
    checkouts: Checkouts,
    jobs: usize,
    /// Rings when there may be a run to claim.
    work: Notify,
    /// The runs this server works on, by id.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    /// One-time approval codes of the waiting steps, by (run, step): shown
    /// to the user who submitted the run and to no one else.
    codes: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Commit statuses being reported, by run.
    pub(crate) reports: Arc<crate::statuses::Reports>,
    /// The server's address as its users reach it, for links to runs.
    public_url: std::sync::OnceLock<String>,
    shutdown: CancellationToken,
}

impl RunQueue {
    /// Starts the queue: at most `max_runs` runs at once, `jobs` steps at
    /// once within each. Clients may name the files of `pipelines`; with
    /// none, only repositories' pipelines run. Runs this server's state
    /// directory held when it stopped go on first; then it claims the
    /// runs waiting longest. Stops taking new runs when `shutdown` is
    /// cancelled, and lets go of the runs under way: another server on
    /// the same database takes them over at once, or this one when it
    /// starts again.
    pub fn start(
        engine: Arc<Engine>,
        pipelines: Option<&Path>,
        max_runs: usize,
        jobs: usize,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, QueueError> {
        let pipelines = pipelines
            .map(|dir| {
                std::fs::canonicalize(dir)
                    .map_err(|e| QueueError::NoPipeline(format!("the pipelines directory `{}`: {e}", dir.display())))
            })
            .transpose()?;
        let checkouts = Checkouts::new(engine.state_dir.join("checkouts"));
        let queue = Arc::new(Self {
            engine,
            pipelines,
            checkouts,
            jobs: jobs.max(1),
            work: Notify::new(),
            cancels: Mutex::new(HashMap::new()),
            codes: Arc::default(),
            reports: Arc::default(),
            public_url: std::sync::OnceLock::new(),
            shutdown,
        });
        let store = queue.engine.store();
        // Runs recorded by an airlock from before leases.
        store.offer_unleased_runs()?;
        let reclaimed = queue.engine.take_reclaimed();
        for lease in &reclaimed {
            if let Some(run) = store.run(&lease.run)? {
                tracing::info!("run {} was {} when the server stopped; it goes on", run.id, run.state.as_str());
            }
        }
        tokio::spawn(queue.clone().listen(store.signals()));
        tokio::spawn(queue.clone().claim(reclaimed.into(), max_runs.max(1)));
        Ok(queue)
    }

    /// Sets the address the server's users reach it at (`https://ci.example.com`):
    /// commit statuses link to run pages under it. Only the first call counts.
    pub fn set_public_url(&self, url: &str) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_owned());
    }

    /// The address the server's users reach it at, if it was set.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.get().map(String::as_str)
    }

    /// The engine the runs run on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The pipelines directory, if the server has one.
    pub fn pipelines_dir(&self) -> Option<&Path> {
        self.pipelines.as_deref()
    }

    /// The repositories' mirrors and the trees their runs run in.
    pub fn checkouts(&self) -> &Checkouts {
        &self.checkouts
    }

    /// The directory a run's pipeline paths start from: its checkout's
    /// root for a repository's run, else the pipeline file's directory.
    fn base_of(&self, submission: &Submission) -> PathBuf {
        match (&submission.origin, &self.pipelines) {
            (Some(origin), _) => self.checkouts.tree_dir(&origin.tree),
            (None, Some(dir)) => {
                let file = dir.join(&submission.pipeline);
                file.parent().unwrap_or(dir).to_owned()
            }
            (None, None) => PathBuf::from("/nonexistent"),
        }
    }

    /// Validates a submission against the pipelines directory and the
    /// policy, records it `queued` (on disk before this returns) and
    /// queues it. Returns the run and whether it is new (false when its
    /// idempotency key had made it before).
    pub fn submit(&self, submit: Submit) -> Result<(RunRecord, bool), QueueError> {
        if self.shutdown.is_cancelled() {
            return Err(QueueError::Stopping);
        }
        let (file, source) = self.read_pipeline(&submit.pipeline)?;
        let base = file.parent().unwrap_or(Path::new("/")).to_owned();
        let pipeline = self.load(&submit.pipeline, &base, &source, false)?;
        let submission = Submission {
            pipeline: submit.pipeline.clone(),
            source,
            params: submit.params,
            requester: submit.requester,
            key: submit.key,
            origin: None,
        };
        self.record(&pipeline, submission)
    }

    /// Runs a repository's pipeline file at a commit if its triggers
    /// start it for `event`. Returns the run, or None when its triggers
    /// do not match. A file that is not a valid pipeline (or whose
    /// parameters need values) makes a run that has failed at once, with
    /// the diagnostics as its reason: the commit's author sees why.
    pub fn submit_repository(
        &self,
        run: RepositoryRun,
        event: &TriggerEvent<'_>,
    ) -> Result<Option<RunRecord>, QueueError> {
        if self.shutdown.is_cancelled() {
            return Err(QueueError::Stopping);
        }
        let repository = run.origin.repository.clone();
        let (source, unreadable) = match run.source {
            Ok(text) => (text, None),
            Err(why) => (String::new(), Some(why)),
        };
        let submission = Submission {
            pipeline: run.pipeline.clone(),
            source,
            params: Vec::new(),
            requester: run.requester,
            key: Some(run.key),
            origin: Some(run.origin),
        };
        let base = self.base_of(&submission);
        let loaded = match unreadable {
            Some(why) => Err(QueueError::Policy(format!("the pipeline file cannot be read at this commit: {why}"))),
            None => self.load(&run.pipeline, &base, &submission.source, true),
        };
        let invalid = match loaded {
            Ok(pipeline) if !pipeline.on.starts(event) => return Ok(None),
            Ok(pipeline) if let Some(why) = self.foreign_tool(&pipeline, &repository) => why,
            Ok(pipeline) => match self.record(&pipeline, submission.clone()) {
                Ok((record, _)) => return Ok(Some(record)),
                Err(QueueError::Invalid(d) | QueueError::Params(d)) => d.join("\n"),
                Err(QueueError::Policy(why)) => why,
                Err(e) => return Err(e),
            },
            Err(QueueError::Invalid(d)) => format!("the pipeline is not valid at this commit:\n{}", d.join("\n")),
            Err(QueueError::Policy(why)) => why,
            Err(e) => return Err(e),
        };
        let store = self.engine.store();
        let (record, created) = store.submit_run(&run.pipeline, BTreeMap::new(), &[], submission)?;
        let record = if created && !record.state.is_final() {
            let failed =
                store.finish_run(&record.id, RunState::Failed, Some(airlock_model::text::one_line(&invalid, 4000)))?;
            store.flush()?;
            self.report_status(&failed);
            failed
        } else {
            record
        };
        Ok(Some(record))
    }

    /// Why a repository's pipeline may not run: a tool it would have the
    /// host fetch from a place the repository's `tool_sources` do not
    /// list. A commit chooses its tools' URLs, and the host must not
    /// fetch wherever a commit says (a service inside the network, say).
    fn foreign_tool(&self, pipeline: &airlock_model::Pipeline, repository: &str) -> Option<String> {
        let policy = self.engine.policy.as_ref();
        let repo = policy.and_then(|p| p.0.repositories.get(repository));
        pipeline.tools.iter().find(|(_, tool)| repo.is_none_or(|r| !r.allows_tool_url(&tool.url))).map(
            |(name, tool)| {
                format!(
                    "tool `{name}` comes from `{}`, which is not under any of the `tool_sources` of repository \
                 `{repository}` in the server's policy; an admin who trusts that place adds a prefix of it there",
                    airlock_model::text::one_line(&tool.url, 300)
                )
            },
        )
    }

    /// Checks a loaded pipeline's parameters and environment against the
    /// policy, records the run `queued` (on disk before this returns)
    /// and queues it.
    fn record(
        &self,
        pipeline: &airlock_model::Pipeline,
        submission: Submission,
    ) -> Result<(RunRecord, bool), QueueError> {
        let params = pipeline.resolve_params(&submission.params).map_err(QueueError::Params)?;
        if let Some(env) = &pipeline.environment
            && self.engine.policy.as_ref().is_none_or(|p| !p.0.environments.contains_key(env))
        {
            return Err(QueueError::Policy(format!("the server's policy has no environment `{env}`")));
        }
        let shown: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let steps: Vec<String> = pipeline.steps.keys().cloned().collect();
        let store = self.engine.store();
        let (run, created) = store.submit_run(&pipeline.name, shown, &steps, submission)?;
        // Acknowledged only once it is on disk.
        store.flush()?;
        if created {
            self.report_status(&run);
            // This server's own claim loop may be the first to hear.
            self.work.notify_one();
        }
        Ok((run, created))
    }

    /// Cancels a run: a queued one ends at once, a running one stops
    /// its steps and ends `cancelled` (told through the store when
    /// another server works on it).
    pub fn cancel(&self, id: &str) -> Result<RunRecord, QueueError> {
        let store = self.engine.store();
        let run = store.find_run(id)?;
        if run.state.is_final() {
            return Err(QueueError::Ended(run.id));
        }
        if run.state == RunState::Queued {
            let ended = store.finish_run(&run.id, RunState::Cancelled, Some("cancelled before it started".into()))?;
            store.flush()?;
            self.report_status(&ended);
            if let Some(token) = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).get(&run.id) {
                token.cancel();
            }
            return Ok(ended);
        }
        let here = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).get(&run.id).cloned();
        match here {
            Some(token) => token.cancel(),
            None => store.signal(&Signal::Cancel(run.id.clone()))?,
        }
        Ok(run)
    }

    /// How many runs this server works on now.
    pub fn working(&self) -> usize {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The one-time code of a step waiting for approval, while it waits.
    pub fn approval_code(&self, run: &str, step: &str) -> Option<String> {
        self.codes.lock().unwrap_or_else(PoisonError::into_inner).get(&(run.to_owned(), step.to_owned())).cloned()
    }

    /// A pipeline file named by a client: inside the pipelines directory,
    /// a `.yaml` or `.yml` file, not too big. Returns its path and text.
    fn read_pipeline(&self, name: &str) -> Result<(PathBuf, String), QueueError> {
        let refuse = |why: &str| QueueError::NoPipeline(format!("pipeline `{name}`: {why}"));
        let Some(dir) = &self.pipelines else {
            return Err(refuse("this server has no pipelines directory; it runs the pipelines of its repositories"));
        };
        let relative = Path::new(name);
        let plain = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if name.is_empty() || !plain {
            return Err(refuse("name a file inside the server's pipelines directory, like `site.yaml`"));
        }
        if !matches!(relative.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            return Err(refuse("a pipeline is a `.yaml` or `.yml` file"));
        }
        let path = std::fs::canonicalize(dir.join(relative))
            .map_err(|_| refuse("no such file in the server's pipelines directory"))?;
        // A symbolic link may not lead out of the directory.
        if !path.starts_with(dir) {
            return Err(refuse("it leads outside the server's pipelines directory"));
        }
        let meta = std::fs::metadata(&path).map_err(|e| refuse(&e.to_string()))?;
        if !meta.is_file() || meta.len() > MAX_PIPELINE_BYTES {
            return Err(refuse("not a file of at most 1 MiB"));
        }
        let source = std::fs::read_to_string(&path).map_err(|e| refuse(&e.to_string()))?;
        Ok((path, source))
    }

    /// Loads a pipeline whose paths start from `base`; a repository's
    /// (`confined`) finds its plugins and sources only inside it.
    fn load(
        &self,
        name: &str,
        base: &Path,
        source: &str,
        confined: bool,
    ) -> Result<airlock_model::Pipeline, QueueError> {
        let mut lookup = FsLookup::new(base);
        if confined {
            lookup = lookup.confined();
        }
        if let Some(policy) = &self.engine.policy {
            lookup = lookup.with_policy(policy.0.clone());
        }
        airlock_model::load(name, source, &lookup)
            .map_err(|diagnostics| QueueError::Invalid(diagnostics.iter().map(|d| d.to_string()).collect()))
    }

    /// Acts on what other servers say: a cancellation of a run this
    /// server works on, work to claim.
    async fn listen(self: Arc<Self>, mut signals: tokio::sync::broadcast::Receiver<Signal>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let signal = tokio::select! {
                s = signals.recv() => s,
                () = self.shutdown.cancelled() => return,
            };
            match signal {
                Ok(Signal::Cancel(run)) => {
                    if let Some(token) = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).get(&run) {
                        tracing::info!("run {run}: cancelled through another server");
                        token.cancel();
                    }
                }
                // Signals missed are at worst work: look for it.
                Ok(Signal::Work) | Err(RecvError::Lagged(_)) => self.work.notify_one(),
                // For the step that waits for that job, and for the
                // agents' claims.
                Ok(Signal::Done(_) | Signal::Job) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Claims runs while a slot is free: first those taken back at
    /// start, then the oldest whose lease is free or expired. With none,
    /// waits for a signal, or for a lease to expire.
    async fn claim(self: Arc<Self>, mut reclaimed: VecDeque<Lease>, max_runs: usize) {
        let slots = Arc::new(Semaphore::new(max_runs));
        let store = self.engine.store().clone();
        // An expired lease sends no signal: look at least this often.
        let look =
            (store.lease_time() / 4).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(5));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = self.shutdown.cancelled() => break,
            };
            let claimed = match reclaimed.pop_front() {
                Some(lease) => Ok(Some(lease)),
                None => {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.claim_run())
                        .await
                        .unwrap_or_else(|e| Err(airlock_store::StoreError::Database(e.to_string())))
                }
            };
            let lease = match claimed {
                Ok(Some(lease)) => lease,
                Ok(None) | Err(_) => {
                    if let Err(e) = claimed {
                        tracing::error!("cannot claim a run: {e}");
                    }
                    drop(permit);
                    tokio::select! {
                        () = self.work.notified() => {}
                        () = tokio::time::sleep(look) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    continue;
                }
            };
            self.engine.metrics.claimed(lease.taken_over);
            let token = CancellationToken::new();
            self.cancels.lock().unwrap_or_else(PoisonError::into_inner).insert(lease.run.clone(), token.clone());
            let queue = self.clone();
            tokio::spawn(async move {
                let id = lease.run.clone();
                match queue.execute(lease, token).await {
                    Ok(()) => {}
                    Err(QueueError::Runner(RunnerError::Store(e @ airlock_store::StoreError::LeaseLost(_)))) => {
                        tracing::warn!("{e}");
                    }
                    Err(e) => tracing::error!("run {id}: {e}"),
                }
                queue.cancels.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                // A run that did not end (the database failed under it)
                // is left to whoever claims it next.
                let store = queue.engine.store();
                if store.holds(&id)
                    && let Err(e) = store.let_go(&id)
                {
                    tracing::warn!("run {id}: cannot let go of its lease: {e}");
                }
                drop(permit);
            });
        }
    }

    /// Lets go of the runs under way, for a server that stops: whichever
    /// server claims them next (another on the same database, or this
    /// one when it starts again) takes them over at once, rather than
    /// when their leases expire.
    pub fn let_go_all(&self) {
        let store = self.engine.store();
        let held: Vec<String> = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for run in held {
            match store.let_go(&run) {
                Ok(()) => tracing::info!("run {run}: let go; it goes on wherever it is claimed next"),
                Err(e) => tracing::warn!("run {run}: cannot let go of its lease: {e}"),
            }
        }
    }

    /// Runs (or resumes) the run of a lease this server claimed to its
    /// end.
    async fn execute(&self, lease: Lease, cancel: CancellationToken) -> Result<(), QueueError> {
        let store = self.engine.store();
        let id = lease.run.as_str();
        let Some(run) = store.run(id)? else {
            store.end_lease(id)?;
            return Ok(());
        };
        if run.state.is_final() {
            // A lease offered again for a run that had ended meanwhile.
            store.end_lease(id)?;
            return Ok(());
        }
        if lease.taken_over {
            // Tokens minted for the run by the engine that stopped die
            // with it; steps that need one get a new one.
            for token in store.revoke_run_tokens(Some(id))? {
                tracing::warn!("revoked token {token}: its run's engine stopped");
            }
            tracing::info!("run {id} was taken over from an engine that stopped; it goes on here");
        }
        let Some(submission) = run.submission.clone() else {
            // A run of `airlock run` whose engine stopped: nobody
            // follows it any more.
            crate::end_orphan(store, &run)?;
            tracing::warn!("run {id} was left running by an engine that stopped; recorded failed");
            return Ok(());
        };
        // A repository's run begun by another server (or before this
        // one's checkouts were cleared) needs its commit's files here.
        if let Some(origin) = submission.origin.clone()
            && !self.checkouts.tree_dir(&origin.tree).is_dir()
        {
            let (policy, checkouts) = (self.engine.policy.clone(), self.checkouts.clone());
            let fetched = tokio::task::spawn_blocking(move || fetch_checkout(policy.as_deref(), &checkouts, &origin))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(why) = fetched {
                let reason = format!("the files of its commit cannot be fetched on this server: {why}");
                let failed =
                    store.finish_run(id, RunState::Failed, Some(airlock_model::text::one_line(&reason, 2000)))?;
                store.flush()?;
                self.report_status(&failed);
                return Ok(());
            }
        }
        // What was submitted runs, even if the file changed since; its
        // plugins and sources are found where the file is now (or in the
        // checkout of its commit).
        let base = self.base_of(&submission);
        let pipeline = match self.load(&submission.pipeline, &base, &submission.source, submission.origin.is_some()) {
            Ok(p) => p,
            Err(e) => {
                let failed = store.finish_run(
                    id,
                    RunState::Failed,
                    Some(airlock_model::text::one_line(&e.to_string(), 2000)),
                )?;
                store.flush()?;
                self.report_status(&failed);
                return Ok(());
            }
        };
        let options = RunOptions {
            jobs: self.jobs,
            params: submission.params.clone(),
            keep_workspaces: false,
            requester: submission.requester.clone(),
            untrusted: submission
                .origin
                .as_ref()
                .and_then(|o| o.untrusted.clone())
                .or_else(|| self.engine.policy.as_ref().and_then(|p| p.0.untrusted_user(&submission.requester))),
            no_cache: false,
            untrusted_author: submission.origin.as_ref().map(|o| format!("{}/{}", o.repository, o.sender)),
        };
        let (codes, run_id) = (self.codes.clone(), id.to_owned());
        let observer = move |p: &Progress| {
            let mut codes = codes.lock().unwrap_or_else(PoisonError::into_inner);
            match p {
                Progress::ApprovalRequested { step, code, .. } => {
                    codes.insert((run_id.clone(), step.clone()), code.clone());
                }
                Progress::StepFinished { step, .. } => {
                    codes.remove(&(run_id.clone(), step.clone()));
                }
                _ => {}
            }
        };
        let summary = self.engine.run_recorded(run, &pipeline, &base, options, observer, cancel).await?;
        self.codes.lock().unwrap_or_else(PoisonError::into_inner).retain(|(r, _), _| *r != summary.run.id);
        tracing::info!("run {} {}", summary.run.id, summary.run.state.as_str());
        self.report_status(&summary.run);
        Ok(())
    }
}

/// Fetches the commit of a repository's run and writes its tree out, as
/// the intake did on the server that made the run; the tree must be the
/// one the run was made with.
fn fetch_checkout(
    policy: Option<&(airlock_model::policy::Policy, PathBuf)>,
    checkouts: &Checkouts,
    origin: &Origin,
) -> Result<(), String> {
    let name = &origin.repository;
    let Some((policy, policy_dir)) = policy else { return Err("the server has no policy".into()) };
    let Some(repository) = policy.repositories.get(name) else {
        return Err(format!("the policy has no repository `{name}` any more"));
    };
    let token = match &repository.token {
        Some(t) => Some(airlock_host::forge::read_secret(t, "the repository's token", policy_dir)?),
        None => None,
    };
    let remote = airlock_host::checkout::Remote {
        forge: repository.forge,
        url: &repository.url,
        token: token.as_ref().map(|t| t.expose()),
        submodules: repository.submodules,
    };
    let checkout = checkouts.fetch(name, &remote, &origin.commit, None).map_err(|e| e.to_string())?;
    if checkout.tree != origin.tree {
        return Err(format!(
            "commit {} has the tree {} here, not {} as when the run was made",
            origin.commit, checkout.tree, origin.tree
        ));
    }
    Ok(())
}
