//! Memory and table limits that remember what they refused.

use wasmtime::ResourceLimiter;

/// Table elements a guest may have: enough for any real program's
/// indirect calls, far below what would cost the host memory.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Enforces a step's memory limit. A refused `memory.grow` returns -1 to
/// the guest instead of trapping, so the guest usually fails on its own
/// afterwards with a vague message; recording the refusal lets the engine
/// say "exceeded its memory limit" instead.
#[derive(Debug)]
pub struct Limiter {
    memory: usize,
    /// Bytes of linear memory of all the guest's memories together.
    used: usize,
    /// The size a refused `memory.grow` asked for, if any.
    pub memory_refused: Option<usize>,
    /// The size a refused `table.grow` asked for, if any.
    pub table_refused: Option<usize>,
}

impl Limiter {
    /// A limiter allowing `memory` bytes of linear memory in all.
    pub fn new(memory: u64) -> Self {
        Self {
            memory: usize::try_from(memory).unwrap_or(usize::MAX),
            used: 0,
            memory_refused: None,
            table_refused: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    /// The limit is for all of a guest's memories together: a component
    /// with two memories does not get twice the limit.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            self.memory_refused = Some(desired);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }
}
