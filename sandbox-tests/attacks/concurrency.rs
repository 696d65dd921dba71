//! Many hostile steps at once, beside honest ones.

use crate::lab::Lab;
use std::fmt::Write as _;

/// The attackers, by guest and the YAML lines that configure them.
const ATTACKERS: &[(&str, &str)] = &[
    ("spin", "timeout: 5s"),
    ("sleep-forever", "timeout: 5s"),
    ("host-call-loop", "timeout: 5s"),
    ("grow-memory", "limits: { memory: 64MiB }"),
    ("recurse", ""),
    ("flood-stdout", "limits: { log: 64KiB }"),
    ("endless-file", "limits: { disk: 16MiB }"),
    ("many-files", "limits: { files: 500 }"),
    ("read-host-files", ""),
    ("write-input", ""),
];

#[test]
fn attack_fifty_hostile_steps_beside_an_honest_one() {
    let lab = Lab::new();
    let mut steps = String::new();
    for i in 0..50 {
        let (name, config) = ATTACKERS[i % ATTACKERS.len()];
        let uses = lab.guest(name);
        let _ = writeln!(steps, "  attack-{i:02}:\n    uses: {uses}\n    inputs: [src]");
        for line in config.lines() {
            let _ = writeln!(steps, "    {line}");
        }
    }
    lab.pipeline(&steps);
    // Every step at once: the honest ones share the two cores with fifty
    // attackers from the start.
    let r = lab.run_pipeline(&["--jobs", "64"]);
    r.assert_engine_survived();
    r.assert_outside_unchanged();
    r.assert_no_canary();
    for i in 0..50 {
        let step = r.step(&format!("attack-{i:02}"));
        assert_eq!(step["state"], "failed", "{step}");
    }
    let honest = r.step("beside");
    let ms = honest["ended_ms"].as_u64().expect("ended") - honest["started_ms"].as_u64().expect("started");
    assert!(ms < 20_000, "the honest step took {ms} ms");
}
