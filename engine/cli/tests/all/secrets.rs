//! Nothing of the engine's environment reaches a guest, a log, an
//! artifact or the state store.

use crate::support::{Scratch, output};

const CANARY: &str = "airlock-canary-7f3a9c1e5b";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_canary_in_the_engine_environment_reaches_no_guest_log_artifact_or_record() {
    let s = Scratch::new();
    // A secret file beside the state directory, which no step declared.
    s.file("secret.txt", CANARY);
    s.pipeline(
        "name: canary
steps:
  module:
    uses: {plugins}/wasm32-wasip1/release/printenv.wasm
    args: [report.txt]
    env: { DECLARED: visible }
    outputs: [report.txt]
  component:
    uses: {plugins}/wasm32-wasip2/release/printenv.wasm
    args: [report.txt]
    outputs: [report.txt]
",
    );
    let mut cmd = crate::support::airlock(&s.state());
    cmd.arg("run").arg(s.path().join("pipeline.yaml"));
    cmd.env("AIRLOCK_CANARY_TOKEN", CANARY).env("AWS_SECRET_ACCESS_KEY", CANARY);
    let (code, stdout, stderr) = output(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains(CANARY) && !stderr.contains(CANARY));

    // The guests saw only what was declared.
    let (_, logs, _) = output(crate::support::airlock(&s.state()).args(["logs", "last"]));
    let env_lines: Vec<&str> = logs.lines().filter(|l| l.starts_with("env: ")).collect();
    assert_eq!(
        env_lines,
        [
            "env: DECLARED=visible",
            "env: PWD=/workspace",
            "env: SOURCE_DATE_EPOCH=946684800",
            "env: TMPDIR=/tmp",
            "env: PWD=/workspace",
            "env: SOURCE_DATE_EPOCH=946684800",
            "env: TMPDIR=/tmp"
        ],
        "{logs}"
    );
    // No inputs were declared: `/inputs` is there, and empty.
    assert!(logs.contains("dir /inputs: []"), "{logs}");

    // Nothing anywhere in the state directory holds the canary: not the
    // sled files, not the artifacts, not the compile cache.
    let files = crate::support::files_below(&s.state());
    assert!(files.len() > 3, "the state directory is unexpectedly empty");
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        assert!(!contains(&bytes, CANARY.as_bytes()), "canary found in {}", file.display());
    }
    let (_, show, _) = output(crate::support::airlock(&s.state()).args(["show", "last", "--json"]));
    assert!(!show.contains(CANARY));
}
