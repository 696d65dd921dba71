//! What the benchmarks of this crate share: percentiles of timed samples,
//! durations printed for people, and the smoke mode.
//!
//! Every benchmark takes `--smoke`: the same work at a tiny size, run once
//! by CI so that a broken benchmark is noticed the day it breaks. Its
//! figures mean nothing.

use std::time::Duration;

pub mod git_http;

/// Whether this is a smoke run (`--smoke` among the arguments).
pub fn smoke() -> bool {
    std::env::args().any(|a| a == "--smoke")
}

/// With `-h` or `--help` among the arguments: prints `usage` and exits
/// (0), before the benchmark does any work. Every benchmark calls it first.
pub fn help(usage: &str) {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(
            std::io::stdout(),
            "{}\n\n  --smoke    the same work at a tiny size, run once (CI); its figures mean nothing",
            usage.trim()
        );
        std::process::exit(0);
    }
}

/// `full`, or `tiny` in a smoke run.
pub fn scaled(full: usize, tiny: usize) -> usize {
    if smoke() { tiny } else { full }
}

/// The arguments that are not flags.
pub fn positional() -> Vec<String> {
    std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect()
}

/// The median and the 99th percentile of a set of timings.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Stats {
    /// The percentiles of `samples` (nearest rank; zero when empty).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
        Self { p50: at(0.5), p99: at(0.99) }
    }
}

/// A duration in µs, ms or s, whichever reads best.
pub fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Kills a child process when dropped.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `airlock` binary the benchmarks drive: `AIRLOCK_BIN`, or the
/// release build of this checkout.
pub fn airlock_bin() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("AIRLOCK_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/airlock"));
    if !path.is_file() {
        anyhow::bail!("no airlock binary at {}; run `cargo build --release -p airlock-cli` first", path.display());
    }
    Ok(path)
}

/// Spawns `command` (an `airlock ... serve --listen 127.0.0.1:0`) with
/// its stderr piped, and waits for the line that says where it listens.
/// Answers the process, killed when dropped, and its `http://ADDR`.
pub fn start_serve(mut command: std::process::Command) -> anyhow::Result<(Guard, String)> {
    use anyhow::Context as _;
    use std::io::BufRead as _;
    let mut child = command.stderr(std::process::Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let guard = Guard(child);
    let mut line = String::new();
    std::io::BufReader::new(stderr).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches('/').to_owned())
        .with_context(|| format!("no address from airlock serve: {line}"))?;
    Ok((guard, url))
}
