//! Running real pipelines end to end.

use crate::support::{Scratch, airlock, output, plugins, repo};

/// The main job: `pipelines/site.yaml` ends with the site archive and its
/// checksums as artifacts, and the checksums are right.
#[test]
fn site_pipeline_produces_the_archive_and_its_checksums() {
    plugins();
    let state = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = output(airlock(state.path()).arg("run").arg(repo().join("pipelines/site.yaml")));
    assert_eq!(code, 0, "{stderr}");

    let (code, text, _) = output(airlock(state.path()).args(["show", "last"]));
    assert_eq!(code, 0);
    assert!(text.contains("site.tar.gz") && text.contains("SHA256SUMS"), "{text}");
    assert!(text.contains("state     succeeded"), "{text}");

    let (_, json, _) = output(airlock(state.path()).args(["show", "last", "--json"]));
    let show: serde_json::Value = serde_json::from_str(&json).expect("json");
    let output_of = |step: &str, path: &str| {
        show["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == step))
            .and_then(|s| s["outputs"].as_array())
            .and_then(|o| o.iter().find(|o| o["path"] == path))
            .cloned()
            .unwrap_or_else(|| panic!("{step} has no output {path}: {show}"))
    };
    let archive = output_of("pack", "site.tar.gz");
    let sums = output_of("checksum", "SHA256SUMS");
    let digest = archive["sha256"].as_str().expect("digest");
    // The checksum step saw exactly the archive the store holds.
    let sums_blob = state
        .path()
        .join("artifacts/sha256")
        .join(&sums["sha256"].as_str().expect("d")[..2])
        .join(&sums["sha256"].as_str().expect("d")[2..]);
    let sums_text = std::fs::read_to_string(sums_blob).expect("sums blob");
    assert_eq!(sums_text, format!("{digest}  site.tar.gz\n"));
    // And the archive holds the rendered pages.
    let blob = state.path().join("artifacts/sha256").join(&digest[..2]).join(&digest[2..]);
    let listing = std::process::Command::new("tar").arg("-tzf").arg(&blob).output().expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for page in ["site/index.html", "site/guide/start.html", "site/guide/why.html", "site/style.css"] {
        assert!(listing.lines().any(|l| l == page), "{page} missing from {listing}");
    }

    // The same pipeline again produces the same archive (reproducible
    // steps, deduplicated store) and `airlock runs` lists both runs.
    let (code, _, _) = output(airlock(state.path()).arg("run").arg(repo().join("pipelines/site.yaml")));
    assert_eq!(code, 0);
    let (_, json, _) = output(airlock(state.path()).args(["show", "last", "--json"]));
    assert!(json.contains(digest), "second run made a different archive");
    let (_, runs, _) = output(airlock(state.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("json");
    assert_eq!(runs.as_array().map(Vec::len), Some(2));
}

#[test]
fn plain_wasi_command_programs_run_with_args() {
    plugins();
    let state = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = output(airlock(state.path()).arg("run").arg(repo().join("pipelines/wordcount.yaml")));
    assert_eq!(code, 0, "{stderr}");
    let (_, logs, _) = output(airlock(state.path()).args(["logs", "last", "count"]));
    assert!(logs.contains("/inputs/pages/guide/start.md"), "{logs}");
    assert!(logs.lines().last().is_some_and(|l| l.ends_with("total")), "{logs}");
}

#[test]
fn params_are_substituted_and_json_progress_is_one_event_per_line() {
    let s = Scratch::new();
    s.file("src/a.md", "# A page\n");
    s.pipeline(
        "name: t\nparams:\n  title: { default: Default }\nsources: { src: src }\nsteps:\n  render:\n    uses: {plugins}/wasm32-wasip2/release/markdown.wasm\n    inputs: [src]\n    with: { src: '${{ inputs.src }}', title: '${{ params.title }}' }\n    outputs: ['site/*.html']\n",
    );
    let (code, stdout, stderr) = s.run(&["--json", "--param", "title=From the CLI"]);
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["run-started", "step-started", "step-finished", "run-finished"]);
    let digest = events[2]["outputs"][0]["sha256"].as_str().expect("digest").to_owned();
    let page = std::fs::read_to_string(s.state().join("artifacts/sha256").join(&digest[..2]).join(&digest[2..]))
        .expect("page");
    assert!(page.contains("<title>A page — From the CLI</title>"), "{page}");

    let (code, _, stderr) = s.run(&["--param", "titel=x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown parameter `titel`; did you mean `title`?"), "{stderr}");
}
