//! The guest SDK for airlock step plugins.
//!
//! A step is a WebAssembly component that exports `airlock:step/run`. This
//! crate generates the bindings once and adds the small conveniences every
//! step wants: looking up parameters, finding the workspace and inputs, and
//! turning I/O errors into messages a person can act on.
//!
//! ```ignore
//! use airlock_plugin::{Context, Step};
//!
//! struct Hello;
//!
//! impl Step for Hello {
//!     fn run(ctx: Context) -> Result<(), String> {
//!         let name = ctx.param("name").unwrap_or("world");
//!         std::fs::write(ctx.workspace().join("hello.txt"), format!("hello, {name}\n"))
//!             .map_err(|e| format!("cannot write hello.txt: {e}"))
//!     }
//! }
//!
//! airlock_plugin::export!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! file in `target/wasm32-wasip2/release/` is the plugin.

use std::path::{Path, PathBuf};

/// The generated bindings of the `airlock:step` world.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "step",
        pub_export_macro: true,
        export_macro_name: "__export_step",
        default_bindings_module: "airlock_plugin::bindings",
    });
}

pub use bindings::airlock::step::types::{Context, Input, Param};
/// The trait a step implements: one `run` function.
pub use bindings::exports::airlock::step::run::Guest as Step;

/// Makes a type implementing [`Step`] the plugin's entry point.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::__export_step!($ty with_types_in $crate::bindings);
    };
}

impl Context {
    /// The value of the `with:` parameter `name`, if the pipeline set it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|p| p.name == name).map(|p| p.value.as_str())
    }

    /// The value of a parameter the step cannot work without.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.param(name).ok_or_else(|| format!("missing parameter `{name}`: set it under `with:` in the pipeline"))
    }

    /// The step's workspace directory.
    pub fn workspace(&self) -> &Path {
        Path::new(&self.workspace)
    }

    /// The directory where the outputs of upstream step (or source) `name`
    /// are mounted read-only.
    pub fn input(&self, name: &str) -> Result<PathBuf, String> {
        self.inputs
            .iter()
            .find(|i| i.step == name)
            .map(|i| PathBuf::from(&i.path))
            .ok_or_else(|| format!("`{name}` is not among this step's inputs: add it to `inputs:`"))
    }

    /// Resolves a path a pipeline wrote in a parameter: absolute guest paths
    /// (`/inputs/render/site`) stay as they are, relative ones are taken from
    /// the workspace.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() { p.to_path_buf() } else { self.workspace().join(p) }
    }
}

/// Asks the host to deploy files of the workspace to `environment` once
/// the step has succeeded. The files must be among the step's declared
/// outputs; the host checks the request against the admin policy, waits
/// for the approvals the environment requires and deploys with
/// credentials the step never sees. Returns the request's id.
///
/// Only steps of a pipeline whose environment grants `deploy` may call
/// this: a plugin that uses it anywhere else is refused before it runs.
pub fn request_deploy(environment: &str, paths: &[&str]) -> Result<String, String> {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    bindings::airlock::step::deploy::request(environment, &paths)
}

/// Adds a description of what was being done to an error, so a failure
/// reads `cannot read /inputs/x/a.md: No such file or directory`.
pub trait Describe<T> {
    /// Maps the error to `what: error`.
    fn describe(self, what: impl FnOnce() -> String) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Describe<T> for Result<T, E> {
    fn describe(self, what: impl FnOnce() -> String) -> Result<T, String> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// Every regular file below `root`, as paths relative to it, sorted so that
/// what a step produces does not depend on directory order. Symlinks are
/// not followed.
pub fn files_below(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).describe(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.describe(|| format!("cannot list {}", dir.display()))?;
            let kind = entry.file_type().describe(|| format!("cannot stat {}", entry.path().display()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}
