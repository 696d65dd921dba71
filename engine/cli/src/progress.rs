//! `airlock run`: runs a pipeline and shows its progress.
//!
//! On a terminal, a live view: one spinner per running step under a bar
//! counting finished steps, and a line per finished step above them.
//! Otherwise one plain line per event on stderr; with `--json`, one JSON
//! object per event on stdout.

use crate::{RunArgs, diagnostics, exit, output};
use airlock_runner::{CancellationToken, Progress, RunOptions, RunnerError};
use airlock_store::{RunState, StepState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub async fn run(state_dir: &Path, policy: Option<&Path>, args: RunArgs) -> anyhow::Result<u8> {
    let policy = match crate::policy::optional(policy)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(pipeline) = diagnostics::load(&args.file, policy.as_ref().map(|p| &p.policy))? else {
        return Ok(exit::FAILED);
    };
    // Who starts the run: the user whose API token is in AIRLOCK_USER_TOKEN,
    // or the local account.
    let requester = match (std::env::var("AIRLOCK_USER_TOKEN").ok().filter(|t| !t.is_empty()), &policy) {
        (Some(token), Some(p)) => match crate::policy::user_of(&p.policy, &token) {
            Some(user) => user,
            None => {
                eprintln!("error: AIRLOCK_USER_TOKEN is no user's token in the policy");
                eprintln!("hint: unset it to run as the local account, or ask the admin for your token");
                return Ok(exit::USAGE);
            }
        },
        _ => format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
    };
    let untrusted = policy.as_ref().and_then(|p| p.policy.untrusted_user(&requester));
    let mut engine = crate::open_engine(state_dir)?;
    let mut users = Vec::new();
    let mut targets = Vec::new();
    if let Some(policy) = policy {
        users = crate::policy::users(&policy.policy);
        targets = policy.targets.clone();
        engine = engine.with_targets(policy.targets).with_policy(policy.policy, policy.dir);
    }
    // While the run holds the state directory, `airlock approve` and the
    // token commands reach it through the admin socket.
    let socket = airlock_server::admin::socket_path(state_dir);
    let admin_stop = CancellationToken::new();
    let admin = match crate::serve::admin_listener(&socket) {
        Ok(listener) => {
            let app = std::sync::Arc::new(airlock_server::App::new(engine.store().clone(), targets).with_users(users));
            Some(tokio::spawn(airlock_server::serve_admin(listener, app, admin_stop.clone())))
        }
        Err(e) => {
            tracing::warn!("no admin socket for this run ({e}); `airlock approve` cannot reach it");
            None
        }
    };
    let mut options = RunOptions {
        params: args.params.clone(),
        keep_workspaces: args.keep_workspaces,
        requester,
        untrusted,
        no_cache: args.no_cache,
        ..RunOptions::default()
    };
    if let Some(jobs) = args.jobs {
        options.jobs = usize::from(jobs);
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: stopping running steps (Ctrl-C again to force)");
            on_signal.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(exit::CANCELLED));
            }
        }
    });

    let json = args.json;
    let live = !json && std::io::stderr().is_terminal();
    let view = Mutex::new(View::new(live, pipeline.steps.len()));
    let observer = move |event: &Progress| {
        if json {
            if let Ok(line) = serde_json::to_string(event) {
                println!("{line}");
            }
            return;
        }
        if let Ok(mut v) = view.lock() {
            v.show(event);
        }
    };
    let file = args.file.display().to_string();
    let base = diagnostics::base_dir(&args.file);
    let result = engine.run(&pipeline, &base, &file, options, observer, cancel).await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
        let _ = std::fs::remove_file(&socket);
    }
    let summary = match result {
        Ok(s) => s,
        Err(RunnerError::Params(errors)) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Ok(exit::USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    if !json {
        let outputs: usize = summary.steps.iter().map(|s| s.outputs.len()).sum();
        eprintln!(
            "run {} {} in {} ({} artifact{}); see `airlock show {}`",
            summary.run.id,
            summary.run.state.as_str(),
            output::duration_ms(summary.run.ended_ms.unwrap_or(0).saturating_sub(summary.run.created_ms)),
            outputs,
            if outputs == 1 { "" } else { "s" },
            summary.run.id
        );
    }
    Ok(match summary.run.state {
        RunState::Succeeded => exit::OK,
        RunState::Cancelled => exit::CANCELLED,
        RunState::Failed | RunState::Running | RunState::Queued => exit::FAILED,
    })
}

/// The human view of a run's progress.
struct View {
    live: Option<(MultiProgress, ProgressBar)>,
    spinners: HashMap<String, ProgressBar>,
    /// Without a live display: what each step was last said to be
    /// preparing, so each piece of work is told once.
    preparing: HashMap<String, String>,
    color: bool,
}

impl View {
    fn new(live: bool, steps: usize) -> Self {
        let live = live.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(steps as u64));
            total.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} steps done")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            total.enable_steady_tick(Duration::from_millis(200));
            (multi, total)
        });
        Self { live, spinners: HashMap::new(), preparing: HashMap::new(), color: output::color() }
    }

    fn line(&self, text: String) {
        match &self.live {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Whether `step` is preparing `what` for the first time since it
    /// last prepared something else; remembers it.
    fn first_time(&mut self, step: &str, what: &str) -> bool {
        if self.preparing.get(step).is_some_and(|w| w == what) {
            return false;
        }
        self.preparing.insert(step.to_owned(), what.to_owned());
        true
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    /// The step's spinner in a live display, made when first asked for.
    fn spinner(&mut self, step: &str) -> Option<&ProgressBar> {
        let (multi, total) = self.live.as_ref()?;
        if !self.spinners.contains_key(step) {
            let spinner = multi.insert_before(total, ProgressBar::new_spinner());
            spinner.set_style(
                ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner.set_message(step.to_owned());
            spinner.enable_steady_tick(Duration::from_millis(100));
            self.spinners.insert(step.to_owned(), spinner);
        }
        self.spinners.get(step)
    }

    fn show(&mut self, event: &Progress) {
        match event {
            Progress::RunStarted { run, steps } => {
                self.line(format!("run {run}: {} step{}", steps.len(), if steps.len() == 1 { "" } else { "s" }));
            }
            Progress::StepStarted { step, attempt } => {
                let suffix = if *attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
                match self.spinner(step) {
                    Some(spinner) => spinner.set_message(format!("{step}{suffix}")),
                    None => self.line(format!("started   {step} (attempt {attempt})")),
                }
            }
            Progress::StepPreparing { step, what, done, total } => {
                let size = |n: &u64| airlock_model::format_size(*n);
                let amount = match (done, total) {
                    (Some(d), Some(t)) => format!(": {} of {}", size(d), size(t)),
                    (Some(d), None) => format!(": {}", size(d)),
                    _ => String::new(),
                };
                match self.spinner(step) {
                    Some(spinner) => spinner.set_message(format!("{step}: {what}{amount}")),
                    // Without a live display, each piece of work once, as
                    // it starts (a download reports its start twice: before
                    // connecting and once its size is known).
                    None => {
                        if self.first_time(step, what) {
                            self.line(format!("preparing {step}: {what}"));
                        }
                    }
                }
            }
            Progress::StepRetrying { step, attempt, reason, backoff_ms } => {
                if let Some(s) = self.spinners.remove(step) {
                    s.finish_and_clear();
                }
                let mark = self.paint("33", "retry");
                self.line(format!(
                    "{mark}     {step} attempt {attempt} failed: {reason}; retrying in {}",
                    output::duration_ms(*backoff_ms)
                ));
            }
            Progress::StepFinished {
                step,
                state,
                duration_ms,
                reason,
                outputs,
                log_truncated,
                published,
                deployed,
                cached,
                cache_check,
            } => {
                if let Some(s) = self.spinners.remove(step) {
                    s.finish_and_clear();
                }
                if let Some((_, total)) = &self.live {
                    total.inc(1);
                }
                let (code, word) = match state {
                    StepState::Succeeded if cached.is_some() => ("36", "cached"),
                    StepState::Succeeded => ("32", "done"),
                    StepState::Failed => ("31", "failed"),
                    StepState::Skipped => ("2", "skipped"),
                    _ => ("33", "cancelled"),
                };
                let mark = self.paint(code, &format!("{word:<9}"));
                let mut text = format!("{mark} {step}");
                if *state == StepState::Succeeded || *state == StepState::Failed {
                    text.push_str(&format!(" ({})", output::duration_ms(*duration_ms)));
                }
                if !outputs.is_empty() {
                    text.push_str(&format!(", {} output{}", outputs.len(), if outputs.len() == 1 { "" } else { "s" }));
                }
                if let Some(c) = cached {
                    text.push_str(&format!(", from run {} step `{}`", c.run, c.step));
                }
                match cache_check {
                    Some(c) if c.same => text.push_str(&format!(", checked: the same bytes as run {}", c.run)),
                    Some(c) => {
                        let loud = self.paint("31", "CACHE CHECK FAILED");
                        text.push_str(&format!(
                            ", {loud}: other bytes than run {} step `{}` from the same inputs",
                            c.run, c.step
                        ));
                    }
                    None => {}
                }
                if *log_truncated {
                    text.push_str(", log truncated");
                }
                if let Some(d) = deployed {
                    text.push_str(&format!(", {}", d.detail));
                }
                if let Some(p) = published {
                    text.push_str(&format!(
                        ", {} {} files ({}) to {}/{}",
                        if p.created { "published" } else { "already published:" },
                        p.files,
                        airlock_model::format_size(p.bytes),
                        p.target,
                        p.build
                    ));
                }
                if let Some(reason) = reason
                    && *state != StepState::Succeeded
                {
                    text.push_str(&format!(": {reason}"));
                }
                self.line(text);
            }
            Progress::ApprovalRequested {
                run,
                step,
                environment,
                provider,
                target,
                artifacts,
                requester,
                required,
                approvers,
                deadline_ms,
                code,
            } => {
                let mut text = format!(
                    "{} {step}: deploy to `{environment}` ({provider} {target}) of {} artifact{}, asked by {requester}:",
                    self.paint("33", &format!("{:<9}", "approval")),
                    artifacts.len(),
                    if artifacts.len() == 1 { "" } else { "s" }
                );
                for a in artifacts {
                    text.push_str(&format!(
                        "\n            sha256:{}  {:>10}  {}",
                        a.sha256,
                        airlock_model::format_size(a.size),
                        a.path
                    ));
                }
                text.push_str(&format!(
                    "\n          needs {required} approval{} from {} by {}; one-time code {code}\n          airlock approve {run} {step} --code {code} [--deny]",
                    if *required == 1 { "" } else { "s" },
                    approvers.join(", "),
                    output::time(*deadline_ms),
                ));
                self.line(text);
            }
            Progress::RunFinished { .. } => {
                if let Some((multi, total)) = &self.live {
                    total.finish_and_clear();
                    let _ = multi.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a live display, a step's preparation is told once per
    /// piece of work, however often its progress is reported.
    #[test]
    fn each_piece_of_preparation_is_told_once() {
        let mut view = View::new(false, 2);
        let fetch = "fetching tool `python` from https://example.org/python.tgz";
        assert!(view.first_time("test", fetch));
        assert!(!view.first_time("test", fetch), "the same download reported again");
        assert!(view.first_time("lint", fetch), "another step waiting for the same fetch");
        assert!(view.first_time("test", "unpacking tool `python`"));
        assert!(view.first_time("test", "compiling python.wasm (25.1 MiB), first use only"));
    }
}
