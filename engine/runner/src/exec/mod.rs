//! One run, from its record to its end.
//!
//! [`Engine::run`] and [`Engine::run_recorded`] set a run up and drive it:
//! the [`schedule`] decides which step starts and which will never run,
//! [`step`] runs one step through its attempts (plugin steps in the
//! sandbox; publish, deploy and approval steps in the host), and
//! [`resume`] deals with what an engine that stopped left behind.

mod cache;
mod grants;
mod outputs;
mod plugins;
mod progress;
mod remote;
mod resume;
mod schedule;
mod step;
mod tools;
mod workspace;

pub(crate) use cache::{file_digest, tree_digest};
pub use progress::{Progress, RunSummary};
pub(crate) use step::{StepError, describe, host_step_started, last_lines};

use crate::{Engine, RunOptions, RunnerError};
use airlock_model::text::one_line;
use airlock_model::{Dag, ParamValue, Pipeline};
use airlock_sandbox::{HostGrants, Sandbox};
use airlock_store::{OutputRecord, RunRecord, RunState, StepState, now_ms};
use grants::EnvironmentGrants;
use indexmap::IndexMap;
use plugins::PluginCell;
use progress::emit_finished;
use schedule::{Schedule, Skip};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Everything the step tasks share.
pub(crate) struct Shared {
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) store: airlock_store::Store,
    pub(crate) artifacts: airlock_host::ArtifactStore,
    pub(crate) run_dir: PathBuf,
    pub(crate) base_dir: PathBuf,
    pub(crate) run_id: String,
    pub(crate) params: IndexMap<String, ParamValue>,
    /// Host directories of the pipeline's `sources`.
    pub(crate) sources: HashMap<String, PathBuf>,
    /// Plugins loaded in this run, by (path, fuel, grants); each loads once.
    pub(crate) plugins: Mutex<HashMap<(PathBuf, bool, HostGrants), Arc<PluginCell>>>,
    /// The pipeline's tools.
    pub(crate) tools: IndexMap<String, airlock_model::Tool>,
    /// Where tools are fetched to.
    pub(crate) tool_cache: airlock_host::tools::ToolCache,
    /// Tools fetched (or found in the cache) in this run, by name; each once.
    pub(crate) fetched: Mutex<HashMap<String, Arc<tools::ToolCell>>>,
    /// Digests of plugin files and source trees, each worked out once.
    pub(crate) digests: cache::Digests,
    /// Each plugin step's `uses:`, in pipeline order.
    pub(crate) plugins_used: Vec<(String, String)>,
    /// Whether the run takes nothing from the step cache.
    pub(crate) no_cache: bool,
    /// An empty directory, mounted read-only at `/inputs` itself.
    pub(crate) inputs_root: PathBuf,
    pub(crate) observer: Box<dyn Fn(&Progress) + Send + Sync>,
    /// Empty workspaces of finished steps, ready for the next step; `None`
    /// when workspaces are kept for inspection, so each keeps its name.
    pub(crate) spare_workspaces: Option<std::sync::Mutex<Vec<PathBuf>>>,
    /// Publish targets of the admin policy.
    pub(crate) targets: Arc<std::collections::BTreeMap<String, airlock_host::publish::TargetStore>>,
    /// The admin policy and the directory its relative paths start from.
    pub(crate) policy: Option<Arc<(airlock_model::policy::Policy, PathBuf)>>,
    /// The pipeline's name.
    pub(crate) pipeline: String,
    /// Who started the run.
    pub(crate) requester: String,
    /// Why the run may not publish or deploy, if it may not.
    pub(crate) untrusted: Option<String>,
    /// Whose untrusted cache scope the run uses, if it is untrusted.
    pub(crate) untrusted_author: String,
    /// What the pipeline's environment grants its plugin steps.
    pub(crate) grants: Option<EnvironmentGrants>,
    /// Logs of the steps running now, for readers who follow them.
    pub(crate) live: crate::LiveLogs,
    /// One permit per job, held by a step from its start to its end,
    /// except while it fetches or compiles a big tool: then the job goes
    /// to the next ready step, and the step takes one back when it is
    /// ready to run. Fast preparation (a cached or small plugin) keeps its
    /// job, so the order of steps at `--jobs 1` stays the pipeline's.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    /// The permits of the steps at work, by step name.
    pub(crate) held: std::sync::Mutex<HashMap<String, tokio::sync::OwnedSemaphorePermit>>,
    /// Steps that gave up their job to prepare slowly.
    pub(crate) preparing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Told whenever a step gives up its job to prepare, so the scheduler
    /// starts the next.
    pub(crate) released: tokio::sync::Notify,
    /// Trees handed to agents that never change, for every run.
    pub(crate) handed_over: HandedOver,
    /// Where those trees are: the tool cache, and the checkouts' trees,
    /// each as named and as resolved (a mount's directory may come by
    /// either name).
    pub(crate) lasting: Vec<PathBuf>,
    /// Trees handed to agents in this run (its sources), which it takes
    /// as they were when first handed over, as its cache key does.
    pub(crate) handed_in_run: HandedOver,
}

/// Trees handed to agents, by directory: their files and digests.
#[derive(Clone, Default)]
pub(crate) struct HandedOver(Arc<std::sync::Mutex<HashMap<PathBuf, Arc<Vec<OutputRecord>>>>>);

impl HandedOver {
    /// The most trees remembered; past it, the memory starts afresh.
    const MAX: usize = 1024;

    pub(crate) fn get(&self, dir: &Path) -> Option<Arc<Vec<OutputRecord>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(dir).cloned()
    }

    pub(crate) fn insert(&self, dir: PathBuf, files: Arc<Vec<OutputRecord>>) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() >= Self::MAX {
            known.clear();
        }
        known.insert(dir, files);
    }
}

impl Shared {
    /// Takes a job for step `name`, waiting for one to be free; `false`
    /// if the run was cancelled first.
    pub(crate) async fn take_job(&self, name: &str, cancel: &CancellationToken) -> bool {
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            () = cancel.cancelled() => None,
        };
        let Some(permit) = permit else { return false };
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), permit);
        true
    }

    /// Step `name` is fetching or compiling a big tool: its job goes to
    /// the next ready step meanwhile. Said once per step however often
    /// its progress is reported.
    pub(crate) fn preparing_slowly(&self, name: &str) {
        if self.preparing.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned()) {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            self.released.notify_one();
        }
    }

    /// Step `name` is ready to run: if it gave its job up, it waits for
    /// one again. `false` if the run was cancelled meanwhile.
    pub(crate) async fn prepared(&self, name: &str, cancel: &CancellationToken) -> bool {
        // At work again from now on, as the scheduler counts, even while
        // it waits for the job.
        let was_slow = self.preparing.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        !was_slow || self.take_job(name, cancel).await
    }

    /// Steps giving their jobs up to prepare, now.
    fn preparing_now(&self) -> usize {
        self.preparing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Step `name` ended: its job is free.
    pub(crate) fn release_job(&self, name: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.preparing.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

impl Engine {
    /// Runs `pipeline` to its end. `base_dir` is the pipeline file's
    /// directory (plugins and sources are relative to it); `file` is how
    /// the run record names the pipeline. `observer` sees every
    /// [`Progress`] event; `cancel` stops the run, recording it cancelled.
    pub async fn run(
        &self,
        pipeline: &Pipeline,
        base_dir: &Path,
        file: &str,
        options: RunOptions,
        observer: impl Fn(&Progress) + Send + Sync + 'static,
        cancel: CancellationToken,
    ) -> Result<RunSummary, RunnerError> {
        // Checked before the run is recorded: a run that cannot start leaves no record.
        let params = pipeline.resolve_params(&options.params).map_err(RunnerError::Params)?;
        let grants = self.grants_for(pipeline)?;
        let names: Vec<String> = pipeline.steps.keys().cloned().collect();
        let shown_params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let run = self.store.create_run(&pipeline.name, file, shown_params, &names)?;
        self.execute(run, false, pipeline, base_dir, params, grants, options, Box::new(observer), cancel).await
    }

    /// Runs a run already in the store to its end: a `queued` run when
    /// its turn comes, or a `running` one whose engine stopped, from
    /// where it was. Steps that succeeded keep their outputs and do not
    /// run again; steps that were running start again, except a deploy
    /// that had reached its provider, which fails (it may have happened,
    /// and a deployment happens at most once).
    pub async fn run_recorded(
        &self,
        run: RunRecord,
        pipeline: &Pipeline,
        base_dir: &Path,
        options: RunOptions,
        observer: impl Fn(&Progress) + Send + Sync + 'static,
        cancel: CancellationToken,
    ) -> Result<RunSummary, RunnerError> {
        let prepared = pipeline
            .resolve_params(&options.params)
            .map_err(RunnerError::Params)
            .and_then(|p| Ok((p, self.grants_for(pipeline)?)));
        let (params, grants) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // A recorded run that cannot start any more (the policy
                // changed under it) ends, with the reason.
                let run = self.store.finish_run(&run.id, RunState::Failed, Some(one_line(&e.to_string(), 1000)))?;
                self.store.flush()?;
                let steps = self.store.steps(&run)?;
                return Ok(RunSummary { run, steps });
            }
        };
        let detail = (run.state == RunState::Running).then(|| "resumed: the engine running it had stopped".to_owned());
        let run = self.store.set_run_state(&run.id, RunState::Running, detail)?;
        self.execute(run, true, pipeline, base_dir, params, grants, options, Box::new(observer), cancel).await
    }

    fn grants_for(&self, pipeline: &Pipeline) -> Result<Option<EnvironmentGrants>, RunnerError> {
        match (&pipeline.environment, &self.policy) {
            (None, _) => Ok(None),
            (Some(env), Some(policy)) => match policy.0.environments.get(env) {
                Some(e) => Ok(Some(EnvironmentGrants::new(env, &e.grants, &policy.1).map_err(RunnerError::Policy)?)),
                None => Err(RunnerError::Policy(format!("the admin policy has no environment `{env}`"))),
            },
            (Some(env), None) => Err(RunnerError::Policy(format!(
                "pipeline `{}` runs for environment `{env}`, but no admin policy was given",
                pipeline.name
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Runs `run` to its end; `recorded` says it was in the store before
    /// (queued, or left running by an engine that stopped), so its steps'
    /// records say where each is.
    async fn execute(
        &self,
        run: RunRecord,
        recorded: bool,
        pipeline: &Pipeline,
        base_dir: &Path,
        params: IndexMap<String, ParamValue>,
        grants: Option<EnvironmentGrants>,
        options: RunOptions,
        observer: Box<dyn Fn(&Progress) + Send + Sync>,
        cancel: CancellationToken,
    ) -> Result<RunSummary, RunnerError> {
        let dag = Dag::new(pipeline);
        let names: Vec<String> = pipeline.steps.keys().cloned().collect();
        let run_dir = self.state_dir.join("work").join(&run.id);
        let inputs_root = run_dir.join(".inputs");
        std::fs::create_dir_all(&inputs_root)
            .map_err(|source| RunnerError::StateDir { path: run_dir.clone(), source })?;
        observer(&Progress::RunStarted { run: run.id.clone(), steps: names.clone() });
        // While the run goes on, its lease is renewed; an engine that
        // finds it gone (it was frozen or cut off for longer than the
        // lease, and another engine took the run over) stops the run here.
        let _renewing = self.store.holds(&run.id).then(|| Renewing::start(self.store.clone(), &run.id, cancel.clone()));

        let shared = Arc::new(Shared {
            metrics: self.metrics.clone(),
            sandbox: self.sandbox.clone(),
            store: self.store.clone(),
            artifacts: self.artifacts.clone(),
            run_dir: run_dir.clone(),
            base_dir: base_dir.to_owned(),
            run_id: run.id.clone(),
            params,
            sources: pipeline.sources.iter().map(|(k, v)| (k.clone(), base_dir.join(&v.path))).collect(),
            plugins: Mutex::new(HashMap::new()),
            tools: pipeline.tools.clone(),
            tool_cache: self.tool_cache.clone(),
            fetched: Mutex::new(HashMap::new()),
            digests: Default::default(),
            plugins_used: pipeline
                .steps
                .iter()
                .filter_map(|(name, step)| Some((name.clone(), step.plugin()?.uses.clone())))
                .collect(),
            no_cache: options.no_cache,
            inputs_root,
            observer,
            spare_workspaces: (!options.keep_workspaces).then(Default::default),
            targets: self.targets.clone(),
            policy: self.policy.clone(),
            pipeline: pipeline.name.clone(),
            requester: options.requester.clone(),
            untrusted: options.untrusted.clone(),
            untrusted_author: options.untrusted_author.clone().unwrap_or_else(|| options.requester.clone()),
            grants,
            live: self.live.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(options.jobs.clamp(1, airlock_sandbox::MAX_CONCURRENT_STEPS))),
            held: Default::default(),
            preparing: Default::default(),
            released: Default::default(),
            handed_over: self.handed_over.clone(),
            lasting: [self.tool_cache.dir().to_owned(), self.state_dir.join("checkouts").join("trees")]
                .into_iter()
                .flat_map(|dir| [std::fs::canonicalize(&dir).ok(), Some(dir)])
                .flatten()
                .collect(),
            handed_in_run: Default::default(),
        });

        // Where each step is: all pending for a run made just now; for a
        // recorded one, what the store says, with interrupted steps dealt
        // with.
        let mut states = Vec::with_capacity(dag.len());
        for index in 0..dag.len() {
            let name = dag.name(index);
            states.push(if recorded {
                resume::resume_step(&shared, name, &pipeline.steps[name]).await?
            } else {
                StepState::Pending
            });
        }
        let (mut schedule, skips) = Schedule::new(&dag, states);
        record_skips(&shared, &schedule, skips)?;

        let mut tasks: JoinSet<step::Finished> = JoinSet::new();
        // Which step each task runs, to know which one a panic lost.
        let mut task_steps: HashMap<tokio::task::Id, usize> = HashMap::new();
        let jobs = options.jobs.clamp(1, airlock_sandbox::MAX_CONCURRENT_STEPS);
        loop {
            // `jobs` steps at work, and beside them up to `jobs` more
            // fetching or compiling their tools.
            while tasks.len() < 2 * jobs {
                let working = tasks.len().saturating_sub(shared.preparing_now());
                let Some(index) = schedule.start_next(working, jobs) else { break };
                let name = dag.name(index).to_owned();
                let step = pipeline.steps[&name].clone();
                let (shared, cancel) = (shared.clone(), cancel.clone());
                let handle = tasks.spawn(async move { step::run_step(shared, index, name, step, cancel).await });
                task_steps.insert(handle.id(), index);
            }
            if tasks.is_empty() {
                break;
            }
            let joined = tokio::select! {
                // A step gave its job up to prepare: the next may start.
                () = shared.released.notified() => continue,
                joined = tasks.join_next_with_id() => joined,
                () = cancel.cancelled(), if !schedule.is_cancelled() => {
                    schedule.cancel();
                    // Each step task notices the token, records itself
                    // cancelled and returns; keep collecting them.
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let skips = match joined {
                Ok((id, finished)) => {
                    task_steps.remove(&id);
                    emit_finished(&shared, &finished.record, finished.log_truncated);
                    schedule.finished(finished.index, finished.record.state)
                }
                Err(e) => {
                    // A step task panicked: a bug in airlock, not in the
                    // guest. The engine keeps running; the step is lost,
                    // so the run cannot succeed.
                    tracing::error!("a step task ended abnormally: {e}");
                    let Some(index) = task_steps.remove(&e.id()) else { continue };
                    shared.release_job(dag.name(index));
                    let reason = format!("internal error in airlock while running the step: {e}");
                    end_step(&shared, dag.name(index), StepState::Failed, &reason, &reason)?;
                    schedule.lost(index, &e.to_string())
                }
            };
            record_skips(&shared, &schedule, skips)?;
        }

        // Whatever never started (cancelled before its turn) is recorded so.
        for i in schedule.unfinished() {
            end_step(&shared, dag.name(i), StepState::Cancelled, "cancelled before it started", "run cancelled")?;
        }
        // A step that saw the cancellation first may have ended before the
        // loop did: the token, not only the schedule, says whether it came.
        let (state, reason) = schedule.outcome(cancel.is_cancelled());
        // However the run ended, no token minted for it outlives it.
        if let Err(e) = self.store.revoke_run_tokens(Some(&run.id)) {
            tracing::error!("cannot revoke the tokens of run {}: {e}", run.id);
        }
        let run = self.store.finish_run(&run.id, state, reason.clone())?;
        self.store.flush()?;
        if !options.keep_workspaces
            && let Err(e) = std::fs::remove_dir_all(&run_dir)
        {
            tracing::warn!("cannot remove the run's workspaces at {}: {e}", run_dir.display());
        }
        (shared.observer)(&Progress::RunFinished { run: run.id.clone(), state, reason });
        let steps = self.store.steps(&run)?;
        Ok(RunSummary { run, steps })
    }
}

/// Renews a run's lease until dropped.
struct Renewing(tokio::task::JoinHandle<()>);

impl Renewing {
    fn start(store: airlock_store::Store, run: &str, cancel: tokio_util::sync::CancellationToken) -> Self {
        let run = run.to_owned();
        Self(tokio::spawn(async move {
            let every = store.lease_time() / 3;
            loop {
                tokio::time::sleep(every).await;
                let (s, r) = (store.clone(), run.clone());
                match tokio::task::spawn_blocking(move || s.renew_lease(&r)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::warn!(
                            "run {run}: this engine's lease on it expired and another engine took it over; \
                             this engine stops working on it"
                        );
                        cancel.cancel();
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!("run {run}: cannot renew its lease: {e}"),
                    Err(_) => return,
                }
            }
        }))
    }
}

impl Drop for Renewing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `work` on a blocking thread; what it reports through the
/// function it is given reaches `report` here, as it comes. Fetching a
/// tool and compiling a plugin both take long and say how they go.
pub(crate) async fn blocking_reporting<T: Send + 'static, P: Send + 'static>(
    work: impl FnOnce(&dyn Fn(P)) -> T + Send + 'static,
    mut report: impl FnMut(P),
) -> Result<T, tokio::task::JoinError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = tokio::task::spawn_blocking(move || {
        work(&|p| {
            let _ = tx.send(p);
        })
    });
    // The sender goes with `work`: this ends when it has returned.
    while let Some(p) = rx.recv().await {
        report(p);
    }
    job.await
}

/// Records the steps the schedule decided will never run.
fn record_skips(shared: &Shared, schedule: &Schedule, skips: Vec<Skip>) -> Result<(), RunnerError> {
    for Skip { index, reason } in skips {
        end_step(shared, schedule.name(index), StepState::Skipped, &reason, &reason)?;
    }
    Ok(())
}

/// Records that a step the engine did not run to its end is over, in
/// `state` with `reason` (`detail` for the record's history), and tells
/// the observer.
fn end_step(shared: &Shared, name: &str, state: StepState, reason: &str, detail: &str) -> Result<(), RunnerError> {
    let record = shared.store.update_step(&shared.run_id, name, Some(detail.to_owned()), |s| {
        s.state = state;
        s.reason = Some(reason.to_owned());
        s.ended_ms = Some(now_ms());
    })?;
    emit_finished(shared, &record, false);
    Ok(())
}
