//! `airlock verify RUN [STEP]`: runs a run's plugin steps again, from
//! the same pipeline, parameters and inputs, and says for each whether it
//! made the same bytes.
//!
//! The steps run again in a state directory of their own (under the
//! state directory's `verify/`, removed after), taking nothing from the
//! step cache, with the compiled plugins and fetched tools of this one.
//! Publish, deploy and approval steps never run again: they are effects,
//! not builds. A step whose cache key comes out different saw something
//! else this time (the pipeline file, a source or a plugin changed since
//! the run), so its outputs are not compared: it is reported, not judged.

use crate::exit;
use airlock_runner::{CancellationToken, Engine, FsLookup, Progress, RunOptions};
use airlock_store::{RunRecord, StepRecord, StepState};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `airlock verify`'s arguments.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The run: its id, a unique prefix of one, or `last`.
    run: String,
    /// Only this step (and the plugin steps it needs, which run again to
    /// give it its inputs).
    step: Option<String>,
    /// For a run submitted to a server from its pipelines directory: that
    /// directory, where the pipeline's plugins and sources are.
    #[arg(long, value_name = "DIR")]
    pipelines: Option<PathBuf>,
    /// Print the verdicts as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What running a step again showed.
#[derive(Debug, Serialize)]
struct Verdict {
    step: String,
    /// `same`, `different`, `inputs-changed`, `not-deterministic`,
    /// `not-checked` (it did not succeed in the run) or `failed` (it did
    /// not succeed this time).
    verdict: &'static str,
    detail: String,
    recorded: Vec<(String, String)>,
    again: Vec<(String, String)>,
}

fn digests(record: &StepRecord) -> Vec<(String, String)> {
    let mut d: Vec<(String, String)> = record.outputs.iter().map(|o| (o.path.clone(), o.sha256.clone())).collect();
    d.sort();
    d
}

/// Where the run's pipeline text is, and the directory its paths start
/// from.
fn pipeline_of(state_dir: &Path, run: &RunRecord, pipelines: Option<&Path>) -> anyhow::Result<(String, PathBuf)> {
    match &run.submission {
        Some(s) => match (&s.origin, pipelines) {
            (Some(origin), _) => Ok((s.source.clone(), state_dir.join("checkouts/trees").join(&origin.tree))),
            (None, Some(dir)) => {
                let file = dir.join(&s.pipeline);
                Ok((s.source.clone(), crate::diagnostics::base_dir(&file)))
            }
            (None, None) => anyhow::bail!(
                "run {} was submitted to a server from its pipelines directory; pass that directory with `--pipelines DIR`",
                run.id
            ),
        },
        None => {
            let file = Path::new(&run.file);
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read the run's pipeline file {}: {e}", file.display()))?;
            Ok((text, crate::diagnostics::base_dir(file)))
        }
    }
}

pub async fn verify(state_dir: &Path, policy: Option<&Path>, args: VerifyArgs) -> anyhow::Result<u8> {
    let policy = match crate::policy::optional(policy)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    // What the run recorded; the store is let go before the steps run
    // again, so a verify does not hold the state directory.
    let (run, records) = {
        let store = crate::output::open(state_dir)?;
        let run = store.find_run(&args.run)?;
        let records = store.steps(&run)?;
        (run, records)
    };
    let (text, base) = pipeline_of(state_dir, &run, args.pipelines.as_deref())?;
    let mut lookup = FsLookup::new(&base);
    if let Some(p) = &policy {
        lookup = lookup.with_policy(p.policy.clone());
    }
    let mut pipeline = match airlock_model::load(&run.file, &text, &lookup) {
        Ok(p) => p,
        Err(diags) => {
            eprint!("{}", crate::diagnostics::render(Path::new(&run.file), &text, &diags));
            eprintln!("error: the run's pipeline is not valid any more; nothing was run again");
            return Ok(exit::FAILED);
        }
    };
    if let Some(step) = &args.step
        && pipeline.steps.get(step).is_none_or(|s| s.plugin().is_none())
    {
        eprintln!("error: run {} has no plugin step `{step}`", run.id);
        eprintln!("hint: publish, deploy and approval steps are effects and are never run again");
        return Ok(exit::USAGE);
    }
    // The plugin steps to run again: all, or the one asked for and those
    // it needs; edges to anything else go.
    let mut wanted: Vec<String> = match &args.step {
        Some(step) => vec![step.clone()],
        None => pipeline.steps.iter().filter(|(_, s)| s.plugin().is_some()).map(|(n, _)| n.clone()).collect(),
    };
    let mut i = 0;
    while i < wanted.len() {
        let needs = pipeline.steps[&wanted[i]].needs.clone();
        for need in needs {
            if pipeline.steps.get(&need).is_some_and(|s| s.plugin().is_some()) && !wanted.contains(&need) {
                wanted.push(need);
            }
        }
        i += 1;
    }
    pipeline.steps.retain(|name, _| wanted.contains(name));
    let kept: Vec<String> = pipeline.steps.keys().cloned().collect();
    for step in pipeline.steps.values_mut() {
        step.needs.retain(|n| kept.contains(n));
    }

    let scratch = tempfile::Builder::new().prefix("verify-").tempdir_in({
        let dir = state_dir.join("verify");
        std::fs::create_dir_all(&dir)?;
        dir
    })?;
    let mut engine = Engine::open(scratch.path())?.with_compile_cache(&state_dir.join("cache"))?;
    engine = engine.with_tool_cache(&crate::tool_cache_dir(state_dir))?;
    if let Some(p) = policy {
        engine = engine.with_policy(p.policy, p.dir);
    }
    let options = RunOptions {
        params: run.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        no_cache: true,
        requester: format!("verify:{}", run.id),
        ..RunOptions::default()
    };
    let json = args.json;
    let observer = move |p: &Progress| {
        if let (Progress::StepFinished { step, .. }, false) = (p, json) {
            eprintln!("ran {step} again");
        }
    };
    let again = engine.run(&pipeline, &base, &run.file, options, observer, CancellationToken::new()).await?;
    drop(engine);

    let mut verdicts = Vec::new();
    for name in pipeline.steps.keys() {
        if args.step.as_ref().is_some_and(|s| s != name) {
            continue;
        }
        let Some(recorded) = records.iter().find(|r| &r.name == name) else { continue };
        let Some(now) = again.steps.iter().find(|r| &r.name == name) else { continue };
        let (verdict, detail) = if recorded.state != StepState::Succeeded {
            ("not-checked", format!("it {} in the run", recorded.state.as_str()))
        } else if recorded.cache_key.is_none() {
            ("not-deterministic", "it has the real clocks (`deterministic: false`)".to_owned())
        } else if now.state != StepState::Succeeded {
            ("failed", format!("it {} this time: {}", now.state.as_str(), now.reason.clone().unwrap_or_default()))
        } else if now.cache_key != recorded.cache_key {
            ("inputs-changed", "it saw something else this time (its pipeline, a source or a plugin changed)".into())
        } else if digests(now) == digests(recorded) {
            ("same", format!("{} outputs, the same bytes", recorded.outputs.len()))
        } else {
            ("different", "the same inputs made other bytes: a nondeterministic tool, or a bug in airlock".into())
        };
        verdicts.push(Verdict {
            step: name.clone(),
            verdict,
            detail,
            recorded: digests(recorded),
            again: digests(now),
        });
    }
    let bad = verdicts.iter().any(|v| matches!(v.verdict, "different" | "inputs-changed" | "failed"));
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "run": run.id, "steps": verdicts }))?);
    } else {
        let width = verdicts.iter().map(|v| v.step.len()).max().unwrap_or(4).max(4);
        println!("{:<width$}  {:<17} DETAIL", "STEP", "VERDICT");
        for v in &verdicts {
            let shown = if v.verdict == "different" { "DIFFERENT" } else { v.verdict };
            println!("{:<width$}  {shown:<17} {}", v.step, v.detail);
            if v.verdict == "different" {
                for (path, sha) in &v.recorded {
                    let now = v.again.iter().find(|(p, _)| p == path).map_or("(none)", |(_, s)| s.as_str());
                    if now != sha {
                        println!("{:<width$}    {path}: recorded {sha}, now {now}", "");
                    }
                }
            }
        }
        if verdicts.iter().any(|v| v.verdict == "different") {
            eprintln!("error: steps of run {} made other bytes from the same inputs; see above", run.id);
        }
    }
    Ok(if bad { exit::FAILED } else { exit::OK })
}
