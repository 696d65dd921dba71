//! What people see, pinned: the exit code, stdout and stderr of `airlock
//! run`, `show`, `run --server` and a policy with mistakes, as insta
//! snapshots in `snapshots/` beside this file, with run ids, times and
//! scratch paths filtered out. A deliberate change is reviewed as the
//! diff of its snapshot (`INSTA_UPDATE=always` rewrites them; CI never
//! does).

use crate::server::People;
use crate::support::{Scratch, Server, airlock, output, repo};

/// Exit code, stdout and stderr, as one text.
fn shown(code: i32, stdout: &str, stderr: &str) -> String {
    format!("exit code: {code}\n--- stdout\n{stdout}--- stderr\n{stderr}")
}

/// Runs `check` with what varies from run to run filtered out.
fn filtered(scratch: &std::path::Path, check: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(repo().join("engine/cli/tests/all/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(&regex_escape(&scratch.display().to_string()), "[SCRATCH]");
    settings.add_filter(r"\d{8}-\d{6}-[0-9a-f]{4}", "[RUN]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", "[DATE]");
    settings.add_filter(&regex_escape(&repo().display().to_string()), "[REPO]");
    // A time in a column keeps one space before it, whatever its width.
    settings.add_filter(r" +\d+(\.\d+)?(ms|s|µs)\b", " [TIME]");
    settings.add_filter(r"\b\d+(\.\d+)?(ms|s|µs)\b", "[TIME]");
    settings.add_filter(r"http://127\.0\.0\.1:\d+", "http://[SERVER]");
    settings.bind(check);
}

fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[test]
fn a_local_run_and_its_record() {
    let s = Scratch::new();
    crate::support::plugins();
    let site = repo().join("pipelines/site.yaml");
    let (code, stdout, stderr) = output(airlock(&s.state()).arg("run").arg(&site).args(["--jobs", "1"]));
    filtered(s.path(), || insta::assert_snapshot!("run_site", shown(code, &stdout, &stderr)));
    let (code, stdout, stderr) = output(airlock(&s.state()).args(["show", "last"]));
    filtered(s.path(), || insta::assert_snapshot!("show_site", shown(code, &stdout, &stderr)));
    let (code, stdout, stderr) = output(airlock(&s.state()).args(["show", "nosuchrun"]));
    filtered(s.path(), || insta::assert_snapshot!("show_unknown", shown(code, &stdout, &stderr)));
}

#[test]
fn a_policy_with_mistakes_never_shows_its_secrets() {
    let s = Scratch::new();
    let policy = s.file(
        "policy.yaml",
        "users:\n  ada: { token_sha256: nope, roles: [admin] }\n\
         environments:\n  prod:\n    provider: { type: http, url: 'https://deployer:hunter2@deploy.example/hook' }\n    \
         pipelines: ['*']\n    credentials:\n      key: s3cr3t-v4lue\n    approvals: { required: 2, groups: [ops] }\n",
    );
    let (code, stdout, stderr) = output(airlock(&s.state()).arg("--policy").arg(&policy).args(["env", "check"]));
    assert!(!stderr.contains("hunter2") && !stderr.contains("s3cr3t-v4lue"), "{stderr}");
    filtered(s.path(), || insta::assert_snapshot!("policy_mistakes", shown(code, &stdout, &stderr)));
}

#[test]
fn a_run_on_a_server() {
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", people.yaml());
    let tick = crate::server::tick();
    s.file(
        "pipes/two.yaml",
        format!(
            "name: two\nsteps:\n  a:\n    uses: {tick}\n    args: [\"8\", \"100\", out.txt]\n    outputs: [out.txt]\n  \
             b:\n    needs: [a]\n    uses: {tick}\n    args: [\"12\", \"100\", no/such/dir/out.txt]\n"
        ),
    );
    // `a` runs for most of a second and `b` for more than one before it
    // fails (it cannot write its output): the client following the run
    // looks every half second, and sees each running however slow its
    // answers are under load (with `b` at 0.4 s, a look once came late).
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (code, stdout, stderr) =
        output(airlock(&s.path().join("client")).env("AIRLOCK_USER_TOKEN", &people.runner.token).args([
            "run",
            "--server",
            &server.url,
            "two.yaml",
        ]));
    filtered(s.path(), || insta::assert_snapshot!("run_on_server", shown(code, &stdout, &stderr)));
}
