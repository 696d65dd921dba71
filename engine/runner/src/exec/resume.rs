//! Picking a recorded run up where its engine stopped.

use super::Shared;
use super::outputs::{lay_out, outputs_dir};
use crate::RunnerError;
use airlock_model::{Step, StepKind};
use airlock_store::{StepState, now_ms};

/// Where a step of a run being (re)started is, after dealing with an
/// attempt its engine did not see to the end. A succeeded step keeps its
/// outputs, laid out again for the steps downstream.
pub(crate) async fn resume_step(shared: &Shared, name: &str, step: &Step) -> Result<StepState, RunnerError> {
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
            // A job an agent may still hold goes: the attempt starts again,
            // and an agent completing the old one is refused.
            for job in shared.store.jobs()?.into_iter().filter(|j| j.run == shared.run_id && j.step == name) {
                shared.store.remove_job(&job.id)?;
            }
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
pub(crate) fn idempotent(shared: &Shared, step: &Step) -> bool {
    let (StepKind::Deploy { deploy: spec }, Some(policy)) = (&step.kind, &shared.policy) else { return false };
    policy.0.environments.get(&spec.environment).is_some_and(|e| e.provider.idempotent())
}
