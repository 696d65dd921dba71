//! Attacks through what a step prints or returns.

use crate::lab::Lab;

#[test]
fn attack_200_mb_on_stdout() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.guest("flood-stdout")), &[]);
    r.assert_contained("step `attack` exited with status 1");
    let log = r.log();
    assert!(log.len() < (4 << 20) + 1024, "the log is capped at 4 MiB, not {} bytes", log.len());
    assert!(
        log.trim_end().ends_with("[airlock: log truncated: kept 4 MiB of 190.7 MiB written]"),
        "{}",
        &log[log.len() - 200..]
    );
    assert!(r.run.stderr.contains("log truncated"), "the run says so: {}", r.run.stderr);
    let peak = r.run.peak_rss;
    assert!(peak < 160 << 20, "the engine peaked at {} MiB while the guest wrote 200 MB", peak >> 20);
}

/// Characters that would act on a terminal rather than be shown.
fn hazards(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| (c.is_control() && *c != '\n' && *c != '\t') || ('\u{202a}'..='\u{202e}').contains(c))
        .collect()
}

#[test]
fn attack_terminal_escapes_and_invalid_utf8_in_the_log() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.guest("escapes")), &[]);
    r.assert_contained("step `attack` exited with status 1");
    let log = r.log();
    assert_eq!(hazards(&log), [], "{log:?}");
    assert!(log.contains("honest line\n\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07\\x1b[8mhidden\\x1b[0m\n"), "{log}");
    assert!(log.contains("\\x9b31mC1 escape\\u{202e}txt.exe"), "{log}");
    assert!(log.contains("not utf-8: \u{fffd}\u{fffd}\u{fffd}\u{fffd} and a bell \\x07"), "{log}");
}

#[test]
fn attack_a_50_mb_error_message_full_of_escapes() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nwith: {{ attack: huge-error }}", lab.guest("hostile_step")), &[]);
    let reason = r.reason().to_owned();
    assert!(
        reason.starts_with("step `attack` failed: \\x1b[2J\\x1b]0;pwned\\x07first line\\x0asecond line"),
        "{reason}"
    );
    assert!(reason.len() < 4200, "the reason is cut, not {} bytes", reason.len());
    assert!(reason.ends_with(" more bytes)"), "{reason}");
    assert_eq!(hazards(&reason), []);
    r.assert_contained(&reason);
    for shown in [&r.run.stderr, &lab.output(&["show", "last"]).1] {
        assert_eq!(hazards(shown), [], "{shown}");
    }
}
