//! Plugin files: any bytes are loaded or refused with a reason, never a
//! panic; whatever loads is a module or component of a kind airlock runs.

#![no_main]

use airlock_sandbox::Sandbox;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(None).expect("engine"))
}

fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = sandbox().load_bytes(bytes, "fuzz.wasm", false) {
        assert!(e.to_string().contains("fuzz.wasm"), "the reason names the plugin: {e}");
    }
});
