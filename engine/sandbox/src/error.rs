//! Why a plugin could not be loaded.

use std::path::{Path, PathBuf};

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The plugin file could not be read.
    #[error("cannot read plugin `{path}`: {source}")]
    Read {
        /// The plugin's path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The plugin file is larger than the step may load.
    #[error(
        "plugin `{path}` is {}, over the {} limit for plugins; an admin can raise it with `limits: {{ plugin: SIZE }}` of the environment in the policy",
        airlock_model::format_size(*size),
        airlock_model::format_size(*limit)
    )]
    TooLarge {
        /// The plugin's path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not a WebAssembly module or component.
    #[error("plugin `{path}` is not a WebAssembly module or component")]
    NotWasm {
        /// The plugin's path.
        path: PathBuf,
    },
    /// wasmtime refused to compile it.
    #[error("plugin `{path}` does not compile: {message}")]
    Compile {
        /// The plugin's path.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// It imports something the step is not granted.
    #[error(
        "plugin `{path}` imports {}, which this step is not granted{}",
        imports.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", "),
        if *js_host { "; it is built for a JavaScript host (Emscripten or wasm-bindgen): use a WASI command build of the tool (wasm32-wasip1)" } else { "" }
    )]
    NotGranted {
        /// The plugin's path.
        path: PathBuf,
        /// Every import not granted, as the plugin names it.
        imports: Vec<String>,
        /// Whether the imports are those of a module built for a
        /// JavaScript host.
        js_host: bool,
    },
    /// It uses WebAssembly features airlock's engine does not enable.
    #[error("plugin `{path}` uses WebAssembly that airlock does not run: {message}{}", unsupported_hint(message))]
    Unsupported {
        /// The plugin's path.
        path: PathBuf,
        /// The validator's reason, with the offset.
        message: String,
    },
    /// It asks for more memories or tables than a step may have.
    #[error("plugin `{path}` needs more than a step may have: {detail}")]
    TooMuch {
        /// The plugin's path.
        path: PathBuf,
        /// What it asks for, and the limit.
        detail: String,
    },
    /// A granted interface is imported with other types than airlock's.
    #[error("plugin `{path}` cannot be linked: {message}")]
    Link {
        /// The plugin's path.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// It exports nothing airlock knows how to run.
    #[error(
        "plugin `{path}` has nothing to run: it exports neither `airlock:step/run` nor `wasi:cli/run`, nor a function to start from (`_start`)"
    )]
    NothingToRun {
        /// The plugin's path.
        path: PathBuf,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

impl SandboxError {
    /// The same error about the plugin at `path`.
    pub(crate) fn with_path(mut self, to: &Path) -> Self {
        match &mut self {
            Self::Read { path, .. }
            | Self::TooLarge { path, .. }
            | Self::NotWasm { path }
            | Self::Compile { path, .. }
            | Self::Unsupported { path, .. }
            | Self::NotGranted { path, .. }
            | Self::TooMuch { path, .. }
            | Self::Link { path, .. }
            | Self::NothingToRun { path } => *path = to.to_owned(),
            Self::Engine(_) => {}
        }
        self
    }
}

/// What to do about a feature the engine does not enable.
fn unsupported_hint(message: &str) -> &'static str {
    if message.contains("legacy_exceptions") || message.contains("legacy exceptions") {
        "; it is built with the legacy exception-handling proposal (`try`/`catch`), which wasmtime does not run: rebuild it with standard exception handling (for LLVM, `-mllvm -wasm-use-legacy-eh=false`)"
    } else {
        "; the security page of the book lists the proposals airlock enables"
    }
}

/// Whether a validator's message is about a feature left off, rather
/// than about bytes that are wrong.
pub(crate) fn is_feature_error(message: &str) -> bool {
    ["feature", "proposal", "not enabled", "not supported"].iter().any(|w| message.contains(w))
}
