//! A plain WASI command program: no airlock SDK, just `fn main`.
//!
//! `wordcount OUTPUT FILE...` counts lines, words and bytes of each FILE
//! like `wc`, prints the table and writes it to OUTPUT. Built for
//! `wasm32-wasip1`, it shows that any program compiled for WASI runs as an
//! airlock step with `args:`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((output, files)) = args.split_first() else {
        eprintln!("usage: wordcount OUTPUT FILE...");
        return ExitCode::from(2);
    };
    let mut table = String::new();
    let mut total = (0, 0, 0);
    for file in files {
        let text = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("wordcount: {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let s = String::from_utf8_lossy(&text);
        let (l, w, b) = (s.lines().count(), s.split_whitespace().count(), text.len());
        total = (total.0 + l, total.1 + w, total.2 + b);
        table.push_str(&format!("{l:>7} {w:>7} {b:>9} {file}\n"));
    }
    table.push_str(&format!("{:>7} {:>7} {:>9} total\n", total.0, total.1, total.2));
    print!("{table}");
    if let Err(e) = std::fs::write(output, &table) {
        eprintln!("wordcount: {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
