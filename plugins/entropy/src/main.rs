//! `entropy OUTPUT [FILE...]`: writes to OUTPUT (and prints) what a step
//! could differ by from one run to the next if the host let it: the
//! wall clock, how much time a little work took on the monotonic clock,
//! random bytes (through the standard library's hash keys, which WASI's
//! random source seeds), the order a hash map keeps, and the
//! modification time of each FILE.
//!
//! In a deterministic step all of it but the modification times is the
//! same in every run; those are the host's, which airlock does not fix.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let Some(output) = std::env::args().nth(1) else {
        eprintln!("usage: entropy OUTPUT");
        return ExitCode::from(2);
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let started = Instant::now();
    let mut sum = 0u64;
    for i in 0..100_000u64 {
        sum = sum.wrapping_mul(31).wrapping_add(i);
    }
    let took = started.elapsed().as_nanos();
    let random = std::collections::hash_map::RandomState::new().hash_one(sum);
    let order: HashMap<u32, ()> = (0..16).map(|i| (i, ())).collect();
    let order: Vec<String> = order.keys().map(u32::to_string).collect();
    let mut text = format!("time {now}\ntook {took}\nrandom {random:016x}\norder {}\n", order.join(","));
    for file in std::env::args().skip(2) {
        let modified = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
        match modified {
            Ok(ns) => text.push_str(&format!("mtime {file} {ns}\n")),
            Err(e) => text.push_str(&format!("mtime {file} unknown: {e}\n")),
        }
    }
    print!("{text}");
    if let Err(e) = std::fs::write(&output, text) {
        eprintln!("entropy: cannot write {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
