//! Attack: leave outputs whose names confuse whoever reads them later.
//! `odd-names control` makes names with terminal escapes and newlines,
//! `odd-names bidi` one that reads `invoice.pdf` but is an `.exe`,
//! `odd-names not-utf8` tries names that are not UTF-8, `odd-names long`
//! nests directories until the path is over 4 KiB.

use hostile_commands::Attempts;
use std::ffi::OsString;

fn main() {
    std::fs::create_dir_all("out").expect("mkdir out");
    std::fs::write("out/plain.txt", "plain\n").expect("write");
    match std::env::args().nth(1).as_deref() {
        Some("control") => {
            for name in ["out/evil\x1b[2J\x1b]0;pwned\x07.txt", "out/two\nlines.txt"] {
                match std::fs::write(name, "x") {
                    Ok(()) => println!("made: {name:?}"),
                    Err(e) => println!("refused: create {name:?}: {e}"),
                }
            }
            std::process::exit(0);
        }
        Some("bidi") => {
            let name = "out/invoice\u{202e}fdp.exe";
            match std::fs::write(name, "x") {
                Ok(()) => println!("made: {name:?}"),
                Err(e) => println!("refused: create {name:?}: {e}"),
            }
            std::process::exit(0);
        }
        Some("not-utf8") => {
            let mut a = Attempts::default();
            for raw in [&b"out/\xff\xfe.txt"[..], b"out/caf\xe9.txt", b"out/\xc0\xaf.txt"] {
                // SAFETY: on WASI an `OsStr` is any sequence of bytes, so
                // these are valid encoded bytes; the host is what may not
                // accept them.
                let name = unsafe { OsString::from_encoded_bytes_unchecked(raw.to_vec()) };
                a.check(&format!("create {name:?}"), std::fs::write(&name, "x"));
            }
            a.finish();
        }
        Some("long") => {
            let mut path = String::from("out");
            while path.len() < 4096 {
                path.push('/');
                path.push_str(&"d".repeat(200));
            }
            match std::fs::create_dir_all(&path).and_then(|()| std::fs::write(format!("{path}/f.txt"), "deep")) {
                Ok(()) => println!("made: a file {} bytes deep", path.len() + 6),
                Err(e) => println!("refused: a path of {} bytes: {e}", path.len()),
            }
            let long_name = format!("out/{}", "n".repeat(4096));
            match std::fs::write(&long_name, "x") {
                Ok(()) => println!("made: a 4 KiB file name"),
                Err(e) => println!("refused: a 4 KiB file name: {e}"),
            }
            std::process::exit(0);
        }
        other => {
            eprintln!("usage: odd-names control|bidi|not-utf8|long (got {other:?})");
            std::process::exit(2);
        }
    }
}
