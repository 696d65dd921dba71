//! Deploy and approval steps: trusted host code, never a guest.
//!
//! A deploy step checks its request against the environment's policy
//! (the pipeline may deploy there; the credentials are present and
//! unexpired), waits for the approvals the environment requires, and
//! then runs the environment's provider with exactly the artifacts that
//! were approved, by digest. An approval step only waits. The request a
//! person decides on shows what will happen: environment, provider,
//! target, every artifact's digest, and who asked; it carries a random
//! one-time code, shown in the run's output and stored only as its
//! digest. Decisions arrive through the store (see `airlock approve`);
//! a deadline passing denies.

use crate::exec::{Shared, StepError};
use crate::publish::upstream_outputs;
use airlock_host::deploy::{DeployArtifact, Deployment, preflight};
use airlock_model::EnvironmentStep;
use airlock_model::policy::Environment;
use airlock_store::{ApprovalArtifact, ApprovalRecord, ApprovalState, DeployedRecord, hash_code, new_code, now_ms};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a waiting step looks for decisions.
const POLL: Duration = Duration::from_millis(200);

fn environment<'a>(shared: &'a Shared, spec: &EnvironmentStep) -> Result<&'a Environment, String> {
    let policy = shared.policy.as_ref().ok_or("no admin policy was given, so there are no environments")?;
    let env = policy.0.environments.get(&spec.environment).ok_or_else(|| {
        format!("the admin policy has no environment `{}` (was it removed since validation?)", spec.environment)
    })?;
    if !env.allows_pipeline(&shared.pipeline) {
        return Err(format!("pipeline `{}` may not deploy to `{}`", shared.pipeline, spec.environment));
    }
    Ok(env)
}

/// Records the step started, and finds its environment and artifacts.
fn prepare<'a>(
    shared: &'a Shared,
    name: &str,
    spec: &EnvironmentStep,
    detail: &str,
) -> Result<(&'a Environment, Vec<DeployArtifact>), StepError> {
    let failed = |reason: String| StepError::Failed(format!("step `{name}`: {reason}"));
    crate::exec::host_step_started(shared, name, detail)?;
    let env = environment(shared, spec).map_err(&failed)?;
    let files = upstream_outputs(shared, &spec.from).map_err(&failed)?;
    let artifacts =
        files.into_iter().map(|f| DeployArtifact { path: f.path, sha256: f.sha256, size: f.size }).collect();
    Ok((env, artifacts))
}

/// An approval step: waits for the environment's approvers.
pub(crate) async fn approval(
    shared: &Shared,
    name: &str,
    spec: &EnvironmentStep,
    cancel: &CancellationToken,
) -> Result<DeployedRecord, StepError> {
    let (env, artifacts) = prepare(shared, name, spec, "waiting for approval")?;
    let record = wait_for_approval(shared, name, &spec.environment, env, &artifacts, cancel).await?;
    Ok(DeployedRecord {
        environment: spec.environment.clone(),
        provider: None,
        target: None,
        detail: format!("approved by {}", approvers_of(&record)),
        artifacts: artifacts.len() as u64,
        approval: Some(record.state.as_str().to_owned()),
        provenance: None,
    })
}

/// A deployment a plugin step asked for through `airlock:step/deploy`:
/// the paths must be among the outputs the host just took out of its
/// workspace; then the same checks as a deploy step.
pub(crate) async fn requested(
    shared: &Shared,
    name: &str,
    request: &airlock_sandbox::DeployRequest,
    outputs: &[airlock_store::OutputRecord],
    cancel: &CancellationToken,
) -> Result<DeployedRecord, StepError> {
    let failed = |reason: String| StepError::Failed(format!("step `{name}`: {reason}"));
    let mut artifacts = Vec::new();
    for path in &request.paths {
        let Some(o) = outputs.iter().find(|o| o.path == *path) else {
            return Err(failed(format!(
                "asked to deploy `{}`, which is not among its outputs",
                airlock_model::text::one_line(path, 200)
            )));
        };
        artifacts.push(DeployArtifact { path: o.path.clone(), sha256: o.sha256.clone(), size: o.size });
    }
    let spec = EnvironmentStep { environment: request.environment.clone(), from: Vec::new() };
    let env = environment(shared, &spec).map_err(&failed)?;
    deliver(shared, name, &spec.environment, env, artifacts, cancel).await
}

/// A deploy step: policy, credentials, approvals, then the provider.
pub(crate) async fn deploy(
    shared: &Shared,
    name: &str,
    spec: &EnvironmentStep,
    cancel: &CancellationToken,
) -> Result<DeployedRecord, StepError> {
    let (env, artifacts) = prepare(shared, name, spec, "deploying")?;
    deliver(shared, name, &spec.environment, env, artifacts, cancel).await
}

/// Credentials, approvals, then the provider, with exactly the approved
/// artifacts.
async fn deliver(
    shared: &Shared,
    name: &str,
    env_name: &str,
    env: &Environment,
    mut artifacts: Vec<DeployArtifact>,
    cancel: &CancellationToken,
) -> Result<DeployedRecord, StepError> {
    let failed = |reason: String| StepError::Failed(format!("step `{name}`: {reason}"));
    let policy_dir = shared.policy.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    // A missing or expired credential fails the deploy before anyone is
    // asked to approve it, and before anything happens.
    preflight(env_name, env, &policy_dir, now_ms()).map_err(|e| failed(e.to_string()))?;
    let mut approval = None;
    if env.approvals.is_some() {
        let record = wait_for_approval(shared, name, env_name, env, &artifacts, cancel).await?;
        // What was approved is what is deployed: the digests of the request.
        artifacts = record
            .artifacts
            .iter()
            .map(|a| DeployArtifact { path: a.path.clone(), sha256: a.sha256.clone(), size: a.size })
            .collect();
        approval = Some(record);
    }
    let deployment = Deployment {
        environment: env_name.to_owned(),
        pipeline: shared.pipeline.clone(),
        run: shared.run_id.clone(),
        step: name.to_owned(),
        requester: shared.requester.clone(),
        artifacts,
    };
    let count = deployment.artifacts.len() as u64;
    // Signed before anything is deployed: a policy that signs never
    // deploys without provenance.
    let subjects: Vec<(String, String)> =
        deployment.artifacts.iter().map(|a| (a.path.clone(), a.sha256.clone())).collect();
    let provenance = match crate::provenance::envelope(shared, &subjects).await.map_err(&failed)? {
        Some(bytes) => {
            let (digest, size, _) = shared.artifacts.put(bytes.as_slice()).map_err(|e| failed(e.to_string()))?;
            shared.store.index_artifact(&digest, size).map_err(|e| failed(e.to_string()))?;
            Some(digest)
        }
        None => None,
    };
    // The point of no return, on disk before the provider is called: an
    // engine that dies from here on does not know whether the deployment
    // happened, and a resumed run fails the step instead of repeating it.
    shared
        .store
        .update_step(&shared.run_id, name, Some("handing the artifacts to the provider".into()), |s| {
            s.effect_started_ms = Some(now_ms());
        })
        .and_then(|_| shared.store.flush())
        .map_err(|e| failed(format!("cannot record the deployment before it starts: {e}")))?;
    let (env_owned, store) = (env.clone(), shared.artifacts.clone());
    let work = tokio::task::spawn_blocking(move || {
        airlock_host::deploy::deploy(&deployment, &env_owned, &policy_dir, &store, now_ms())
    });
    // A deployment under way is not abandoned half-done: cancelling waits
    // for the provider, and the record says what happened.
    let done =
        work.await.map_err(|e| failed(format!("the deployment stopped: {e}")))?.map_err(|e| failed(e.to_string()))?;
    if cancel.is_cancelled() {
        tracing::warn!("step `{name}` finished its deployment after the run was cancelled");
    }
    Ok(DeployedRecord {
        environment: env_name.to_owned(),
        provider: Some(done.provider.to_owned()),
        target: Some(done.target),
        detail: done.detail,
        artifacts: count,
        approval: approval.map(|r| format!("{} by {}", r.state.as_str(), approvers_of(&r))),
        provenance,
    })
}

fn approvers_of(r: &ApprovalRecord) -> String {
    let names: Vec<&str> = r.decisions.iter().filter(|d| d.approve).map(|d| d.user.as_str()).collect();
    if names.is_empty() { "nobody".into() } else { names.join(", ") }
}

/// Records a request, shows it with its code, and waits for its end.
async fn wait_for_approval(
    shared: &Shared,
    name: &str,
    env_name: &str,
    env: &Environment,
    artifacts: &[DeployArtifact],
    cancel: &CancellationToken,
) -> Result<ApprovalRecord, StepError> {
    let failed = |reason: String| StepError::Failed(format!("step `{name}`: {reason}"));
    let Some(rules) = &env.approvals else {
        return Err(failed(format!("environment `{env_name}` names no approvers, so nobody could approve")));
    };
    // "The requester may not approve" means nothing if nobody knows who
    // the requester is.
    let known = shared.policy.as_ref().is_some_and(|p| p.0.users.contains_key(&shared.requester));
    if !rules.requester_may_approve && !known {
        return Err(failed(format!(
            "environment `{env_name}` does not let whoever asks for a deployment approve it, so the run must say who \
             started it: set AIRLOCK_USER_TOKEN to your user token (it was started by `{}`)",
            shared.requester
        )));
    }
    let policy = shared.policy.as_ref().map(|p| &p.0);
    let mut approvers: Vec<String> =
        rules.groups.iter().filter_map(|g| policy.and_then(|p| p.groups.get(g))).flatten().cloned().collect();
    approvers.sort();
    approvers.dedup();
    let policy_dir = shared.policy.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let chosen = airlock_host::deploy::provider(env, &policy_dir);
    let (provider, target) = (chosen.kind(), chosen.target());
    let code = new_code();
    let (code_salt, code_sha256) = hash_code(&code);
    let now = now_ms();
    let request = ApprovalRecord {
        run: shared.run_id.clone(),
        step: name.to_owned(),
        environment: env_name.to_owned(),
        provider: provider.to_owned(),
        target: target.clone(),
        artifacts: artifacts
            .iter()
            .map(|a| ApprovalArtifact { path: a.path.clone(), sha256: a.sha256.clone(), size: a.size })
            .collect(),
        requester: shared.requester.clone(),
        approvers: approvers.clone(),
        required: rules.required,
        requester_may_approve: rules.requester_may_approve,
        code_sha256,
        code_salt,
        created_ms: now,
        deadline_ms: now.saturating_add(rules.timeout.as_millis() as u64),
        state: ApprovalState::Pending,
        decisions: Vec::new(),
        decided_ms: None,
    };
    let stored =
        shared.store.request_approval(&request).map_err(|e| failed(format!("cannot record the request: {e}")))?;
    if stored.code_sha256 == request.code_sha256 {
        (shared.observer)(&crate::Progress::ApprovalRequested {
            run: shared.run_id.clone(),
            step: name.to_owned(),
            environment: env_name.to_owned(),
            provider: provider.to_owned(),
            target,
            artifacts: request.artifacts.clone(),
            requester: shared.requester.clone(),
            required: rules.required,
            approvers,
            deadline_ms: request.deadline_ms,
            code,
        });
    }
    loop {
        let current = shared
            .store
            .expire_approval(&shared.run_id, name)
            .map_err(|e| failed(format!("cannot read the request: {e}")))?
            .ok_or_else(|| failed("the approval request disappeared".into()))?;
        match current.state {
            ApprovalState::Approved => return Ok(current),
            ApprovalState::Denied => {
                let by = current.decisions.iter().find(|d| !d.approve);
                let who = by.map_or("someone".to_owned(), |d| format!("`{}`", d.user));
                let why = by.and_then(|d| d.reason.as_deref()).map(|r| format!(": {r}")).unwrap_or_default();
                return Err(failed(format!("{who} denied the deployment to `{env_name}`{why}")));
            }
            ApprovalState::TimedOut => {
                return Err(failed(format!(
                    "no decision on the deployment to `{env_name}` within {}, which denies it",
                    humantime::format_duration(rules.timeout)
                )));
            }
            ApprovalState::Cancelled => return Err(StepError::Cancelled),
            ApprovalState::Pending => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = cancel.cancelled() => {
                if let Err(e) = shared.store.cancel_approval(&shared.run_id, name) {
                    tracing::error!("cannot close the approval request of step `{name}`: {e}");
                }
                return Err(StepError::Cancelled);
            }
        }
    }
}
