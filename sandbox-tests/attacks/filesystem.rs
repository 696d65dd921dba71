//! Attacks on the file system: reading the host, escaping the workspace,
//! links, writing to inputs, hostile output names, too many files, too
//! many bytes.

use crate::lab::Lab;

/// Asserts the guest reported its attempts and none escaped.
fn assert_all_refused(log: &str, attempts: &[&str]) {
    assert!(!log.contains("ESCAPED"), "an attempt escaped the sandbox:\n{log}");
    for attempt in attempts {
        assert!(log.contains(&format!("refused: {attempt}")), "the guest did not report `{attempt}`:\n{log}");
    }
}

#[test]
fn attack_read_etc_passwd_and_climb_out_with_dotdot_and_absolute_paths() {
    let lab = Lab::new();
    let state_db = lab.state().join("db").display().to_string();
    let r = lab.attack(
        &format!("uses: {}\nargs: ['{}', '{state_db}/conf']", lab.guest("read-host-files"), lab.secret_path()),
        &[],
    );
    r.assert_contained("step `attack` exited with status 1");
    let log = r.log();
    assert_all_refused(
        &log,
        &[
            "read /etc/passwd",
            "read /proc/self/environ",
            "read ../secret.txt",
            "read /workspace/../secret.txt",
            "read /inputs/src/../../secret.txt",
            &format!("read {}", lab.secret_path()),
            "list /: only the preopens",
            "list ..",
        ],
    );
    assert!(!log.contains("root:"), "{log}");
}

#[test]
fn attack_symlink_pointing_outside_declared_as_an_output() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\noutputs: [out]", lab.guest("symlink-out")), &[]);
    r.assert_contained(
        "step `attack`: output `out/passwd` is a symbolic link; only regular files are taken out of a workspace",
    );
    let log = r.log();
    assert_all_refused(&log, &["read out/passwd", "read out/up/secret.txt"]);
    assert!(r.step("attack")["outputs"].as_array().is_some_and(|o| o.is_empty()), "nothing was taken out");
}

#[test]
fn attack_hard_links_to_an_input_and_inside_the_workspace() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\noutputs: [out]", lab.guest("hardlink")), &[]);
    r.assert_contained(
        "step `attack`: output `out/one.txt` is a hard link; only regular files with one name are taken out of a workspace",
    );
    assert_all_refused(&r.log(), &["link /inputs/src/a.txt to out/stolen", "link ../secret.txt to out/secret"]);
}

#[test]
fn attack_write_rename_delete_and_chmod_an_input() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}", lab.guest("write-input")), &[]);
    r.assert_contained("step `attack` exited with status 1");
    assert_all_refused(
        &r.log(),
        &[
            "overwrite /inputs/src/a.txt",
            "append to /inputs/src/a.txt",
            "truncate /inputs/src/a.txt",
            "create /inputs/src/new.txt",
            "delete /inputs/src/a.txt",
            "overwrite /inputs/before/counts.txt",
            "create /inputs/before/new.txt",
            "move /inputs/before/counts.txt into the workspace",
        ],
    );
}

#[test]
fn attack_write_into_mounts_of_a_source_and_an_upstream_step() {
    let lab = Lab::new();
    let r = lab.attack(
        &format!(
            "uses: {}\nmounts: {{ /data: src, /prev: before }}\nargs: [/data, /data/a.txt, /prev, /prev/counts.txt, /inputs, /inputs/src/a.txt]",
            lab.guest("write-input")
        ),
        &[],
    );
    r.assert_contained("step `attack` exited with status 1");
    assert_all_refused(
        &r.log(),
        &[
            "overwrite /data/a.txt",
            "append to /data/a.txt",
            "truncate /data/a.txt",
            "create /data/new.txt",
            "mkdir /data/sub",
            "rename /data/a.txt",
            "delete /data/a.txt",
            "overwrite /prev/counts.txt",
            "move /prev/counts.txt into the workspace",
            "create /inputs/new.txt",
            "mkdir /inputs/sub",
        ],
    );
}

#[test]
fn attack_output_names_with_terminal_escapes_and_newlines() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nargs: [control]\noutputs: [out]", lab.guest("odd-names")), &[]);
    r.assert_contained(
        r#"step `attack`: output name "out/evil\u{1b}[2J\u{1b}]0;pwned\u{7}.txt" contains control or bidirectional-formatting characters"#,
    );
}

#[test]
fn attack_output_name_that_reads_backwards() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nargs: [bidi]\noutputs: [out]", lab.guest("odd-names")), &[]);
    r.assert_contained(
        r#"step `attack`: output name "out/invoice\u{202e}fdp.exe" contains control or bidirectional-formatting characters"#,
    );
}

#[test]
fn attack_output_names_that_are_not_utf8() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nargs: [not-utf8]\noutputs: [out]", lab.guest("odd-names")), &[]);
    // WASI paths are Unicode strings: such a name cannot even be made.
    r.assert_contained("step `attack` exited with status 1");
    assert_all_refused(&r.log(), &["create \"out/\\xFF\\xFE.txt\"", "create \"out/caf\\xE9.txt\""]);
}

#[test]
fn attack_output_paths_over_4_kib() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nargs: [long]\noutputs: [out]", lab.guest("odd-names")), &[]);
    let reason = r.reason().to_owned();
    assert!(reason.starts_with("step `attack`: output path `out/dddd"), "{reason}");
    assert!(reason.ends_with("bytes long, over the limit of 1024"), "{reason}");
    r.assert_contained(&reason);
    assert!(r.log().contains("refused: a 4 KiB file name"), "{}", r.log());
}

#[test]
fn attack_output_pattern_climbing_out_with_dotdot() {
    let lab = Lab::new();
    for pattern in ["../secret.txt", "/etc/passwd", "out/../../secret.txt"] {
        lab.file(
            "pipeline.yaml",
            format!("name: t\nsteps:\n  attack:\n    uses: {}\n    outputs: ['{pattern}']\n", lab.guest("spin")),
        );
        let (code, _, stderr) = lab.output(&["run", &lab.path().join("pipeline.yaml").display().to_string()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("pipeline.yaml:5:"), "the error names the line: {stderr}");
        assert!(stderr.contains("without `..` or a leading `/`"), "{stderr}");
        assert!(!lab.state().join("work").exists(), "nothing ran");
    }
}

#[test]
fn attack_two_hundred_thousand_files_in_an_output_directory() {
    let lab = Lab::new();
    // A lower limit than the default 100,000 keeps the test quick (making
    // a file costs up to a millisecond on this file system); the guest
    // still sets out to make 200,000.
    let r = lab.attack(&format!("uses: {}\noutputs: [out]\nlimits: {{ files: 5000 }}", lab.guest("many-files")), &[]);
    r.assert_contained("step `attack` made more than 5000 files and directories in its workspace, its limit");
    let made = std::fs::read_dir(r.workspace().join("out")).expect("workspace kept").count();
    assert!((5_000..20_000).contains(&made), "stopped while it wrote, at {made} files");
}

#[test]
fn attack_one_endless_file() {
    let lab = Lab::new();
    let r = lab.attack(&format!("uses: {}\nlimits: {{ disk: 64MiB }}", lab.guest("endless-file")), &[]);
    r.assert_contained("step `attack` wrote more than its disk quota of 64 MiB to its workspace");
    let size = std::fs::metadata(r.workspace().join("endless.bin")).expect("workspace kept").len();
    assert!(size > 64 << 20 && size < 512 << 20, "stopped while it wrote, at {size} bytes");
}

#[test]
fn attack_leave_files_for_the_next_step_or_the_next_attempt() {
    let lab = Lab::new();
    let leave = lab.guest("leave-behind");
    let look = crate::lab::plugin("printenv");
    // One step at a time, so the next step would get the directory the
    // last one left, if airlock reused a workspace that is not empty.
    lab.file(
        "pipeline.yaml",
        format!(
            "name: t
steps:
  leave:
    uses: {leave}
    args: [succeed]
  next:
    uses: {look}
    needs: [leave]
  retried:
    uses: {leave}
    args: [fail]
    needs: [next]
    retries: {{ count: 1, backoff: 1ms }}
"
        ),
    );
    let (code, _, stderr) =
        lab.output(&["run", &lab.path().join("pipeline.yaml").display().to_string(), "--jobs", "1"]);
    assert_eq!(code, 1, "{stderr}");
    let (_, next, _) = lab.output(&["logs", "last", "next"]);
    assert!(next.contains("dir /workspace: []"), "the next step starts in an empty workspace: {next}");
    let (_, logs, _) = lab.output(&["logs", "last", "retried"]);
    // Both attempts start empty: each lists only what it made itself.
    let listings: Vec<&str> = logs.lines().filter(|l| l.starts_with("workspace holds")).collect();
    assert_eq!(listings.len(), 2, "{logs}");
    for l in listings {
        assert_eq!(l.matches("planted.txt").count(), 1, "{l}");
    }
}
