//! What the benchmarks of this crate share: percentiles of timed samples,
//! and durations printed for people.

use std::time::Duration;

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
