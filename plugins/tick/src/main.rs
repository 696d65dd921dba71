//! `tick COUNT INTERVAL_MS [OUTPUT]`: prints `tick 1` … `tick COUNT`, one
//! every INTERVAL_MS milliseconds, then writes OUTPUT (if given) with what
//! it printed.
//!
//! A step that takes its time on purpose: for following a log while it is
//! written, and for stopping an engine in the middle of a run.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(count), Some(interval)) =
        (args.first().and_then(|a| a.parse::<u32>().ok()), args.get(1).and_then(|a| a.parse::<u64>().ok()))
    else {
        eprintln!("usage: tick COUNT INTERVAL_MS [OUTPUT]");
        return ExitCode::from(2);
    };
    let mut printed = String::new();
    let mut out = std::io::stdout();
    for i in 1..=count {
        let line = format!("tick {i}\n");
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
        printed.push_str(&line);
        std::thread::sleep(Duration::from_millis(interval));
    }
    if let Some(output) = args.get(2)
        && let Err(e) = std::fs::write(output, &printed)
    {
        eprintln!("tick: {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
