//! Showing what the store holds: `runs`, `show`, `logs`; and errors.

use crate::exit;
use airlock_store::{RunRecord, StepRecord, Store};
use std::io::IsTerminal;
use std::path::Path;

/// Whether to colour stderr: a terminal, and `NO_COLOR` unset.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Prints an error and its cause chain, then a hint where one applies.
pub fn error(e: &anyhow::Error) {
    let (red, reset) = if color() { ("\x1b[31m", "\x1b[0m") } else { ("", "") };
    eprintln!("{red}error{reset}: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    let text = format!("{e:#}");
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        eprintln!("hint: another airlock process is using this state directory; wait for it or pass `--state-dir`");
    }
}

pub(crate) fn open(state_dir: &Path) -> anyhow::Result<Store> {
    if crate::DATABASE.get().is_none_or(Option::is_none) && !state_dir.join("db").exists() {
        anyhow::bail!("no airlock state in `{}`: run a pipeline first, or pass `--state-dir`", state_dir.display());
    }
    crate::open_store(state_dir)
}

/// `12:03:04 UTC` style times for people.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}

/// A duration for people: `1.23s`, `450ms`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { format!("{:.2}s", ms as f64 / 1000.0) }
}

fn run_duration(run: &RunRecord) -> String {
    run.ended_ms.map(|e| duration_ms(e.saturating_sub(run.created_ms))).unwrap_or_else(|| "-".into())
}

fn step_duration(s: &StepRecord) -> String {
    match (s.started_ms, s.ended_ms) {
        (Some(a), Some(b)) => duration_ms(b.saturating_sub(a)),
        _ => "-".into(),
    }
}

/// `airlock runs`
pub fn runs(state_dir: &Path, json: bool, limit: usize) -> anyhow::Result<u8> {
    let store = open(state_dir)?;
    let runs: Vec<RunRecord> = store.runs()?.into_iter().take(limit).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(exit::OK);
    }
    if runs.is_empty() {
        eprintln!("no runs yet");
        return Ok(exit::OK);
    }
    println!("{:<22} {:<16} {:<10} {:>9}  CREATED", "RUN", "PIPELINE", "STATE", "DURATION");
    for r in runs {
        println!(
            "{:<22} {:<16} {:<10} {:>9}  {}",
            r.id,
            r.pipeline,
            r.state.as_str(),
            run_duration(&r),
            time(r.created_ms)
        );
    }
    Ok(exit::OK)
}

/// `airlock show RUN`
pub fn show(state_dir: &Path, run: &str, json: bool) -> anyhow::Result<u8> {
    let store = open(state_dir)?;
    let run = store.find_run(run)?;
    let steps = store.steps(&run)?;
    if json {
        let events = store.events(&run.id)?;
        let approvals = store.approvals(&run.id)?;
        let forge_status = store.forge_status(&run.id)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run": run, "steps": steps, "events": events, "approvals": approvals, "forge_status": forge_status
            }))?
        );
        return Ok(exit::OK);
    }
    println!("run       {}", run.id);
    println!("pipeline  {} ({})", run.pipeline, run.file);
    println!("state     {}", run.state.as_str());
    if let Some(reason) = &run.reason {
        println!("reason    {reason}");
    }
    if let Some(o) = run.submission.as_ref().and_then(|s| s.origin.as_ref()) {
        let what = match o.pull_request {
            Some(n) => format!("pull request #{n} (branch {})", o.git_ref),
            None => format!("push of {}", o.git_ref),
        };
        println!("origin    {}: {what} by {}", o.repository, o.sender);
        println!("commit    {}", o.commit);
        if let Some(why) = &o.untrusted {
            println!("trust     untrusted: {why}");
        }
        if let Some(f) = store.forge_status(&run.id)? {
            let said = match (&f.error, f.delivered) {
                (_, true) => "reported".to_owned(),
                (Some(e), false) => format!("not reported after {} attempts: {e}", f.attempts),
                (None, false) => "being reported".to_owned(),
            };
            println!("status    {} {said}", f.state);
        }
    }
    println!("created   {}", time(run.created_ms));
    println!("duration  {}", run_duration(&run));
    if !run.params.is_empty() {
        let params: Vec<String> = run.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("params    {}", params.join(" "));
    }
    println!();
    let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<10} {:>9} {:>8}  REASON", "STEP", "STATE", "DURATION", "ATTEMPTS");
    for s in &steps {
        println!(
            "{:<width$}  {:<10} {:>9} {:>8}  {}",
            s.name,
            if s.cached.is_some() { "cached" } else { s.state.as_str() },
            step_duration(s),
            s.attempts,
            match (&s.cached, &s.cache_check) {
                (Some(c), _) => format!("outputs of run {} step `{}`", c.run, c.step),
                (None, Some(c)) if c.same => format!("cache check: the same bytes as run {}", c.run),
                (None, Some(c)) =>
                    format!("CACHE CHECK FAILED: other bytes than run {} step `{}` from the same inputs", c.run, c.step),
                (None, None) => s.reason.clone().unwrap_or_default(),
            }
        );
    }
    for s in &steps {
        if let Some(p) = &s.published {
            println!();
            println!(
                "{} {} files ({}) to {}/{} ({} uploaded) with token {}, revoked when the step ended",
                s.name,
                p.files,
                airlock_model::format_size(p.bytes),
                p.target,
                p.build,
                p.uploaded,
                p.token
            );
        }
    }
    for s in &steps {
        if let Some(d) = &s.deployed {
            println!();
            let to = d
                .target
                .as_deref()
                .map(|t| format!(" ({} {t})", d.provider.as_deref().unwrap_or("")))
                .unwrap_or_default();
            println!("{} `{}`{to}: {}", s.name, d.environment, d.detail);
        }
    }
    // The audit of every approval request: what was asked, who decided.
    for a in store.approvals(&run.id)? {
        println!();
        println!(
            "approval  {} -> `{}` ({} {}), asked by {} at {}: {}",
            a.step,
            a.environment,
            a.provider,
            a.target,
            a.requester,
            time(a.created_ms),
            a.state.as_str()
        );
        for art in &a.artifacts {
            println!("          sha256:{}  {}", art.sha256, art.path);
        }
        for d in &a.decisions {
            println!(
                "          {} by {} at {}{}",
                if d.approve { "approved" } else { "denied" },
                d.user,
                time(d.at_ms),
                d.reason.as_deref().map(|r| format!(": {}", airlock_model::text::one_line(r, 500))).unwrap_or_default()
            );
        }
    }
    let outputs: Vec<_> = steps.iter().flat_map(|s| s.outputs.iter().map(move |o| (&s.name, o))).collect();
    if !outputs.is_empty() {
        println!();
        println!("{:<width$}  {:<64}  {:>10}  PATH", "STEP", "SHA256", "SIZE");
        for (step, o) in outputs {
            println!("{step:<width$}  {}  {:>10}  {}", o.sha256, airlock_model::format_size(o.size), o.path);
        }
    }
    Ok(exit::OK)
}

/// `airlock logs RUN [STEP]`
pub fn logs(state_dir: &Path, run: &str, step: Option<&str>) -> anyhow::Result<u8> {
    let store = open(state_dir)?;
    let run = store.find_run(run)?;
    if let Some(step) = step
        && !run.steps.iter().any(|s| s == step)
    {
        anyhow::bail!("run `{}` has no step `{step}`; its steps are: {}", run.id, run.steps.join(", "));
    }
    let names: Vec<&String> = run.steps.iter().filter(|s| step.is_none_or(|only| only == s.as_str())).collect();
    for name in names {
        let logs = store.logs(&run.id, name)?;
        let headers = step.is_none() || logs.len() > 1;
        for log in logs {
            if headers {
                println!("── {name} (attempt {}) ──", log.attempt);
            }
            let text = airlock_model::text::neutralize(&log.bytes);
            print!("{text}");
            if !text.ends_with('\n') && !text.is_empty() {
                println!();
            }
        }
    }
    Ok(exit::OK)
}
