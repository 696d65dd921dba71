//! How steps fail, and what the run does then.

use crate::support::{Scratch, airlock, interrupt_at, output};
use std::time::{Duration, Instant};

fn wasm(s: &Scratch, name: &str, wat: &str) {
    s.file(name, wat::parse_str(wat).expect("valid wat"));
}

const SPIN: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;

#[test]
fn a_failure_skips_dependants_while_independent_branches_finish() {
    let s = Scratch::new();
    s.file("data/bad.json", "{ \"unterminated\": ");
    s.pipeline(
        "name: branches
sources: { data: data }
steps:
  lint:
    uses: {plugins}/wasm32-wasip2/release/lint.wasm
    inputs: [data]
    with: { dir: '${{ inputs.data }}' }
  after-lint:
    uses: {plugins}/wasm32-wasip2/release/noop.wasm
    needs: [lint]
  last:
    uses: {plugins}/wasm32-wasip2/release/noop.wasm
    needs: [after-lint]
  independent:
    uses: {plugins}/wasm32-wasip2/release/noop.wasm
",
    );
    let (code, _, stderr) = s.run(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(s.step("lint")["state"], "failed");
    assert_eq!(s.step("lint")["reason"], "step `lint` failed: 1 of 1 file(s) do not parse; see the log");
    assert_eq!(s.step("after-lint")["state"], "skipped");
    assert_eq!(s.step("last")["state"], "skipped");
    assert_eq!(s.step("last")["reason"], "`lint`, which it needs, failed");
    assert_eq!(s.step("independent")["state"], "succeeded");
    assert_eq!(s.show()["run"]["state"], "failed");
    let (_, logs, _) = output(airlock(&s.state()).args(["logs", "last", "lint"]));
    assert!(logs.contains("bad.json:1:"), "{logs}");
}

#[test]
fn a_step_past_its_timeout_is_stopped_and_named() {
    let s = Scratch::new();
    wasm(&s, "spin.wasm", SPIN);
    s.pipeline("name: t\nsteps:\n  spin:\n    uses: spin.wasm\n    timeout: 300ms\n");
    let started = Instant::now();
    let (code, _, stderr) = s.run(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.step("spin")["reason"], "step `spin` ran past its 300ms timeout");
}

#[test]
fn a_step_over_its_memory_limit_is_named() {
    let s = Scratch::new();
    wasm(
        &s,
        "grow.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (if (i32.eq (memory.grow (i32.const 4096)) (i32.const -1)) (then unreachable))))"#,
    );
    s.pipeline("name: t\nsteps:\n  grow:\n    uses: grow.wasm\n    limits: { memory: 16MiB }\n");
    let (code, _, _) = s.run(&[]);
    assert_eq!(code, 1);
    assert_eq!(s.step("grow")["reason"], "step `grow` exceeded its 16 MiB memory limit");
}

#[test]
fn fuel_runs_out() {
    let s = Scratch::new();
    wasm(&s, "spin.wasm", SPIN);
    s.pipeline("name: t\nsteps:\n  spin:\n    uses: spin.wasm\n    limits: { fuel: 100000 }\n");
    let (code, _, _) = s.run(&[]);
    assert_eq!(code, 1);
    assert_eq!(s.step("spin")["reason"], "step `spin` used up its fuel of 100000 instructions");
}

#[test]
fn retries_are_honoured_and_recorded() {
    let s = Scratch::new();
    wasm(&s, "fail.wasm", r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#);
    s.pipeline("name: t\nsteps:\n  flaky:\n    uses: fail.wasm\n    retries: { count: 2, backoff: 10ms }\n");
    let (code, _, stderr) = s.run(&[]);
    assert_eq!(code, 1);
    assert_eq!(stderr.matches("retrying in").count(), 2, "{stderr}");
    let step = s.step("flaky");
    assert_eq!(step["attempts"], 3);
    assert!(step["reason"].as_str().is_some_and(|r| r.starts_with("step `flaky` crashed")), "{step}");
    let events = s.show()["events"].clone();
    let states: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["step"] == "flaky")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(states, ["running", "retrying", "running", "retrying", "running", "failed"]);
}

#[test]
fn a_plugin_importing_sockets_is_refused_before_it_runs() {
    let s = Scratch::new();
    wasm(&s, "net.wasm", r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#);
    s.pipeline(
        "name: t\nsteps:\n  net:\n    uses: net.wasm\n  fine:\n    uses: {plugins}/wasm32-wasip2/release/noop.wasm\n",
    );
    let (code, _, _) = s.run(&[]);
    assert_eq!(code, 1);
    let step = s.step("net");
    assert_eq!(step["reason"], "plugin `net.wasm` imports `wasi:sockets/tcp@0.2.0`, which this step is not granted");
    assert_eq!(step["attempts"], 0, "it never started");
    assert_eq!(s.step("fine")["state"], "succeeded");
}

#[test]
fn ctrl_c_cancels_the_run_and_records_it() {
    let s = Scratch::new();
    wasm(&s, "spin.wasm", SPIN);
    s.pipeline("name: t\nsteps:\n  spin:\n    uses: spin.wasm\n    timeout: 5m\n  later:\n    uses: spin.wasm\n    needs: [spin]\n");
    let mut cmd = airlock(&s.state());
    cmd.arg("run").arg(s.path().join("pipeline.yaml")).arg("--json");
    // Once the step is running, interrupt like a terminal would.
    let (status, took) = interrupt_at(cmd, "step-started");
    assert!(took < Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    let show = s.show();
    assert_eq!(show["run"]["state"], "cancelled");
    assert_eq!(s.step("spin")["state"], "cancelled");
    assert_eq!(s.step("later")["state"], "cancelled");
}
