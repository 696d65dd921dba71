//! Text from guests shown to people (logs, error messages, file names):
//! nothing that acts on a terminal survives, and one-line text is one
//! line of bounded length.

#![no_main]

use airlock_model::text::{neutralize, one_line};
use libfuzzer_sys::fuzz_target;

fn hazard(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fuzz_target!(|input: (&[u8], u16)| {
    let (bytes, max) = input;
    let log = neutralize(bytes);
    assert!(log.chars().all(|c| c == '\n' || c == '\t' || !hazard(c)), "{log:?}");
    let text = String::from_utf8_lossy(bytes);
    let line = one_line(&text, max as usize);
    assert!(!line.chars().any(hazard), "{line:?}");
    // At most `max` bytes, one escaped character (10 bytes) past it, and
    // the note saying how much was left out.
    assert!(line.len() <= max as usize + 10 + 32, "{} bytes for a limit of {max}", line.len());
});
