//! One step, from its first attempt to its end state.

use super::grants::effective_limits;
use super::outputs::{outputs_dir, take_outputs};
use super::plugins::{check_kind, load_plugin};
use super::workspace::{clear_scratch, discard_workspace, fresh_workspace, recycle_workspace, scratch_of};
use super::{Progress, Shared};
use airlock_model::text::one_line;
use airlock_model::{ExprContext, PluginStep, Step, StepKind, render};
use airlock_sandbox::{DeployRequest, Failure, Invocation, OverQuota, Quota};
use airlock_store::{LogRecord, OutputRecord, StepRecord, StepState, now_ms};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest reason recorded for a step. Reasons quote what guests wrote
/// (their error messages, their file names), so they are also kept to one
/// line with every control character escaped.
pub(crate) const MAX_REASON_BYTES: usize = 4096;

/// What a step task reports back to the scheduler.
pub(crate) struct Finished {
    pub(crate) index: usize,
    pub(crate) record: StepRecord,
    pub(crate) log_truncated: bool,
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

/// Why a publish or deploy of an untrusted run is refused.
fn untrusted(name: &str, why: &str) -> String {
    format!(
        "step `{name}` refused: this run is untrusted ({why}), and an untrusted run may not publish or deploy; \
         give such steps a pipeline whose `on:` names only refs the policy trusts"
    )
}

/// Runs every attempt of one step and records its end state.
pub(crate) async fn run_step(
    shared: Arc<Shared>,
    index: usize,
    name: String,
    step: Step,
    cancel: CancellationToken,
) -> Finished {
    let mut log_truncated = false;
    let (mut published, mut deployed) = (None, None);
    // The scheduler started the step because a job is free; a step that
    // finished preparing may take it first, and then this one waits.
    shared.take_job(&name, &cancel).await;
    let result = match &step.kind {
        StepKind::Publish { .. } | StepKind::Deploy { .. } if let Some(why) = &shared.untrusted => {
            Err(StepError::Failed(untrusted(&name, why)))
        }
        StepKind::Publish { publish } => crate::publish::run(&shared, &name, &step, publish, &cancel).await.map(|p| {
            published = Some(p);
            Vec::new()
        }),
        StepKind::Deploy { deploy } => crate::environments::deploy(&shared, &name, deploy, &cancel).await.map(|d| {
            deployed = Some(d);
            Vec::new()
        }),
        StepKind::Approval { approval } => {
            crate::environments::approval(&shared, &name, approval, &cancel).await.map(|d| {
                deployed = Some(d);
                Vec::new()
            })
        }
        StepKind::Plugin(plugin) => {
            match attempts(&shared, &name, plugin, step.timeout, &cancel, &mut log_truncated).await {
                // The step asked for a deployment: the host does it now, with
                // the outputs just taken out, if the policy allows.
                Ok((outputs, requests)) => match requests.into_iter().next() {
                    None => Ok(outputs),
                    Some(_) if let Some(why) = &shared.untrusted => Err(StepError::Failed(untrusted(&name, why))),
                    Some(request) => {
                        crate::environments::requested(&shared, &name, &request, &outputs, &cancel).await.map(|d| {
                            deployed = Some(d);
                            outputs
                        })
                    }
                },
                Err(e) => Err(e),
            }
        }
    };
    shared.release_job(&name);
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
            cache_key: None,
            cached: None,
            cache_check: None,
        }
    });
    Finished { index, record, log_truncated }
}

/// Where a plugin step's attempts run: here, with the plugin loaded, or
/// on an agent, which fetches the plugin by its digest.
enum Place {
    Here(airlock_sandbox::Plugin),
    Agent(OutputRecord),
}

pub(crate) enum StepError {
    /// The step failed, with the reason.
    Failed(String),
    /// The run was cancelled while the step ran.
    Cancelled,
}

pub(crate) async fn attempts(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    timeout: Duration,
    cancel: &CancellationToken,
    log_truncated: &mut bool,
) -> Result<(Vec<OutputRecord>, Vec<DeployRequest>), StepError> {
    let store = &shared.store;
    let failed = |reason: String| StepError::Failed(reason);
    let record_error = |e: airlock_store::StoreError| StepError::Failed(format!("cannot record the step: {e}"));
    // A tool is allowed by the digest the pipeline pins, before anything
    // is fetched; a plugin file by where it is, before the cache is asked
    // too: a plugin the environment no longer allows is refused, whatever
    // it made before.
    let started = now_ms();
    let refused = |e: String| failed(format!("step `{name}`: {e}"));
    if let (Some(grants), Some(tool)) = (&shared.grants, step.tool()) {
        grants.check_tool(tool, &shared.tools[tool].sha256).map_err(|e| refused(e.to_string()))?;
    }
    if let Some(grants) = &shared.grants
        && step.tool().is_none()
    {
        grants.check_plugin(&shared.base_dir.join(&step.uses), &step.uses).map_err(|e| refused(e.to_string()))?;
    }
    let mut invocation = invocation(shared, name, step, timeout).map_err(failed)?;
    // A deterministic step's key names what it will make: if the cache
    // has that, nothing is fetched, compiled or run. A hit the policy's
    // sample picks is run anyway, and what it makes compared with what
    // the cache held.
    let keyed = super::cache::key(shared, name, step, &invocation).await.map_err(refused)?;
    let mut check = None;
    let mut hit = None;
    if let Some(keyed) = &keyed {
        hit = super::cache::take(shared, name, keyed).await;
        if hit.is_some() && super::cache::sampled(shared, name) {
            check = hit.take();
        }
        invocation.seed = Some(keyed.seed());
        invocation.run_id = keyed.run_id();
    }
    // Preparing (fetching a tool, compiling it) is part of the step's
    // first attempt, and of the time it reports.
    let detail = match &hit {
        Some((_, c)) => format!("cached: from run {} step `{}`", c.run, c.step),
        None => "attempt 1".into(),
    };
    // A step on an agent whose plugin is a file here has nothing to
    // prepare (the agent fetches and compiles it): its start is recorded
    // with its first attempt, one write rather than two.
    let prepares = hit.is_some() || step.runs_on.is_empty() || step.tool().is_some();
    if prepares {
        store
            .update_step(&shared.run_id, name, Some(detail), |s| {
                // No attempt yet: a plugin refused now never started.
                s.state = StepState::Running;
                s.started_ms.get_or_insert(started);
                s.cache_key = keyed.as_ref().map(|k| k.key.clone());
                s.cached = hit.as_ref().map(|(_, c)| c.clone());
            })
            .map_err(record_error)?;
    }
    if let Some((outputs, _)) = hit {
        return Ok((outputs, Vec::new()));
    }
    let place = if !step.runs_on.is_empty() {
        // A step on an agent: its plugin (or its tool's module, fetched
        // here, by the trusted host) and the trees mounted for it go
        // there by digest; it is compiled there, not here.
        let resolved = tokio::select! {
            resolved = super::tools::resolve(shared, name, step) => resolved.map_err(failed)?,
            () = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let plugin = super::remote::store_plugin(shared, name, step, &resolved.plugin).await.map_err(failed)?;
        invocation.mounts = resolved.mounts;
        invocation.argv0 = resolved.argv0;
        invocation.entry = resolved.entry;
        Place::Agent(plugin)
    } else {
        // Fetching and compiling can take minutes; a cancelled run does
        // not wait for them (they finish in the background, for the caches).
        let prepared = async {
            let resolved = super::tools::resolve(shared, name, step).await.map_err(failed)?;
            let plugin = load_plugin(shared, name, step, &resolved).await.map_err(failed)?;
            Ok::<_, StepError>((resolved, plugin))
        };
        let (resolved, plugin) = tokio::select! {
            prepared = prepared => prepared?,
            () = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        check_kind(name, step, &plugin, resolved.entry.as_deref()).map_err(failed)?;
        // Ready: a step that gave its job up to prepare takes one back.
        if !shared.prepared(name, cancel).await {
            return Err(StepError::Cancelled);
        }
        invocation.mounts = resolved.mounts;
        invocation.argv0 = resolved.argv0;
        invocation.entry = resolved.entry;
        Place::Here(plugin)
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let digest = match &place {
            Place::Here(plugin) => plugin.digest.clone(),
            Place::Agent(plugin) => plugin.sha256.clone(),
        };
        // The first attempt was recorded as it began preparing, if it did.
        let detail = (attempt > 1 || !prepares).then(|| format!("attempt {attempt}"));
        store
            .update_step(&shared.run_id, name, detail, |s| {
                s.state = StepState::Running;
                s.attempts = attempt;
                s.started_ms.get_or_insert(started);
                s.plugin_sha256 = Some(digest.clone());
                if attempt == 1 {
                    s.cache_key = keyed.as_ref().map(|k| k.key.clone());
                }
            })
            .map_err(record_error)?;
        (shared.observer)(&Progress::StepStarted { step: name.to_owned(), attempt });

        let (result, requests) = match &place {
            Place::Agent(plugin) => {
                let ran = super::remote::run_on_agent(shared, name, step, plugin, &invocation, attempt, cancel).await?;
                *log_truncated |= store_log(shared, name, attempt, ran.log, ran.log_written).map_err(record_error)?;
                (ran.result, ran.requests)
            }
            Place::Here(plugin) => {
                let workspace = fresh_workspace(shared, name, attempt).map_err(failed)?;
                let live = airlock_sandbox::LogSink::new(usize::try_from(invocation.log_limit).unwrap_or(usize::MAX));
                let live_key = (shared.run_id.clone(), name.to_owned());
                shared.live.insert(live_key.clone(), attempt, live.clone());
                let inv = Invocation {
                    workspace: workspace.clone(),
                    tmp: Some(scratch_of(&workspace)),
                    live_log: Some(live),
                    ..invocation.clone()
                };

                let outcome = tokio::select! {
                    outcome = shared.sandbox.run(plugin, inv) => outcome,
                    () = cancel.cancelled() => return Err(StepError::Cancelled),
                };
                let requests = outcome.deploy_requests;
                // A program that exits non-zero says why in its last lines.
                let said = matches!(outcome.result, Err(Failure::Exit(_))).then(|| last_lines(&outcome.log)).flatten();
                *log_truncated |=
                    store_log(shared, name, attempt, outcome.log, outcome.log_written).map_err(record_error)?;
                // From here on, readers find the attempt's log in the store.
                shared.live.remove(&live_key);
                let result = match outcome.result {
                    Ok(()) => match clear_scratch(&workspace).await {
                        Ok(()) => take_outputs(shared, name, step, &workspace).await,
                        Err(e) => Err(e),
                    },
                    Err(failure) => Err(match said {
                        Some(lines) => format!("{}: {lines}", describe(name, timeout, &failure)),
                        None => describe(name, timeout, &failure),
                    }),
                };
                if result.is_ok() {
                    recycle_workspace(shared, workspace);
                } else if attempt <= step.retries.count {
                    discard_workspace(shared, workspace).await;
                }
                (result, requests)
            }
        };
        match result {
            Ok(outputs) => {
                let same = match (&keyed, &check) {
                    (Some(keyed), Some((cached, from))) => {
                        Some(super::cache::compare(shared, name, keyed, cached, from, &outputs)?)
                    }
                    _ => None,
                };
                // A step that asked for a deployment had an effect: a
                // later run must ask again, not take its outputs. One
                // that made other bytes than the cache held is not
                // recorded either.
                if let Some(keyed) = &keyed
                    && requests.is_empty()
                    && same != Some(false)
                {
                    super::cache::record(shared, name, keyed, &outputs);
                }
                return Ok((outputs, requests));
            }
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

/// Stores an attempt's log, with a note when it was cut short; answers
/// whether it was.
fn store_log(
    shared: &Shared,
    name: &str,
    attempt: u32,
    mut bytes: Vec<u8>,
    written: u64,
) -> airlock_store::Result<bool> {
    let truncated = written > bytes.len() as u64;
    if written > 0 {
        if truncated {
            bytes.extend_from_slice(
                format!(
                    "\n[airlock: log truncated: kept {} of {} written]\n",
                    airlock_model::format_size(bytes.len() as u64),
                    airlock_model::format_size(written)
                )
                .as_bytes(),
            );
        }
        shared.store.put_log(&shared.run_id, name, &LogRecord { attempt, bytes, written })?;
    }
    Ok(truncated)
}

/// Lines of a log's end shown in a failed step's reason, at most.
const REASON_LINES: usize = 3;
/// Bytes of them, at most.
const REASON_LINE_BYTES: usize = 600;

/// The last few non-empty lines of a log, joined with ` / `, or `None`
/// for a log with nothing in it.
pub(crate) fn last_lines(log: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&log[log.len().saturating_sub(16 << 10)..]);
    let mut lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(REASON_LINES).collect();
    lines.reverse();
    if lines.is_empty() {
        return None;
    }
    let joined = lines.join(" / ");
    // Cut from the front: the last words matter most.
    let start = joined.len().saturating_sub(REASON_LINE_BYTES);
    let start = (start..joined.len()).find(|i| joined.is_char_boundary(*i)).unwrap_or(joined.len());
    Some(if start > 0 { format!("…{}", &joined[start..]) } else { joined })
}

/// The failure of a step, in words.
pub(crate) fn describe(name: &str, timeout: Duration, failure: &Failure) -> String {
    match failure {
        Failure::Error(msg) => format!("step `{name}` failed: {msg}"),
        Failure::Exit(code) => format!("step `{name}` exited with status {code}"),
        Failure::MemoryLimit { limit } => {
            format!("step `{name}` exceeded its {} memory limit", airlock_model::format_size(*limit))
        }
        Failure::Timeout(_) => {
            format!("step `{name}` ran past its {} timeout", humantime::format_duration(timeout))
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

/// Everything but the workspace: inputs, rendered values, limits.
pub(crate) fn invocation(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    timeout: Duration,
) -> Result<Invocation, String> {
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
    inv.inputs_root = Some(shared.inputs_root.clone());
    inv.params = step.with.iter().map(|(k, v)| Ok((k.clone(), expand(v)?))).collect::<Result<_, String>>()?;
    inv.args = step.args.iter().flatten().map(expand).collect::<Result<_, _>>()?;
    inv.env = step.env.iter().map(|(k, v)| Ok((k.clone(), expand(v)?))).collect::<Result<_, String>>()?;
    inv.run_id = shared.run_id.clone();
    inv.step = name.to_owned();
    let limits = effective_limits(shared, step);
    inv.memory = limits.memory;
    inv.log_limit = limits.log;
    inv.fuel = limits.fuel;
    inv.timeout = timeout;
    inv.quota = Quota { bytes: limits.disk, entries: limits.files };
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn the_last_lines_of_a_log_say_why_a_program_failed() {
        assert_eq!(last_lines(b""), None);
        assert_eq!(last_lines(b"\n  \n"), None);
        let log =
            b"collected 3 items\n\ntest_a ok\nFAIL: test_b (tests.T)\nAssertionError: 2 != 3\n\nFAILED (failures=1)\n";
        assert_eq!(
            last_lines(log).as_deref(),
            Some("FAIL: test_b (tests.T) / AssertionError: 2 != 3 / FAILED (failures=1)")
        );
        let long = format!("{}\n", "é".repeat(1000));
        let shown = last_lines(long.as_bytes()).expect("lines");
        assert!(shown.starts_with('…') && shown.len() <= 600 + '…'.len_utf8(), "{}", shown.len());
    }
}
