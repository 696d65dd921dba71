//! Every hostile guest has its test: a guest nobody runs would be an
//! attack we only think we cover. (wasmtime's test-programs do the same
//! for their guests.)

use crate::lab::repo;

/// The file stems (or match arms) of `dir` that end in `ext`.
fn stems(dir: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(ext).map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// What the attack tests say, all of them.
fn attacks() -> String {
    let dir = repo().join("sandbox-tests/attacks");
    let mut all = String::new();
    for entry in std::fs::read_dir(&dir).expect("attacks").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") && name != "coverage.rs" && name != "lab.rs" {
            all.push_str(&std::fs::read_to_string(entry.path()).expect("read"));
        }
    }
    all
}

#[test]
fn every_hostile_guest_has_a_test() {
    let tests = attacks();
    let mut untested = Vec::new();
    for name in stems("sandbox-tests/guests/commands/src/bin", ".rs") {
        // Named as `lab.guest("NAME")`, `built("NAME")`, or in a list of names.
        if !tests.contains(&format!("\"{name}\"")) {
            untested.push(format!("guests/commands/src/bin/{name}.rs"));
        }
    }
    for name in stems("sandbox-tests/guests/wat", ".wat") {
        if !tests.contains(&format!("wat(\"{name}\")")) && !tests.contains(&format!("\"{name}\"")) {
            untested.push(format!("guests/wat/{name}.wat"));
        }
    }
    // The hostile step plugin runs one attack per `attack:` parameter.
    let step = std::fs::read_to_string(repo().join("sandbox-tests/guests/step/src/lib.rs")).expect("step");
    for arm in step.split("Some(\"").skip(1).filter_map(|rest| rest.split('"').next()) {
        if !tests.contains(&format!("attack: {arm}")) {
            untested.push(format!("guests/step attack `{arm}`"));
        }
    }
    assert!(untested.is_empty(), "hostile guests without a test in sandbox-tests/attacks: {untested:?}");
    assert!(tests.contains("lab.guest(\"hostile_step\")"), "the hostile step plugin has no test");
}
