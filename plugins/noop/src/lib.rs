//! A step that does nothing and succeeds: the baseline for measuring what
//! the engine itself costs per step.

struct Noop;

impl airlock_plugin::Step for Noop {
    fn run(_ctx: airlock_plugin::Context) -> Result<(), String> {
        Ok(())
    }
}

airlock_plugin::export!(Noop);
