//! Attack: block forever inside the host, where the engine's interruption
//! of running guest code cannot reach: sleep (a monotonic-clock pollable
//! waited on with `wasi:io/poll`) for ten thousand years.

fn main() {
    println!("going to sleep");
    std::thread::sleep(std::time::Duration::from_secs(10_000 * 365 * 24 * 3600));
    println!("woke up");
}
