//! One run, from its record to its end.

use crate::{Engine, RunOptions, RunnerError};
use airlock_host::{ExtractLimits, extract};
use airlock_model::text::one_line;
use airlock_model::{Dag, ExprContext, Lookup, ParamValue, Pipeline, Step, render};
use airlock_sandbox::{DeployRequest, Failure, HostGrants, Invocation, OverQuota, Plugin, PluginKind, Quota, Sandbox};
use airlock_store::{
    ApprovalArtifact, DeployedRecord, LogRecord, OutputRecord, PublishedRecord, RunRecord, RunState, StepRecord,
    StepState, now_ms,
};
use indexmap::IndexMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Answers validation's questions from the file system, relative to the
/// pipeline file's directory.
pub struct FsLookup {
    base: PathBuf,
    policy: Option<airlock_model::policy::Policy>,
}

impl FsLookup {
    /// Looks paths up relative to `base`.
    pub fn new(base: &Path) -> Self {
        Self { base: base.to_owned(), policy: None }
    }

    /// Checks publish targets against this admin policy.
    pub fn with_policy(mut self, policy: airlock_model::policy::Policy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl Lookup for FsLookup {
    fn plugin_exists(&self, path: &str) -> bool {
        self.base.join(path).is_file()
    }
    fn dir_exists(&self, path: &str) -> bool {
        self.base.join(path).is_dir()
    }
    fn environment(&self, name: &str, pipeline: &str) -> Result<(), String> {
        let Some(policy) = &self.policy else {
            return Err(format!(
                "this step deploys to `{name}`, but no admin policy was given; pass `--policy FILE` or set AIRLOCK_POLICY"
            ));
        };
        match policy.environments.get(name) {
            Some(env) if env.allows_pipeline(pipeline) => Ok(()),
            Some(_) => Err(format!("pipeline `{pipeline}` may not deploy to `{name}`: the policy does not list it")),
            None => {
                let names: Vec<&str> = policy.environments.keys().map(String::as_str).collect();
                Err(format!("no environment `{name}` in the policy; it has: {}", names.join(", ")))
            }
        }
    }
    fn publish_target(&self, name: &str) -> Result<(), String> {
        match &self.policy {
            Some(policy) => policy.target(name).map(drop),
            None => Err(format!(
                "this step publishes to `{name}`, but no admin policy was given; pass `--policy FILE` or set AIRLOCK_POLICY"
            )),
        }
    }
}

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
        deployed: Option<DeployedRecord>,
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

/// Longest reason recorded for a step. Reasons quote what guests wrote
/// (their error messages, their file names), so they are also kept to one
/// line with every control character escaped.
const MAX_REASON_BYTES: usize = 4096;

/// A plugin loaded once per run, or why it could not be.
type PluginCell = OnceCell<Result<Plugin, String>>;

/// Everything the step tasks share.
pub(crate) struct Shared {
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
    /// What the pipeline's environment grants its plugin steps.
    pub(crate) grants: Option<EnvironmentGrants>,
    /// Logs of the steps running now, for readers who follow them.
    pub(crate) live: crate::LiveLogs,
}

/// The grants of the environment a pipeline runs for, ready to apply.
pub(crate) struct EnvironmentGrants {
    environment: String,
    grants: airlock_model::policy::Grants,
    /// The allowed plugin patterns, as absolute paths.
    plugins: Option<globset::GlobSet>,
}

impl EnvironmentGrants {
    fn new(environment: &str, grants: &airlock_model::policy::Grants, policy_dir: &Path) -> Result<Self, String> {
        let plugins = if grants.plugins.is_empty() {
            None
        } else {
            let base = std::fs::canonicalize(policy_dir).unwrap_or_else(|_| policy_dir.to_owned());
            let mut set = globset::GlobSetBuilder::new();
            for pattern in &grants.plugins {
                let absolute = normalize(&base.join(pattern));
                let glob = globset::GlobBuilder::new(&absolute.to_string_lossy())
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("plugin pattern `{pattern}` of environment `{environment}`: {e}"))?;
                set.add(glob);
            }
            Some(set.build().map_err(|e| e.to_string())?)
        };
        Ok(Self { environment: environment.to_owned(), grants: grants.clone(), plugins })
    }

    /// Whether the environment lets this plugin file run.
    fn check_plugin(&self, file: &Path, as_written: &str) -> Result<(), String> {
        let Some(allowed) = &self.plugins else { return Ok(()) };
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| normalize(file));
        if allowed.is_match(&real) {
            Ok(())
        } else {
            Err(format!(
                "plugin `{as_written}` is not among the plugins environment `{}` allows ({})",
                self.environment,
                self.grants.plugins.join(", ")
            ))
        }
    }
}

/// A step's limits: what the pipeline asked for, bounded by what the
/// environment it runs for grants.
fn effective_limits(shared: &Shared, step: &Step) -> airlock_model::Limits {
    match &shared.grants {
        Some(g) => g.grants.limits.apply(&step.limits, &step.limits_written),
        None => step.limits,
    }
}

/// `path` with `.` and `..` resolved by name, not by the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What a step task reports back to the scheduler.
struct Finished {
    index: usize,
    record: StepRecord,
    log_truncated: bool,
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
        std::fs::create_dir_all(&run_dir).map_err(|source| RunnerError::StateDir { path: run_dir.clone(), source })?;
        observer(&Progress::RunStarted { run: run.id.clone(), steps: names.clone() });

        let shared = Arc::new(Shared {
            sandbox: self.sandbox.clone(),
            store: self.store.clone(),
            artifacts: self.artifacts.clone(),
            run_dir: run_dir.clone(),
            base_dir: base_dir.to_owned(),
            run_id: run.id.clone(),
            params,
            sources: pipeline.sources.iter().map(|(k, v)| (k.clone(), base_dir.join(&v.path))).collect(),
            plugins: Mutex::new(HashMap::new()),
            observer,
            spare_workspaces: (!options.keep_workspaces).then(Default::default),
            targets: self.targets.clone(),
            policy: self.policy.clone(),
            pipeline: pipeline.name.clone(),
            requester: options.requester.clone(),
            grants,
            live: self.live.clone(),
        });

        let mut first_failure: Option<String> = None;
        // Where each step is: all pending for a run made just now; for a
        // recorded one, what the store says, with interrupted steps dealt
        // with.
        let mut states = Vec::with_capacity(dag.len());
        for index in 0..dag.len() {
            let name = dag.name(index);
            let state =
                if recorded { resume_step(&shared, name, &pipeline.steps[name]).await? } else { StepState::Pending };
            match state {
                StepState::Failed => {
                    first_failure.get_or_insert_with(|| format!("step `{name}` failed"));
                }
                // Cancelled while its run was being cancelled, before the
                // engine stopped: the run cannot succeed without it.
                StepState::Cancelled => {
                    first_failure.get_or_insert_with(|| format!("step `{name}` was cancelled"));
                }
                _ => {}
            }
            states.push(state);
        }
        let mut waiting: Vec<usize> =
            (0..dag.len()).map(|i| dag.needs(i).filter(|n| states[*n] != StepState::Succeeded).count()).collect();
        // A pending step behind one that did not succeed will never run.
        for index in 0..dag.len() {
            if states[index] != StepState::Pending {
                continue;
            }
            if let Some(blocker) =
                dag.needs(index).find(|n| states[*n].is_final() && states[*n] != StepState::Succeeded)
            {
                let reason = format!("`{}`, which it needs, did not succeed", dag.name(blocker));
                let record = shared.store.update_step(&run.id, dag.name(index), Some(reason.clone()), |s| {
                    s.state = StepState::Skipped;
                    s.reason = Some(reason.clone());
                    s.ended_ms = Some(now_ms());
                })?;
                states[index] = StepState::Skipped;
                emit_finished(&shared, &record, false);
            }
        }
        let mut ready: Vec<usize> =
            (0..dag.len()).filter(|i| states[*i] == StepState::Pending && waiting[*i] == 0).collect();
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        let jobs = options.jobs.clamp(1, airlock_sandbox::MAX_CONCURRENT_STEPS);
        let mut cancelled = false;

        loop {
            while !cancelled && tasks.len() < jobs && !ready.is_empty() {
                let index = ready.remove(0);
                states[index] = StepState::Running;
                let name = dag.name(index).to_owned();
                let step = pipeline.steps[&name].clone();
                let shared = shared.clone();
                let cancel = cancel.clone();
                tasks.spawn(async move { run_step(shared, index, name, step, cancel).await });
            }
            if tasks.is_empty() {
                break;
            }
            let joined = tokio::select! {
                joined = tasks.join_next() => joined,
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    // Each step task notices the token, records itself
                    // cancelled and returns; keep collecting them.
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let finished = match joined {
                Ok(f) => f,
                Err(e) => {
                    // A step task panicked: a bug in airlock, not in the
                    // guest. Keep the engine running; the step is lost, so
                    // the run cannot succeed.
                    tracing::error!("a step task ended abnormally: {e}");
                    first_failure.get_or_insert_with(|| format!("internal error while running a step: {e}"));
                    continue;
                }
            };
            let index = finished.index;
            states[index] = finished.record.state;
            emit_finished(&shared, &finished.record, finished.log_truncated);
            match finished.record.state {
                StepState::Succeeded => {
                    for d in dag.dependants(index).collect::<Vec<_>>() {
                        waiting[d] -= 1;
                        if waiting[d] == 0 && states[d] == StepState::Pending {
                            ready.push(d);
                        }
                    }
                }
                StepState::Failed => {
                    let name = dag.name(index);
                    first_failure.get_or_insert_with(|| format!("step `{name}` failed"));
                    for d in dag.downstream(index) {
                        if states[d] == StepState::Pending {
                            states[d] = StepState::Skipped;
                            ready.retain(|r| *r != d);
                            let reason = format!("`{name}`, which it needs, failed");
                            let record = shared.store.update_step(&run.id, dag.name(d), Some(reason.clone()), |s| {
                                s.state = StepState::Skipped;
                                s.reason = Some(reason.clone());
                                s.ended_ms = Some(now_ms());
                            })?;
                            emit_finished(&shared, &record, false);
                        }
                    }
                }
                _ => {}
            }
        }

        // A step that saw the cancellation first may have ended before the
        // loop did: the token, not the loop's flag, says whether it came.
        let cancelled = cancelled || cancel.is_cancelled();
        // Whatever never started (cancelled before its turn) is recorded so.
        for (i, state) in states.iter().enumerate() {
            if !state.is_final() {
                let record = shared.store.update_step(&run.id, dag.name(i), Some("run cancelled".into()), |s| {
                    s.state = StepState::Cancelled;
                    s.reason = Some("cancelled before it started".into());
                    s.ended_ms = Some(now_ms());
                })?;
                emit_finished(&shared, &record, false);
            }
        }
        let (state, reason) = if cancelled {
            (RunState::Cancelled, Some("cancelled by the user".to_owned()))
        } else if let Some(reason) = first_failure {
            (RunState::Failed, Some(reason))
        } else {
            (RunState::Succeeded, None)
        };
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

fn emit_finished(shared: &Shared, record: &StepRecord, log_truncated: bool) {
    let duration_ms = match (record.started_ms, record.ended_ms) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    (shared.observer)(&Progress::StepFinished {
        step: record.name.clone(),
        state: record.state,
        duration_ms,
        reason: record.reason.clone(),
        outputs: record.outputs.clone(),
        log_truncated,
        published: record.published.clone(),
        deployed: record.deployed.clone(),
    });
}

/// Where a step of a run being (re)started is, after dealing with an
/// attempt its engine did not see to the end. A succeeded step keeps its
/// outputs, laid out again for the steps downstream.
async fn resume_step(shared: &Shared, name: &str, step: &Step) -> Result<StepState, RunnerError> {
    let record = shared.store.step(&shared.run_id, name)?;
    match record.state {
        StepState::Succeeded => {
            if !record.outputs.is_empty() {
                let (dest, artifacts, outputs) =
                    (outputs_dir(shared, name), shared.artifacts.clone(), record.outputs.clone());
                let laid_out = tokio::task::spawn_blocking(move || lay_out(&artifacts, &dest, &outputs)).await;
                if let Err(e) = laid_out.unwrap_or_else(|e| Err(e.to_string())) {
                    // Its outputs are gone or damaged; running it again
                    // would break "never twice", so the step fails.
                    let reason = format!("step `{name}` succeeded, but its outputs cannot be laid out again: {e}");
                    shared.store.update_step(&shared.run_id, name, Some(reason.clone()), |s| {
                        s.state = StepState::Failed;
                        s.reason = Some(reason.clone());
                    })?;
                    return Ok(StepState::Failed);
                }
            }
            Ok(StepState::Succeeded)
        }
        StepState::Running | StepState::Retrying if record.effect_started_ms.is_some() && !idempotent(shared, step) => {
            let reason = format!(
                "step `{name}`: the engine stopped after the deployment was handed to the provider; it may have \
                 happened, so it is not repeated; check the environment, then start a new run"
            );
            shared.store.update_step(&shared.run_id, name, Some(reason.clone()), |s| {
                s.state = StepState::Failed;
                s.reason = Some(reason.clone());
                s.ended_ms = Some(now_ms());
            })?;
            Ok(StepState::Failed)
        }
        StepState::Running | StepState::Retrying => {
            // A plugin step touched nothing but its workspace, a publish
            // commits the same tree or nothing, and an idempotent provider
            // applies a deployment's key once: all start again.
            // A wait for approval asks again, with a new code: the old
            // one was shown to a process that is gone.
            shared.store.discard_pending_approval(&shared.run_id, name)?;
            for dir in [shared.run_dir.join(name), outputs_dir(shared, name)] {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(RunnerError::StateDir { path: dir, source }),
                }
            }
            shared.store.update_step(&shared.run_id, name, Some("restarted: its engine had stopped".into()), |s| {
                s.state = StepState::Pending;
                s.reason = None;
            })?;
            Ok(StepState::Pending)
        }
        other => Ok(other),
    }
}

/// Whether a deploy step's provider may be sent the same deployment
/// again (it recognises the deployment's idempotency key, `RUN/STEP`).
/// A plugin's deploy request names its environment only at run time, so
/// it is never sent again.
fn idempotent(shared: &Shared, step: &Step) -> bool {
    let (Some(spec), Some(policy)) = (&step.deploy, &shared.policy) else { return false };
    policy.0.environments.get(&spec.environment).is_some_and(|e| e.provider.idempotent())
}

/// Copies a step's outputs from the artifact store, each checked against
/// its digest, to where downstream steps read them.
fn lay_out(artifacts: &airlock_host::ArtifactStore, dest: &Path, outputs: &[OutputRecord]) -> Result<(), String> {
    match std::fs::remove_dir_all(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot clear {}: {e}", dest.display())),
    }
    for o in outputs {
        let to = dest.join(&o.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot lay out outputs: {e}"))?;
        }
        artifacts.copy_verified(&o.sha256, &to).map_err(|e| e.to_string())?;
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot lay out outputs: {e}"))
}

/// Records that a step running in the host (publish, deploy, approval)
/// started: it has one attempt.
pub(crate) fn host_step_started(shared: &Shared, name: &str, detail: &str) -> Result<(), StepError> {
    shared
        .store
        .update_step(&shared.run_id, name, Some(detail.into()), |s| {
            s.state = StepState::Running;
            s.attempts = 1;
            s.started_ms.get_or_insert_with(now_ms);
        })
        .map_err(|e| StepError::Failed(format!("step `{name}`: cannot record the step: {e}")))?;
    (shared.observer)(&Progress::StepStarted { step: name.to_owned(), attempt: 1 });
    Ok(())
}

/// Runs every attempt of one step and records its end state.
async fn run_step(shared: Arc<Shared>, index: usize, name: String, step: Step, cancel: CancellationToken) -> Finished {
    let mut log_truncated = false;
    let (mut published, mut deployed) = (None, None);
    let result = if let Some(publish) = &step.publish {
        crate::publish::run(&shared, &name, &step, publish, &cancel).await.map(|p| {
            published = Some(p);
            Vec::new()
        })
    } else if let Some(spec) = &step.deploy {
        crate::environments::deploy(&shared, &name, spec, &cancel).await.map(|d| {
            deployed = Some(d);
            Vec::new()
        })
    } else if let Some(spec) = &step.approval {
        crate::environments::approval(&shared, &name, spec, &cancel).await.map(|d| {
            deployed = Some(d);
            Vec::new()
        })
    } else {
        match attempts(&shared, &name, &step, &cancel, &mut log_truncated).await {
            // The step asked for a deployment: the host does it now, with
            // the outputs just taken out, if the policy allows.
            Ok((outputs, requests)) => match requests.into_iter().next() {
                None => Ok(outputs),
                Some(request) => {
                    crate::environments::requested(&shared, &name, &request, &outputs, &cancel).await.map(|d| {
                        deployed = Some(d);
                        outputs
                    })
                }
            },
            Err(e) => Err(e),
        }
    };
    let store = &shared.store;
    let (state, reason, outputs) = match result {
        Ok(outputs) => (StepState::Succeeded, None, outputs),
        Err(StepError::Cancelled) => (StepState::Cancelled, Some("cancelled while running".to_owned()), Vec::new()),
        Err(StepError::Failed(reason)) => (StepState::Failed, Some(reason), Vec::new()),
    };
    let reason = reason.map(|r| one_line(&r, MAX_REASON_BYTES));
    let record = store.update_step(&shared.run_id, &name, reason.clone(), |s| {
        s.state = state;
        s.reason = reason.clone();
        s.outputs = outputs.clone();
        s.published = published.clone();
        s.deployed = deployed.clone();
        s.ended_ms = Some(now_ms());
    });
    let record = record.unwrap_or_else(|e| {
        // The store refusing a write leaves the run unrecordable; report the
        // step failed with that reason rather than lose it.
        tracing::error!("cannot record step `{name}`: {e}");
        StepRecord {
            name: name.clone(),
            state: StepState::Failed,
            attempts: 0,
            started_ms: None,
            ended_ms: Some(now_ms()),
            reason: Some(format!("cannot record the step's end: {e}")),
            plugin_sha256: None,
            outputs: Vec::new(),
            published: None,
            deployed: None,
            effect_started_ms: None,
        }
    });
    Finished { index, record, log_truncated }
}

pub(crate) enum StepError {
    /// The step failed, with the reason.
    Failed(String),
    /// The run was cancelled while the step ran.
    Cancelled,
}

async fn attempts(
    shared: &Shared,
    name: &str,
    step: &Step,
    cancel: &CancellationToken,
    log_truncated: &mut bool,
) -> Result<(Vec<OutputRecord>, Vec<DeployRequest>), StepError> {
    let store = &shared.store;
    let failed = |reason: String| StepError::Failed(reason);
    let record_error = |e: airlock_store::StoreError| StepError::Failed(format!("cannot record the step: {e}"));
    if let Some(grants) = &shared.grants {
        grants
            .check_plugin(&shared.base_dir.join(&step.uses), &step.uses)
            .map_err(|e| failed(format!("step `{name}`: {e}")))?;
    }
    let plugin = load_plugin(shared, step).await.map_err(failed)?;
    check_kind(name, step, &plugin).map_err(failed)?;
    let invocation = invocation(shared, name, step).map_err(failed)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let digest = plugin.digest.clone();
        store
            .update_step(&shared.run_id, name, Some(format!("attempt {attempt}")), |s| {
                s.state = StepState::Running;
                s.attempts = attempt;
                s.started_ms.get_or_insert_with(now_ms);
                s.plugin_sha256 = Some(digest.clone());
            })
            .map_err(record_error)?;
        (shared.observer)(&Progress::StepStarted { step: name.to_owned(), attempt });

        let workspace = fresh_workspace(shared, name, attempt).map_err(failed)?;
        let live = airlock_sandbox::LogSink::new(usize::try_from(invocation.log_limit).unwrap_or(usize::MAX));
        let live_key = (shared.run_id.clone(), name.to_owned());
        shared.live.insert(live_key.clone(), attempt, live.clone());
        let inv = Invocation { workspace: workspace.clone(), live_log: Some(live), ..invocation.clone() };

        let outcome = tokio::select! {
            outcome = shared.sandbox.run(&plugin, inv) => outcome,
            () = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let requests = outcome.deploy_requests;
        let truncated = outcome.log_written > outcome.log.len() as u64;
        *log_truncated |= truncated;
        if outcome.log_written > 0 {
            let mut bytes = outcome.log;
            if truncated {
                bytes.extend_from_slice(
                    format!(
                        "\n[airlock: log truncated: kept {} of {} written]\n",
                        airlock_model::format_size(bytes.len() as u64),
                        airlock_model::format_size(outcome.log_written)
                    )
                    .as_bytes(),
                );
            }
            store
                .put_log(&shared.run_id, name, &LogRecord { attempt, bytes, written: outcome.log_written })
                .map_err(record_error)?;
        }
        // From here on, readers find the attempt's log in the store.
        shared.live.remove(&live_key);
        let result = match outcome.result {
            Ok(()) => take_outputs(shared, name, step, &workspace).await,
            Err(failure) => Err(describe(name, step, &failure)),
        };
        if result.is_ok() {
            recycle_workspace(shared, workspace);
        } else if attempt <= step.retries.count {
            discard_workspace(shared, workspace).await;
        }
        match result {
            Ok(outputs) => return Ok((outputs, requests)),
            Err(reason) if attempt <= step.retries.count => {
                let reason = one_line(&reason, MAX_REASON_BYTES);
                let backoff = step.retries.backoff.saturating_mul(1 << (attempt - 1).min(16));
                store
                    .update_step(&shared.run_id, name, Some(reason.clone()), |s| {
                        s.state = StepState::Retrying;
                        s.reason = Some(reason.clone());
                    })
                    .map_err(record_error)?;
                (shared.observer)(&Progress::StepRetrying {
                    step: name.to_owned(),
                    attempt,
                    reason,
                    backoff_ms: backoff.as_millis() as u64,
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => return Err(StepError::Cancelled),
                }
            }
            Err(reason) => return Err(StepError::Failed(reason)),
        }
    }
}

/// An empty directory for one attempt of a step: a spare one left empty
/// by a step that finished, or a new one.
///
/// Creating directories is most of what a step costs on ext4 once many
/// have been deleted (the inode allocator skips recently freed inodes), so
/// empty workspaces are reused within a run.
fn fresh_workspace(shared: &Shared, name: &str, attempt: u32) -> Result<PathBuf, String> {
    if let Some(spare) = &shared.spare_workspaces
        && let Some(dir) = spare.lock().ok().and_then(|mut s| s.pop())
    {
        return Ok(dir);
    }
    // A retry starts from a new workspace, like the first attempt (the
    // failed attempt's is deleted first, see `discard_workspace`, unless
    // workspaces are kept).
    let dir = match attempt {
        1 => shared.run_dir.join(name),
        n => shared.run_dir.join(format!("{name}.attempt-{n}")),
    };
    let created = std::fs::create_dir(&dir).or_else(|e| {
        // Left by an attempt whose engine stopped: this step's alone.
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        std::fs::remove_dir_all(&dir)?;
        std::fs::create_dir(&dir)
    });
    created.map_err(|e| format!("cannot create the workspace {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Offers the workspace of a succeeded attempt for reuse if it is empty.
///
/// Only succeeded attempts qualify: when an attempt fails or times out,
/// wasmtime may still be finishing a blocking file operation the guest
/// started, so its directory is never handed to another step.
fn recycle_workspace(shared: &Shared, workspace: PathBuf) {
    let Some(spare) = &shared.spare_workspaces else { return };
    let empty = std::fs::read_dir(&workspace).is_ok_and(|mut entries| entries.next().is_none());
    if empty && let Ok(mut spare) = spare.lock() {
        spare.push(workspace);
    }
}

/// Deletes the workspace of a failed attempt before the next one starts,
/// so a step that fails on purpose cannot keep a disk quota's worth of
/// files per retry. Kept with `--keep-workspaces`.
async fn discard_workspace(shared: &Shared, workspace: PathBuf) {
    if shared.spare_workspaces.is_none() {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&workspace).map_err(|e| (workspace, e)));
    if let Ok(Err((dir, e))) = removed.await {
        tracing::warn!("cannot remove the workspace of a failed attempt at {}: {e}", dir.display());
    }
}

/// The failure of a step, in words.
fn describe(name: &str, step: &Step, failure: &Failure) -> String {
    match failure {
        Failure::Error(msg) => format!("step `{name}` failed: {msg}"),
        Failure::Exit(code) => format!("step `{name}` exited with status {code}"),
        Failure::MemoryLimit { limit } => {
            format!("step `{name}` exceeded its {} memory limit", airlock_model::format_size(*limit))
        }
        Failure::Timeout(_) => {
            format!("step `{name}` ran past its {} timeout", humantime::format_duration(step.timeout))
        }
        Failure::OutOfFuel(fuel) => format!("step `{name}` used up its fuel of {fuel} instructions"),
        Failure::StackOverflow => format!("step `{name}` overflowed its call stack (deep or endless recursion)"),
        Failure::TableLimit => format!(
            "step `{name}` tried to grow a table past {} elements, the limit",
            airlock_sandbox::MAX_TABLE_ELEMENTS
        ),
        Failure::Quota(OverQuota::Bytes(limit)) => format!(
            "step `{name}` wrote more than its disk quota of {} to its workspace",
            airlock_model::format_size(*limit)
        ),
        Failure::Quota(OverQuota::Entries(limit)) => {
            format!("step `{name}` made more than {limit} files and directories in its workspace, its limit")
        }
        Failure::Quota(OverQuota::Depth(limit)) => {
            format!("step `{name}` nested directories more than {limit} deep in its workspace")
        }
        Failure::Trap(msg) => format!("step `{name}` crashed: {msg}"),
        Failure::Setup(msg) => format!("step `{name}` could not start: {msg}"),
        Failure::Cancelled => format!("step `{name}` was cancelled"),
    }
}

async fn load_plugin(shared: &Shared, step: &Step) -> Result<Plugin, String> {
    let path = shared.base_dir.join(&step.uses);
    let fuel = effective_limits(shared, step).fuel.is_some();
    let grants = HostGrants::of(shared.grants.iter().flat_map(|g| g.grants.interfaces.iter().copied()));
    // Steps sharing a plugin compile it once; different plugins compile
    // in parallel.
    let cell = shared.plugins.lock().await.entry((path.clone(), fuel, grants.clone())).or_default().clone();
    cell.get_or_init(|| async {
        let sandbox = shared.sandbox.clone();
        let (p, g) = (path.clone(), grants.clone());
        tokio::task::spawn_blocking(move || sandbox.load_granted(&p, fuel, &g))
            .await
            .map_err(|e| format!("plugin `{}` could not be loaded: {e}", step.uses))
            .and_then(|r| {
                r.map_err(|e| {
                    let mut message = e.to_string().replace(&path.display().to_string(), &step.uses);
                    for interface in airlock_sandbox::HostInterface::ALL {
                        if message.contains(interface.wit()) && !grants.allows(*interface) {
                            message.push_str(&format!(
                                "; a step may import `{}` only in a pipeline whose `environment:` grants `{}`",
                                interface.wit(),
                                interface.name()
                            ));
                        }
                    }
                    message
                })
            })
    })
    .await
    .clone()
}

fn check_kind(name: &str, step: &Step, plugin: &Plugin) -> Result<(), String> {
    match plugin.kind() {
        PluginKind::Step if step.args.is_some() => Err(format!(
            "step `{name}`: plugin `{}` is an `airlock:step` plugin; configure it with `with:`, not `args:`",
            step.uses
        )),
        PluginKind::Command | PluginKind::Module if !step.with.is_empty() => Err(format!(
            "step `{name}`: plugin `{}` is a WASI command program; pass it `args:`, not `with:`",
            step.uses
        )),
        _ => Ok(()),
    }
}

/// Everything but the workspace: inputs, rendered values, limits.
fn invocation(shared: &Shared, name: &str, step: &Step) -> Result<Invocation, String> {
    let ctx = ExprContext { params: &shared.params, run_id: &shared.run_id, step: name };
    let expand = |text: &String| render(text, &ctx).map_err(|e| format!("step `{name}`: {e}"));
    let mut inputs = Vec::new();
    for input in &step.inputs {
        // Validation guarantees an input is a source or an upstream step,
        // and a step only starts once its upstream steps succeeded.
        let dir = match shared.sources.get(input) {
            Some(dir) => dir.clone(),
            None => {
                // An upstream step without outputs leaves no directory.
                let dir = outputs_dir(shared, input);
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot lay out the input `{input}`: {e}"))?;
                dir
            }
        };
        inputs.push((input.clone(), dir));
    }
    let mut inv = Invocation::new(PathBuf::new());
    inv.inputs = inputs;
    inv.params = step.with.iter().map(|(k, v)| Ok((k.clone(), expand(v)?))).collect::<Result<_, String>>()?;
    inv.args = step.args.iter().flatten().map(expand).collect::<Result<_, _>>()?;
    inv.env = step.env.iter().map(|(k, v)| Ok((k.clone(), expand(v)?))).collect::<Result<_, String>>()?;
    inv.run_id = shared.run_id.clone();
    inv.step = name.to_owned();
    let limits = effective_limits(shared, step);
    inv.memory = limits.memory;
    inv.log_limit = limits.log;
    inv.fuel = limits.fuel;
    inv.timeout = step.timeout;
    inv.quota = Quota { bytes: limits.disk, entries: limits.files };
    Ok(inv)
}

/// Where a succeeded step's outputs are laid out for the steps downstream.
fn outputs_dir(shared: &Shared, step: &str) -> PathBuf {
    shared.run_dir.join(".outputs").join(step)
}

/// Extracts a succeeded step's outputs, indexes them, and lays them out
/// read-only for downstream steps.
async fn take_outputs(shared: &Shared, name: &str, step: &Step, workspace: &Path) -> Result<Vec<OutputRecord>, String> {
    if step.outputs.is_empty() {
        // Nothing to extract; a downstream step naming this one as an
        // input gets an empty directory (see `invocation`).
        return Ok(Vec::new());
    }
    let dest = outputs_dir(shared, name);
    let artifacts = shared.artifacts.clone();
    let (ws, patterns) = (workspace.to_owned(), step.outputs.clone());
    let extracted = tokio::task::spawn_blocking(move || {
        let outputs = extract(&ws, &patterns, &ExtractLimits::default(), &artifacts).map_err(|e| e.to_string())?;
        // Downstream steps see a copy checked against its digest, never
        // the workspace the guest wrote.
        let records: Vec<OutputRecord> =
            outputs.into_iter().map(|o| OutputRecord { path: o.path, sha256: o.sha256, size: o.size }).collect();
        lay_out(&artifacts, &dest, &records)?;
        Ok::<_, String>(records)
    })
    .await
    .map_err(|e| format!("step `{name}`: output extraction stopped: {e}"))?
    .map_err(|e| format!("step `{name}`: {e}"))?;
    for o in &extracted {
        shared.store.index_artifact(&o.sha256, o.size).map_err(|e| format!("cannot index outputs: {e}"))?;
    }
    Ok(extracted)
}
