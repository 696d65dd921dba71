//! `printenv [OUTPUT]`: prints everything the sandbox handed this program
//! (arguments, environment variables, the directories it can see) and,
//! given OUTPUT, writes the same report there.
//!
//! Handy to check what a step really gets; airlock's tests use it to show
//! that nothing of the engine's own environment reaches a guest.

use std::fmt::Write as _;

fn main() {
    let mut report = String::new();
    let args: Vec<String> = std::env::args().collect();
    let _ = writeln!(report, "args: {args:?}");
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (k, v) in &vars {
        let _ = writeln!(report, "env: {k}={v}");
    }
    for dir in ["/", "/workspace", "/inputs"] {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<String> =
                    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                let _ = writeln!(report, "dir {dir}: {names:?}");
            }
            Err(e) => {
                let _ = writeln!(report, "dir {dir}: {e}");
            }
        }
    }
    print!("{report}");
    if let Some(out) = args.get(1)
        && let Err(e) = std::fs::write(out, &report)
    {
        eprintln!("printenv: {out}: {e}");
        std::process::exit(1);
    }
}
