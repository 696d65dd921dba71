//! Clocks and randomness that make a step's bytes the same each time it
//! runs.
//!
//! A step sees nothing the pipeline did not declare except time and
//! random bytes, which the host provides. In a deterministic step both
//! come from here: the wall clock starts at [`START`] (2000-01-01, UTC),
//! the monotonic clock at zero, and each moves on by [`TICK`] every time
//! it is read, so that time passes (a program measuring how long
//! something took sees a positive duration, one that waits for a later
//! instant gets there) but only by the program's own reading of it.
//! Random bytes come from a generator seeded by the host (the runner
//! derives the seed from the step's cache key, so that the same step gets
//! the same bytes and another step other bytes). `SOURCE_DATE_EPOCH` is
//! [`START`] unless the step's environment sets it, for tools that stamp
//! their outputs with it.
//!
//! What this does not fix: sleeping still takes real time (the clocks
//! only tell time), and a guest's threads, which airlock does not grant,
//! would race. Files the step writes carry the host's modification
//! times, which a step can read back; the outputs airlock takes are
//! their bytes only.

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// Where a deterministic step's wall clock starts: 2000-01-01T00:00:00Z.
pub const START: Duration = Duration::from_secs(946_684_800);
/// How far a deterministic step's clocks move each time they are read.
pub const TICK: Duration = Duration::from_micros(1);

/// A wall clock that starts at [`START`] and moves by [`TICK`] per read.
struct SteppedWallClock {
    reads: AtomicU64,
}

impl HostWallClock for SteppedWallClock {
    fn resolution(&self) -> Duration {
        TICK
    }

    fn now(&self) -> Duration {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        START + TICK.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// A monotonic clock that starts at zero and moves by [`TICK`] per read.
struct SteppedMonotonicClock {
    reads: AtomicU64,
}

impl HostMonotonicClock for SteppedMonotonicClock {
    fn resolution(&self) -> u64 {
        TICK.as_nanos() as u64
    }

    fn now(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed).saturating_mul(TICK.as_nanos() as u64)
    }
}

/// A generator seeded from `seed` and a label, so that the secure and
/// the insecure one differ.
fn generator(seed: &[u8; 32], label: &str) -> StdRng {
    let derived: [u8; 32] = Sha256::new().chain_update(seed).chain_update(label.as_bytes()).finalize().into();
    StdRng::from_seed(derived)
}

/// Gives the WASI context the fixed clocks and generators of `seed`.
pub(crate) fn apply(builder: &mut WasiCtxBuilder, seed: &[u8; 32], env: &[(String, String)]) {
    builder.wall_clock(SteppedWallClock { reads: AtomicU64::new(0) });
    builder.monotonic_clock(SteppedMonotonicClock { reads: AtomicU64::new(0) });
    builder.secure_random(generator(seed, "airlock random"));
    builder.insecure_random(generator(seed, "airlock insecure random"));
    let insecure_seed: [u8; 32] =
        Sha256::new().chain_update(seed).chain_update(b"airlock insecure seed").finalize().into();
    let mut first = [0u8; 16];
    first.copy_from_slice(&insecure_seed[..16]);
    builder.insecure_random_seed(u128::from_le_bytes(first));
    if !env.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
        builder.env("SOURCE_DATE_EPOCH", START.as_secs().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_version_names_the_wasmtime_it_is_built_on() {
        let lock = include_str!("../../../Cargo.lock");
        let at = lock.find("\nname = \"wasmtime\"\nversion = \"").expect("wasmtime in Cargo.lock");
        let version = lock[at..].lines().nth(2).expect("version line");
        let version = version.trim_start_matches("version = \"").trim_end_matches('"');
        assert!(crate::SANDBOX_VERSION.contains(&format!("wasmtime {version};")), "{version}");
    }

    #[test]
    fn clocks_start_fixed_and_move_per_reading() {
        let wall = SteppedWallClock { reads: AtomicU64::new(0) };
        assert_eq!(wall.now(), START);
        assert_eq!(wall.now(), START + TICK);
        let mono = SteppedMonotonicClock { reads: AtomicU64::new(0) };
        assert_eq!((mono.now(), mono.now()), (0, 1000));
    }

    #[test]
    fn one_seed_gives_one_stream_and_another_another() {
        use rand::Rng as _;
        let bytes = |seed: [u8; 32]| {
            let mut g = generator(&seed, "x");
            (0..4).map(|_| g.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(bytes([1; 32]), bytes([1; 32]));
        assert_ne!(bytes([1; 32]), bytes([2; 32]));
    }
}
