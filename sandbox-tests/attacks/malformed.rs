//! Plugins that are not what they claim: refused before they start, with
//! the reason.

use crate::lab::{Lab, built};

/// Runs the attack with the plugin at `path` (relative to the lab) and
/// checks it was refused before it started.
fn refused(lab: &Lab, path: &str, reason: &str) {
    let r = lab.attack(&format!("uses: {path}"), &[]);
    r.assert_contained(reason);
    assert_eq!(r.step("attack")["attempts"], 0, "the plugin never started");
}

#[test]
fn attack_a_shell_script_named_wasm() {
    let lab = Lab::new();
    lab.file("not-wasm.wasm", "#!/bin/sh\ncat /etc/passwd\n");
    refused(&lab, "not-wasm.wasm", "plugin `not-wasm.wasm` is not a WebAssembly module or component");
}

#[test]
fn attack_a_truncated_plugin() {
    let lab = Lab::new();
    let whole = std::fs::read(built("spin")).expect("guest");
    lab.file("truncated.wasm", &whole[..whole.len() / 2]);
    let r = lab.attack("uses: truncated.wasm", &[]);
    let reason = r.reason().to_owned();
    assert!(reason.starts_with("plugin `truncated.wasm` does not compile: "), "{reason}");
    r.assert_contained(&reason);
}

#[test]
fn attack_a_huge_plugin() {
    let lab = Lab::new();
    // A valid module header and one custom section of 513 MiB, past the
    // default limit of 512 MiB (a sparse file: it takes no disk).
    let mut bytes = b"\0asm\x01\0\0\0\0".to_vec();
    let payload: u64 = 513 << 20;
    let mut len = payload + 2;
    while len >= 0x80 {
        bytes.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend_from_slice(b"\x01x");
    let path = lab.file("huge.wasm", &bytes);
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(bytes.len() as u64 + payload).expect("grow");
    refused(
        &lab,
        "huge.wasm",
        "plugin `huge.wasm` is 513.0 MiB, over the 512 MiB limit for plugins; an admin can raise it with `limits: { plugin: SIZE }` of the environment in the policy",
    );
}

#[test]
fn attack_import_an_interface_nobody_grants() {
    let lab = Lab::new();
    lab.wat("unknown-interface");
    refused(
        &lab,
        "unknown-interface.wasm",
        "plugin `unknown-interface.wasm` imports `acme:vault/secrets@1.0.0`, which this step is not granted",
    );
}

#[test]
fn attack_import_a_granted_interface_with_another_signature() {
    let lab = Lab::new();
    lab.wat("wrong-signature");
    refused(
        &lab,
        "wrong-signature.wasm",
        "plugin `wrong-signature.wasm` cannot be linked: component imports instance `wasi:cli/environment@0.2.0`, \
         but a matching implementation was not found in the linker: instance export `get-environment` has the \
         wrong type: type mismatch with parameters: expected 0-tuple, found 1-tuple",
    );
}

#[test]
fn attack_a_module_with_nothing_to_run() {
    let lab = Lab::new();
    lab.wat("nothing-to-run");
    refused(
        &lab,
        "nothing-to-run.wasm",
        "plugin `nothing-to-run.wasm` has nothing to run: it exports neither `airlock:step/run` nor `wasi:cli/run`, nor a function to start from (`_start`)",
    );
}

#[test]
fn attack_a_component_with_nothing_to_run() {
    let lab = Lab::new();
    lab.wat("empty-component");
    refused(
        &lab,
        "empty-component.wasm",
        "plugin `empty-component.wasm` has nothing to run: it exports neither `airlock:step/run` nor `wasi:cli/run`, nor a function to start from (`_start`)",
    );
}
