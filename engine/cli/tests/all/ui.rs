//! Golden tests of `airlock validate`: each `ui/NAME.yaml` sits beside
//! `ui/NAME.stderr`, the exact rendering a person sees. Run with
//! `AIRLOCK_BLESS=1` to rewrite the expected files after a deliberate
//! change, then review the diff.

use crate::support::{airlock, output, plugins, repo};

#[test]
fn every_invalid_pipeline_renders_as_recorded() {
    plugins();
    let dir = repo().join("engine/cli/tests/all/ui");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("ui dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "the ui cases are missing");
    let state = tempfile::tempdir().expect("tempdir");
    let mut mismatches = Vec::new();
    for case in cases {
        let name = case.file_name().expect("name").to_string_lossy().into_owned();
        let (code, stdout, stderr) = output(airlock(state.path()).current_dir(&dir).args(["validate", &name]));
        assert_eq!(code, 1, "{name} should be invalid");
        assert_eq!(stdout, "", "{name}: diagnostics go to stderr");
        let expected_path = case.with_extension("stderr");
        if std::env::var_os("AIRLOCK_BLESS").is_some() {
            std::fs::write(&expected_path, &stderr).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != stderr {
            mismatches.push(format!("--- {name}: expected\n{expected}\n--- got\n{stderr}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn five_mistakes_are_all_reported_with_line_numbers() {
    plugins();
    let dir = repo().join("engine/cli/tests/all/ui");
    let state = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = output(airlock(state.path()).current_dir(&dir).args(["validate", "five-mistakes.yaml"]));
    assert_eq!(code, 1);
    for needle in [
        "five-mistakes.yaml:6:11", // missing plugin file
        "five-mistakes.yaml:8:14", // undefined param, with a suggestion
        "five-mistakes.yaml:11:5", // `need:`
        "did you mean `needs`?",
        "five-mistakes.yaml:12:14", // input not upstream
        "five-mistakes.yaml:13:14", // bad duration
        "five-mistakes.yaml:16:19", // unknown step
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
}

#[test]
fn valid_pipelines_exit_zero_and_json_lists_diagnostics() {
    plugins();
    let state = tempfile::tempdir().expect("tempdir");
    let pipelines = repo().join("pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&pipelines)
        .expect("pipelines")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    let policy = repo().join("pipelines/admin/policy.yaml");
    let (code, _, stderr) = output(airlock(state.path()).arg("--policy").arg(&policy).arg("validate").args(&files));
    assert_eq!(code, 0, "{stderr}");
    // Without the policy, the publish step's target cannot be checked.
    let (code, _, stderr) = output(airlock(state.path()).arg("validate").arg(pipelines.join("release.yaml")));
    assert_eq!(code, 1);
    assert!(stderr.contains("no admin policy was given; pass `--policy FILE`"), "{stderr}");

    let bad = repo().join("engine/cli/tests/all/ui/cycle.yaml");
    let (code, stdout, _) = output(
        airlock(state.path()).arg("--policy").arg(&policy).args(["validate", "--json"]).arg(&files[0]).arg(&bad),
    );
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report[0]["valid"], true);
    assert_eq!(report[1]["valid"], false);
    assert_eq!(report[1]["diagnostics"][0]["code"], "cycle");
    assert_eq!(report[1]["diagnostics"][0]["span"]["line"], 3);
}

#[test]
fn a_line_too_long_to_show_is_named_not_printed() {
    let s = crate::support::Scratch::new();
    let path = s.file("deep.yaml", format!("name: x\nsteps: {}\n", "[".repeat(100_000)));
    let (code, _, stderr) = crate::support::output(crate::support::airlock(&s.state()).arg("validate").arg(&path));
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid YAML: recursion limit exceeded"), "{stderr}");
    assert!(stderr.contains("deep.yaml:2:"), "{stderr}");
    assert!(stderr.len() < 2000, "the line is not echoed: {} bytes", stderr.len());
}
