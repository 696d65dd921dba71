//! Big tools run in a step process of their own, compiled without
//! deadline checks: the host keeps every limit from outside. These tests
//! lower the size bound (`AIRLOCK_STEP_PROCESS_MIN_SIZE`) so that small
//! hand-written modules take that path.

use crate::support::{Scratch, airlock, output};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEP_PROCESS_ARG: &str = "__airlock-step-process";

fn wasm(s: &Scratch, name: &str, wat: &str) {
    s.file(name, wat::parse_str(wat).expect("valid wat"));
}

/// `airlock` with every core module run in a step process.
fn in_processes(s: &Scratch) -> Command {
    let mut cmd = airlock(&s.state());
    cmd.env("AIRLOCK_STEP_PROCESS_MIN_SIZE", "1B");
    cmd
}

/// Step processes started by `pid`: its children that are one.
fn step_processes_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return found };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).any(|arg| arg == STEP_PROCESS_ARG.as_bytes()) {
                found.push(child);
            }
        }
    }
    found
}

/// Output, exit statuses, traps and memory are what they are in process;
/// the deadline is kept by killing the process.
#[test]
fn a_step_in_its_own_process_keeps_its_limits_and_says_how_it_ended() {
    let s = Scratch::new();
    wasm(
        &s,
        "talk.wasm",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "said from a step process\n")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 25))
               (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
               (call $exit (i32.const 3))))"#,
    );
    wasm(&s, "spin.wasm", r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#);
    wasm(
        &s,
        "grow.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (if (i32.eq (memory.grow (i32.const 4096)) (i32.const -1)) (then unreachable))))"#,
    );
    wasm(
        &s,
        "crash.wasm",
        r#"(module (memory (export "memory") 1) (func $deep (unreachable)) (func (export "_start") (call $deep)))"#,
    );
    s.pipeline(
        "name: t\nsteps:\n  talk:\n    uses: talk.wasm\n  spin:\n    uses: spin.wasm\n    timeout: 500ms\n  grow:\n    uses: grow.wasm\n    limits: { memory: 16MiB }\n  crash:\n    uses: crash.wasm\n",
    );
    let started = Instant::now();
    let (code, _, err) = output(in_processes(&s).arg("run").arg(s.path().join("pipeline.yaml")));
    assert_eq!(code, 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(s.step("talk")["reason"], "step `talk` exited with status 3: said from a step process");
    let (_, log, _) = output(airlock(&s.state()).args(["logs", "last", "talk"]));
    assert!(log.contains("said from a step process"), "{log}");
    assert_eq!(s.step("spin")["reason"], "step `spin` ran past its 500ms timeout");
    assert_eq!(s.step("grow")["reason"], "step `grow` exceeded its 16 MiB memory limit");
    let crash = s.step("crash")["reason"].as_str().expect("reason").to_owned();
    assert!(crash.contains("wasm `unreachable` executed"), "{crash}");
    let (_, log, _) = output(airlock(&s.state()).args(["logs", "last", "crash"]));
    assert!(log.contains("wasm backtrace:"), "{log}");
}

/// A step process has no environment (the engine's canary is not in it)
/// and ends with the engine: after Ctrl-C, and even when the engine is
/// killed outright, none is left running. On the tool's first use it
/// maps the code from the engine's sealed memory file (through `/proc`,
/// as the host hands it over); the second time, from the cache entry
/// written behind it.
#[test]
fn a_step_process_sees_no_host_environment_and_dies_with_the_engine() {
    let s = Scratch::new();
    wasm(&s, "spin.wasm", r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#);
    s.pipeline("name: t\nsteps:\n  spin:\n    uses: spin.wasm\n    timeout: 5m\n");
    for signal in ["-INT", "-KILL"] {
        let mut engine = in_processes(&s)
            .env("AIRLOCK_TEST_CANARY", "canary-3f9a1c-must-not-leak")
            .arg("run")
            .arg(s.path().join("pipeline.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let worker = loop {
            if let Some(&pid) = step_processes_of(engine.id()).first() {
                break pid;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no step process started");
            std::thread::sleep(Duration::from_millis(20));
        };
        let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("environ");
        assert!(environ.is_empty(), "the step process has an environment: {}", String::from_utf8_lossy(&environ));
        let code = if signal == "-INT" { "/memfd:airlock-compiled-spin.wasm" } else { ".cwasm" };
        loop {
            let maps = std::fs::read_to_string(format!("/proc/{worker}/maps")).unwrap_or_default();
            if maps.contains(code) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the step process maps no {code}:\n{maps}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let kill = Command::new("kill").arg(signal).arg(engine.id().to_string()).status().expect("kill");
        assert!(kill.success());
        engine.wait().expect("wait");
        let gone = Instant::now();
        while std::path::Path::new(&format!("/proc/{worker}")).exists()
            && std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|st| !st.contains(") Z "))
        {
            assert!(gone.elapsed() < Duration::from_secs(10), "the step process outlived the engine ({signal})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
