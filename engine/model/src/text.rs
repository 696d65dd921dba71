//! Text a guest wrote, made safe to show a person.
//!
//! Logs, error messages and file names come from untrusted code. Printed
//! as they are, terminal escape sequences in them would clear the screen,
//! move the cursor, retitle the window or fake a line of airlock's own
//! output, and bidirectional-override characters would make text read
//! differently from what it is. These functions show such characters as
//! visible escapes (`\x1b`, `\u{202e}`) instead.

/// Whether `c` changes how a terminal shows what follows it: C0 and C1
/// control characters, DEL, and the bidirectional formatting characters.
pub fn is_hazard(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(c: char, out: &mut String) {
    use std::fmt::Write as _;
    let _ = if (c as u32) < 0x100 { write!(out, "\\x{:02x}", c as u32) } else { write!(out, "\\u{{{:x}}}", c as u32) };
}

/// A log for a terminal: invalid UTF-8 becomes U+FFFD, every hazard but
/// newline and tab becomes a visible escape.
pub fn neutralize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if is_hazard(c) => escape(c, &mut out),
            c => out.push(c),
        }
    }
    out
}

/// A message for one line of a table or a record: every hazard, newlines
/// included, becomes a visible escape, and the result is cut to about
/// `max` bytes with a note saying how much was left out.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 32));
    for (i, c) in text.char_indices() {
        if out.len() >= max {
            out.push_str(&format!("… ({} more bytes)", text.len() - i));
            break;
        }
        if is_hazard(c) { escape(c, &mut out) } else { out.push(c) }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_interpreted() {
        assert_eq!(neutralize(b"ok\x1b[2Jbad\xffend\n"), "ok\\x1b[2Jbad\u{fffd}end\n");
        assert_eq!(neutralize("\u{9b}31m txt\u{202e}exe".as_bytes()), "\\x9b31m txt\\u{202e}exe");
    }

    #[test]
    fn one_line_escapes_newlines_and_cuts() {
        assert_eq!(one_line("a\nb\x07", 100), "a\\x0ab\\x07");
        assert_eq!(one_line(&"x".repeat(50), 10), "xxxxxxxxxx… (40 more bytes)");
        assert_eq!(one_line("ééé", 3), "éé… (2 more bytes)");
    }
}
