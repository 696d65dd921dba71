//! The run API held to its document by schemathesis (issue 12, item 9):
//! a real `airlock serve`, the committed `book/src/reference/openapi.json`,
//! and every check schemathesis has (status codes, content types,
//! response schemas, `Allow` on 405, no 5xx, bodies the document allows
//! are taken and bodies it does not are refused). `.ci/test-setup` installs
//! the pinned schemathesis into `target/tools/schemathesis`.

use crate::server::{People, tick};
use crate::support::{Scratch, Server, repo};
use std::time::{Duration, Instant};

/// How long schemathesis may take: it is bounded, not a soak.
const BOUND: Duration = Duration::from_secs(300);

#[test]
fn the_server_answers_as_its_api_document_says() {
    let tool = std::env::var_os("AIRLOCK_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target/tools/schemathesis/bin/schemathesis"));
    assert!(
        tool.is_file(),
        "schemathesis is not at `{}`; `bash .ci/test-setup` installs it (or set AIRLOCK_SCHEMATHESIS)",
        tool.display()
    );
    let s = Scratch::new();
    let people = People::new(&s);
    let policy = s.file("policy.yaml", format!("{}targets:\n  snaps: {{ dir: published }}\n", people.yaml()));
    let tick = tick();
    s.file("pipes/quick.yaml", format!("name: quick\nsteps:\n  a:\n    uses: {tick}\n    args: [\"1\", \"1\"]\n"));
    s.file(
        "pipes/params.yaml",
        format!(
            "name: params\nparams:\n  count: {{ default: \"2\" }}\nsteps:\n  a:\n    uses: {tick}\n    \
             args: [\"${{{{ params.count }}}}\", \"1\"]\n"
        ),
    );
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let seed = std::env::var("AIRLOCK_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1201".into());
    let mut child = std::process::Command::new(&tool)
        .arg("--config-file")
        .arg(repo().join("engine/cli/tests/all/schemathesis.toml"))
        .arg("run")
        .arg(repo().join("book/src/reference/openapi.json"))
        .args(["--url", &server.url, "--checks", "all", "--max-examples", "50", "--seed", &seed, "--no-color"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", people.admin.token))
        .current_dir(s.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start schemathesis");
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {BOUND:?}:\n{}", reader.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = reader.join().unwrap_or_default();
    assert!(status.success(), "schemathesis found the server and its document apart (seed {seed}):\n{report}");
    assert!(report.contains("passed"), "{report}");
}
