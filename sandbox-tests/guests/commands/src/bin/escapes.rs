//! Attack: put terminal escape sequences and bytes that are not UTF-8 in
//! the log, to rewrite the screen of whoever reads it (clear it, move the
//! cursor, set the window title, hide text, fake a line of airlock's own
//! output), then fail.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let _ = out.write_all(b"honest line\n");
    let _ = out.write_all(b"\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[8mhidden\x1b[0m\n");
    let _ = out.write_all(b"\rok   build  succeeded\x1b[1A\x1b[K\n");
    let _ = out.write_all("\u{9b}31mC1 escape\u{202e}txt.exe\n".as_bytes());
    let _ = err.write_all(b"not utf-8: \xff\xfe\xc0\xaf and a bell \x07\n");
    std::process::exit(1);
}
