//! `airlock fetch`: the tools of pipelines, fetched and compiled ahead of
//! their first run (for a machine that will be offline, or to take the
//! wait out of a first run).

use crate::diagnostics::{check, render};
use crate::exit;
use airlock_host::tools::FetchProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `airlock fetch` takes.
#[derive(clap::Args)]
pub struct FetchArgs {
    /// Pipeline files whose tools to fetch.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Fetch only; leave compiling to the first run.
    #[arg(long)]
    no_compile: bool,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Fetches (and compiles) every tool of the pipelines; exits 1 if a
/// pipeline is invalid or a tool cannot be had.
pub fn fetch(state_dir: &Path, policy: Option<&Path>, args: FetchArgs) -> anyhow::Result<u8> {
    let policy = match policy {
        Some(path) => match crate::policy::load(path)? {
            Some(p) => Some(p.policy),
            None => return Ok(exit::FAILED),
        },
        None => None,
    };
    let mut pipelines = Vec::new();
    for path in &args.files {
        let (src, result) = check(path, policy.as_ref())?;
        match result {
            Ok(p) => pipelines.push(p),
            Err(diags) => {
                eprint!("{}", render(path, &src, &diags));
                return Ok(exit::FAILED);
            }
        }
    }
    let engine = crate::open_engine(state_dir)?;
    let cache = engine.tool_cache();
    let mut report = Vec::new();
    let mut failed = false;
    let tools = pipelines.iter().flat_map(|p| p.tools.iter().map(move |(name, tool)| (p, name, tool)));
    let mut seen = std::collections::HashSet::new();
    for (pipeline, name, tool) in tools {
        if !seen.insert((tool.sha256.clone(), tool.module.clone())) {
            continue;
        }
        let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(format!("fetching {name}"));
            bar
        });
        let started = Instant::now();
        let fetched = cache.fetch(name, tool, &|p| match (&bar, p) {
            (Some(bar), FetchProgress::Downloading { done, total }) => {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            }
            (Some(bar), FetchProgress::Unpacking) => bar.set_message(format!("unpacking {name}")),
            (None, _) => {}
        });
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                failed = true;
                if args.json {
                    report.push(serde_json::json!({ "pipeline": pipeline.name, "tool": name, "error": e.to_string() }));
                } else {
                    crate::output::error(&anyhow::Error::new(e));
                }
                continue;
            }
        };
        let fetch_seconds = started.elapsed().as_secs_f64();
        let mut compiled = None;
        // A tool that is only files to mount has nothing to compile.
        if !args.no_compile
            && let Some(module) = &fetched.module
        {
            let size = std::fs::metadata(module).map(|m| m.len()).unwrap_or(0);
            if !args.json {
                eprintln!("compiling {name} ({}) ...", airlock_model::format_size(size));
            }
            let started = Instant::now();
            // Any size: the policy says what a step may load when it runs.
            match engine.sandbox().load_granted(module, false, &Default::default(), u64::MAX) {
                Ok(plugin) => compiled = Some((plugin.from_cache, started.elapsed().as_secs_f64())),
                Err(e) => {
                    failed = true;
                    let e = format!("tool `{name}`: {e}");
                    if args.json {
                        report.push(serde_json::json!({ "pipeline": pipeline.name, "tool": name, "error": e }));
                    } else {
                        crate::output::error(&anyhow::anyhow!(e));
                    }
                    continue;
                }
            }
        }
        if args.json {
            report.push(serde_json::json!({
                "pipeline": pipeline.name,
                "tool": name,
                "sha256": tool.sha256,
                "module": fetched.module,
                "fetched_bytes": fetched.fetched,
                "fetch_seconds": fetch_seconds,
                "compiled": compiled.map(|(cached, s)| serde_json::json!({ "cached": cached, "seconds": s })),
            }));
        } else {
            let got = match fetched.fetched {
                Some(n) => format!("fetched {} in {fetch_seconds:.1}s", airlock_model::format_size(n)),
                None => "already fetched".into(),
            };
            let compiled = match compiled {
                Some((true, _)) => ", already compiled".into(),
                Some((false, s)) => format!(", compiled in {s:.1}s"),
                None => String::new(),
            };
            eprintln!("{name}: {got}{compiled} (sha256 {})", tool.sha256);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if seen.is_empty() {
        eprintln!("no tools: the pipelines have no `tools:`");
    }
    Ok(if failed { exit::FAILED } else { exit::OK })
}
