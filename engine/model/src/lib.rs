//! The airlock pipeline model: types, validation with spans, and the DAG.
//!
//! This crate is pure: it never touches the disk, the network or a clock,
//! and has no async. What validation needs to know about the outside world
//! (does this plugin file exist?) it asks through [`Lookup`], so the same
//! checks run in the CLI, in the server and in tests.
//!
//! ```
//! use airlock_model::{load, NoLookup};
//!
//! let src = "name: hello\nsteps:\n  greet:\n    uses: greet.wasm\n";
//! let pipeline = load("hello.yaml", src, &NoLookup).expect("valid");
//! assert_eq!(pipeline.steps["greet"].plugin().map(|p| p.uses.as_str()), Some("greet.wasm"));
//! ```
//!
//! Validation reports every problem at once: each [`Diagnostic`] carries the
//! field path (`steps.build.needs[1]`), the position in the file and, when
//! one exists, a hint.

mod dag;
mod diagnostic;
mod expr;
mod parse;
mod pipeline;
pub mod policy;
pub mod schema;
pub mod text;
mod units;
mod yaml;

pub use dag::{Dag, find_cycle};
pub use diagnostic::{Diagnostic, Span};
pub use expr::{Expr, ExprContext, Segment, render, template};
pub use pipeline::{
    DEFAULT_BUILD_ID, DEFAULT_DISK_LIMIT, DEFAULT_FILES_LIMIT, DEFAULT_LOG_LIMIT, DEFAULT_MEMORY_LIMIT,
    DEFAULT_PLUGIN_LIMIT, DEFAULT_TIMEOUT, EnvironmentStep, GUEST_INPUTS, GUEST_TMP, GUEST_WORKSPACE, Limits,
    LimitsWritten, MountFrom, ParamSpec, ParamType, ParamValue, Pipeline, PluginStep, Publish, PullRequestTrigger,
    PushTrigger, RESERVED_GUEST_DIRS, Retries, Source, Step, StepKind, StepSpans, TOOL_PREFIX, Tool, TriggerEvent,
    Triggers, check_mount_path, check_tool_url,
};
pub use units::{format_size, parse_duration, parse_size};

/// What validation asks about the world outside the file.
///
/// Paths are as written in the pipeline, relative to the pipeline file's
/// directory when they are not absolute.
pub trait Lookup {
    /// Whether a plugin file exists at `path`.
    fn plugin_exists(&self, path: &str) -> bool;
    /// Whether a source directory exists at `path`.
    fn dir_exists(&self, path: &str) -> bool;
    /// Where the paths of the pipeline start, said in the hint when a
    /// plugin or source is not found, if not beside the pipeline file.
    fn paths_hint(&self) -> Option<&'static str> {
        None
    }
    /// Whether the admin policy has a publish target `name`: `Ok`, or an
    /// error saying why not (no policy, or which targets there are).
    fn publish_target(&self, name: &str) -> Result<(), String> {
        let _ = name;
        Ok(())
    }
    /// Whether the admin policy has an environment `name` that the
    /// pipeline `pipeline` may use: `Ok`, or an error saying why not.
    fn environment(&self, name: &str, pipeline: &str) -> Result<(), String> {
        let _ = (name, pipeline);
        Ok(())
    }
}

/// A [`Lookup`] that answers yes to everything: for checks that only look
/// at the file itself.
pub struct NoLookup;

impl Lookup for NoLookup {
    fn plugin_exists(&self, _: &str) -> bool {
        true
    }
    fn dir_exists(&self, _: &str) -> bool {
        true
    }
}

/// Parses and validates a pipeline file, reporting every error found.
///
/// `file` is used only in diagnostics. On failure the diagnostics are in
/// file order.
pub fn load(file: &str, src: &str, lookup: &dyn Lookup) -> Result<Pipeline, Vec<Diagnostic>> {
    let (pipeline, mut diagnostics) = parse::parse(file, src, lookup);
    diagnostics.sort_by_key(|d| d.span.map(|s| (s.line, s.col)).unwrap_or((0, 0)));
    match pipeline {
        Some(p) if diagnostics.is_empty() => Ok(p),
        _ => Err(diagnostics),
    }
}
