//! Steps that run on agents, the server's side: the job offered, waited
//! for, and its result taken only once every output is in the artifact
//! store under its digest.

use super::Shared;
use super::grants::effective_limits;
use super::outputs::{lay_out, outputs_dir};
use super::step::StepError;
use crate::agent::{JobInput, JobMount, JobResult, JobSpec};
use airlock_model::PluginStep;
use airlock_sandbox::{DeployRequest, Invocation};
use airlock_store::{Awaited, JobRecord, OutputRecord};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the engine looks whether an agent completed a job, when no
/// signal says so (one may be lost with a database connection).
const POLL: Duration = Duration::from_millis(500);

/// What an attempt on an agent came to.
pub(crate) struct Ran {
    pub(crate) result: Result<Vec<OutputRecord>, String>,
    pub(crate) log: Vec<u8>,
    pub(crate) log_written: u64,
    pub(crate) requests: Vec<DeployRequest>,
}

/// Puts the step's plugin (the file at `path`: the plugin file, or the
/// module of the tool it uses) into the artifact store, where agents
/// fetch it by digest; answers its digest and size. The digest is the one
/// the run worked out for the file (once per run, as the step cache's key
/// uses it): a plugin already stored is not read again.
pub(crate) async fn store_plugin(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    path: &Path,
) -> Result<OutputRecord, String> {
    let path = path.to_owned();
    let digest = super::cache::file_digest(shared, &path).await?;
    let max =
        shared.grants.as_ref().and_then(|g| g.grants.limits.plugin).unwrap_or(airlock_model::DEFAULT_PLUGIN_LIMIT);
    let artifacts = shared.artifacts.clone();
    let uses = step.uses.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("plugin `{uses}`: {e}"))?;
        let size = file.metadata().map_err(|e| format!("plugin `{uses}`: {e}"))?.len();
        if size > max {
            return Err(format!(
                "plugin `{uses}` is {}, over the {} limit for plugins",
                airlock_model::format_size(size),
                airlock_model::format_size(max)
            ));
        }
        if artifacts.contains(&digest) {
            return Ok(OutputRecord { path: uses, sha256: digest, size });
        }
        let (sha256, size, _) = artifacts.put(file).map_err(|e| format!("plugin `{uses}`: {e}"))?;
        Ok(OutputRecord { path: uses, sha256, size })
    })
    .await
    .map_err(|e| format!("step `{name}`: {e}"))??;
    shared.store.index_artifact(&stored.sha256, stored.size).map_err(|e| format!("cannot index the plugin: {e}"))?;
    Ok(stored)
}

/// The pools of the policy whose agents may run `step`.
fn pools(shared: &Shared, name: &str, step: &PluginStep) -> Result<Vec<String>, String> {
    let environment = shared.grants.as_ref().map(|g| g.environment());
    let agents = shared.policy.as_ref().map(|p| &p.0.agents);
    let fit: Vec<String> = agents
        .into_iter()
        .flatten()
        .filter(|(_, pool)| pool.serves(environment) && step.runs_on.iter().all(|l| pool.labels.contains(l)))
        .map(|(name, _)| name.clone())
        .collect();
    if fit.is_empty() {
        let serving = environment.map(|e| format!(" and runs steps of environment `{e}`")).unwrap_or_default();
        return Err(format!(
            "step `{name}` runs on an agent labelled {}, and no pool of the policy's `agents:` has those labels{serving}; \
             an admin adds the labels to a pool (or run the step on the server: drop `runs_on`)",
            step.runs_on.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(fit)
}

/// Every file under `dir`, put into the artifact store: a source tree
/// given to a step on an agent.
fn store_tree(artifacts: &airlock_host::ArtifactStore, dir: &std::path::Path) -> Result<Vec<OutputRecord>, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        let entries = std::fs::read_dir(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", at.display()))?;
            let kind = entry.file_type().map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (sha256, size, _) = artifacts.put(file).map_err(|e| e.to_string())?;
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                files.push(OutputRecord { path: relative, sha256, size });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// A tree of this host's (a source, a mounted directory) for an agent:
/// every file put into the artifact store, where the agent fetches it by
/// digest, and indexed. A tree that never changes (a fetched tool's, a
/// commit's) is read once for all runs; a source once per run.
async fn hand_over(shared: &Shared, dir: &Path) -> Result<Vec<OutputRecord>, String> {
    let lasting = shared.lasting.iter().any(|root| dir.starts_with(root));
    let known = if lasting { &shared.handed_over } else { &shared.handed_in_run };
    if let Some(files) = known.get(dir) {
        return Ok(files.to_vec());
    }
    let (artifacts, at) = (shared.artifacts.clone(), dir.to_owned());
    let files = tokio::task::spawn_blocking(move || store_tree(&artifacts, &at))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)?;
    for f in &files {
        shared.store.index_artifact(&f.sha256, f.size).map_err(|e| e.to_string())?;
    }
    known.insert(dir.to_owned(), Arc::new(files.clone()));
    Ok(files)
}

/// Offers one attempt of `step` to the agents and waits for its result.
pub(crate) async fn run_on_agent(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    plugin: &OutputRecord,
    invocation: &Invocation,
    attempt: u32,
    cancel: &CancellationToken,
) -> Result<Ran, StepError> {
    let failed = |reason: String| StepError::Failed(reason);
    let pools = pools(shared, name, step).map_err(failed)?;
    let mut inputs = Vec::new();
    for (input, dir) in &invocation.inputs {
        let files = match shared.sources.get(input) {
            Some(source) => hand_over(shared, source)
                .await
                .map_err(|e| failed(format!("step `{name}`: cannot hand the source `{input}` to an agent: {e}")))?,
            None => {
                shared
                    .store
                    .step(&shared.run_id, input)
                    .map_err(|e| failed(format!("step `{name}`: the outputs of `{input}`: {e} ({})", dir.display())))?
                    .outputs
            }
        };
        inputs.push(JobInput { name: input.clone(), files });
    }
    let mut mounts = Vec::new();
    for (guest, dir) in &invocation.mounts {
        let files = hand_over(shared, dir)
            .await
            .map_err(|e| failed(format!("step `{name}`: cannot hand the mount `{guest}` to an agent: {e}")))?;
        mounts.push(JobMount { guest: guest.clone(), files });
    }
    let limits = effective_limits(shared, step);
    let interfaces =
        shared.grants.iter().flat_map(|g| g.grants.interfaces.iter().map(|i| i.name().to_owned())).collect();
    let spec = JobSpec {
        plugin: plugin.clone(),
        uses: step.uses.clone(),
        fuel_metered: limits.fuel.is_some(),
        interfaces,
        max_plugin_bytes: shared
            .grants
            .as_ref()
            .and_then(|g| g.grants.limits.plugin)
            .unwrap_or(airlock_model::DEFAULT_PLUGIN_LIMIT),
        argv0: invocation.argv0.clone(),
        entry: invocation.entry.clone(),
        params: invocation.params.clone(),
        args: invocation.args.clone(),
        env: invocation.env.clone(),
        run_id: invocation.run_id.clone(),
        step: name.to_owned(),
        memory: invocation.memory,
        log_limit: invocation.log_limit,
        fuel: invocation.fuel,
        timeout_ms: u64::try_from(invocation.timeout.as_millis()).unwrap_or(u64::MAX),
        disk: invocation.quota.bytes,
        files: invocation.quota.entries,
        seed: invocation.seed.map(hex::encode),
        inputs,
        mounts,
        outputs: step.outputs.clone(),
    };
    let spec = serde_json::to_value(&spec).map_err(|e| failed(e.to_string()))?;
    let job = JobRecord::new(&shared.run_id, name, attempt, step.runs_on.clone(), pools, spec);
    // Listening before the offer: the completion's signal cannot come
    // before it.
    let mut signals = shared.store.signals();
    shared.store.offer_job(&job).map_err(|e| failed(format!("step `{name}`: cannot offer it to agents: {e}")))?;
    let done = loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            signal = signals.recv() => match signal {
                Ok(airlock_store::Signal::Done(id)) if id == job.id => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => tokio::time::sleep(POLL).await,
            },
            () = cancel.cancelled() => {
                if let Err(e) = shared.store.remove_job(&job.id) {
                    tracing::warn!("job {}: cannot take it back: {e}", job.id);
                }
                return Err(StepError::Cancelled);
            }
        }
        // Taken out of the store as it is read: one statement.
        match shared.store.take_done_job(&job.id) {
            Ok(Awaited::Done(j)) => break *j,
            Ok(Awaited::NotYet) => {}
            Ok(Awaited::Gone) => return Err(failed(format!("step `{name}`: its job on the agents is gone"))),
            Err(e) => return Err(failed(format!("step `{name}`: {e}"))),
        }
    };
    let result: JobResult = serde_json::from_value(done.result.unwrap_or_default())
        .map_err(|e| failed(format!("step `{name}`: the agent's result cannot be read: {e}")))?;
    use base64::Engine as _;
    let log = base64::engine::general_purpose::STANDARD.decode(&result.log).unwrap_or_default();
    let requests =
        result.deploy_requests.into_iter().map(|(environment, paths)| DeployRequest { environment, paths }).collect();
    let (agent, log_written) = (done.agent.unwrap_or_default(), result.log_written);
    if let Some(failure) = result.failure {
        return Ok(Ran { result: Err(failure), log, log_written, requests });
    }
    // The server checked each upload against its digest; the outputs are
    // checked again where the steps downstream get them.
    let (artifacts, dest, outputs) = (shared.artifacts.clone(), outputs_dir(shared, name), result.outputs.clone());
    let laid_out = match outputs.is_empty() {
        // Nothing to copy: at most an old directory to remove, here.
        true => lay_out(&artifacts, &dest, &outputs),
        false => tokio::task::spawn_blocking(move || lay_out(&artifacts, &dest, &outputs))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r),
    };
    let result = match laid_out {
        Ok(()) => {
            for o in &result.outputs {
                shared.store.index_artifact(&o.sha256, o.size).map_err(|e| failed(e.to_string()))?;
            }
            Ok(result.outputs)
        }
        Err(e) => Err(format!("step `{name}`: the outputs agent `{agent}` reported are not all here: {e}")),
    };
    Ok(Ran { result, log, log_written, requests })
}
