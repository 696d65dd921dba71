//! Attack: call host functions in a tight loop (clocks, randomness, the
//! environment, empty writes), so the guest spends its time in the host.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    let mut n: u64 = 0;
    loop {
        let now = std::time::Instant::now();
        let wall = std::time::SystemTime::now();
        let seed = RandomState::new().hash_one(n);
        let var = std::env::var_os("PATH");
        let _ = out.write(&[]);
        n = std::hint::black_box(
            n ^ seed ^ now.elapsed().as_nanos() as u64 ^ wall.elapsed().map_or(0, |d| d.as_nanos() as u64),
        );
        std::hint::black_box(var);
    }
}
