use serde::Serialize;
use std::fmt;

/// A position in a pipeline file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Byte offset where the span starts.
    pub start: usize,
    /// Byte offset where it ends; equal to `start` when only a point is known.
    pub end: usize,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as given to [`crate::load`].
    pub file: String,
    /// A short stable code: `unknown-key`, `cycle`, `bad-duration`, …
    pub code: &'static str,
    /// What is wrong, lowercase, with values in backticks.
    pub message: String,
    /// The field path, e.g. `steps.build.needs[1]`; empty for the whole file.
    pub path: String,
    /// Where it is, when known.
    pub span: Option<Span>,
    /// What to do about it, when there is something to say.
    pub hint: Option<String>,
}

/// Codes of diagnostics whose span is (or holds) a secret: whoever shows
/// the source around them must hide those bytes.
pub const SECRET_CODES: &[&str] = &["inline-secret", "secret-in-url"];

impl Diagnostic {
    /// Whether the text under this diagnostic's span may be a secret.
    pub fn spans_a_secret(&self) -> bool {
        SECRET_CODES.contains(&self.code)
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: message (at path)` and the hint on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Some(s) => write!(f, "{}:{}:{}: {}", self.file, s.line, s.col, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if !self.path.is_empty() {
            write!(f, " (at `{}`)", self.path)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}
