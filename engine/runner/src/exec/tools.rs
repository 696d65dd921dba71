//! What a plugin step runs and sees besides its workspace and inputs:
//! its plugin file or fetched tool, and the trees mounted for it.

use super::outputs::outputs_dir;
use super::{Progress, Shared};
use airlock_host::tools::{FetchProgress, Fetched};
use airlock_model::{MountFrom, PluginStep};
use std::path::{Path, PathBuf};
use tokio::sync::OnceCell;

/// A tool fetched once per run, or why it could not be.
pub(crate) type ToolCell = OnceCell<Result<Fetched, String>>;

/// What a step's `uses:` and `mounts:` come to on this host.
pub(crate) struct Resolved {
    /// The module or component to load.
    pub(crate) plugin: PathBuf,
    /// Its sha256, when the tool cache has it on record.
    pub(crate) sha256: Option<String>,
    /// The tool whose module it is, if it is one.
    pub(crate) tool: Option<String>,
    /// `argv[0]`: the step's own, else the tool's name.
    pub(crate) argv0: Option<String>,
    /// The function a core module starts from: the step's `entry:`, else
    /// its tool's.
    pub(crate) entry: Option<String>,
    /// `(guest path, host directory)`, read-only.
    pub(crate) mounts: Vec<(String, PathBuf)>,
}

/// Resolves a step's plugin and mounts, fetching the tools they name.
pub(crate) async fn resolve(shared: &Shared, name: &str, step: &PluginStep) -> Result<Resolved, String> {
    let (plugin, sha256, argv0, mut mounts) = match step.tool() {
        Some(tool) => {
            let fetched = fetch(shared, name, tool).await?;
            let def = &shared.tools[tool];
            let mut mounts = Vec::new();
            for (guest, dir) in &def.mounts {
                let host = fetched.dir(tool, dir).map_err(|e| format!("step `{name}`: {e}"))?;
                mounts.push((guest.clone(), host));
            }
            let Some(module) = fetched.module else {
                return Err(format!(
                    "step `{name}`: tool `{tool}` is an archive of files with no `module:` to run; name the WebAssembly file in it with `module:`, or mount the tool (`mounts: {{ /lib: tool:{tool} }}`) for a step that runs another"
                ));
            };
            (module, fetched.module_sha256, Some(tool.to_owned()), mounts)
        }
        None => (shared.base_dir.join(&step.uses), None, None, Vec::new()),
    };
    for (guest, from) in &step.mounts {
        let host = match MountFrom::parse(from) {
            MountFrom::Tool { tool, dir } => {
                fetch(shared, name, tool).await?.dir(tool, dir).map_err(|e| format!("step `{name}`: {e}"))?
            }
            MountFrom::Tree { name: tree, dir } => {
                // Validation guarantees a source or an upstream step.
                let root = match shared.sources.get(tree) {
                    Some(dir) => dir.clone(),
                    None => outputs_dir(shared, tree),
                };
                inside(&root, dir).map_err(|e| format!("step `{name}`: mount `{guest}`: {e}"))?
            }
        };
        mounts.push((guest.clone(), host));
    }
    let argv0 = step.argv0.clone().or(argv0);
    let entry = step.entry.clone().or_else(|| step.tool().and_then(|t| shared.tools[t].entry.clone()));
    let tool = step.tool().map(str::to_owned);
    Ok(Resolved { plugin, sha256, tool, argv0, entry, mounts })
}

/// `dir` below `root`, which must be a directory there, not a link
/// leading elsewhere.
fn inside(root: &Path, dir: &str) -> Result<PathBuf, String> {
    if !root.is_dir() {
        // An upstream step without outputs leaves no directory.
        std::fs::create_dir_all(root).map_err(|e| format!("cannot lay out {}: {e}", root.display()))?;
    }
    let real_root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let path = root.join(dir);
    match std::fs::canonicalize(&path) {
        Ok(real) if real.starts_with(&real_root) && real.is_dir() => Ok(real),
        Ok(real) if real.starts_with(&real_root) => Err(format!("`{dir}` is a file, not a directory")),
        Ok(_) => Err(format!("`{dir}` leads outside of what it names (a symbolic link?)")),
        Err(_) => Err(format!("there is no directory `{dir}` in it")),
    }
}

/// The tool, fetched into the tool cache unless it is there already;
/// steps sharing a tool wait for one fetch.
async fn fetch(shared: &Shared, step: &str, tool: &str) -> Result<Fetched, String> {
    let cell = shared.fetched.lock().await.entry(tool.to_owned()).or_default().clone();
    cell.get_or_init(|| async {
        let def = shared.tools[tool].clone();
        let cache = shared.tool_cache.clone();
        let name = tool.to_owned();
        let url = &shared.tools[tool].url;
        let job = super::blocking_reporting(
            move |report| cache.fetch(&name, &def, report),
            |p| {
                let (what, done, total) = match p {
                    FetchProgress::Downloading { done, total } => {
                        (format!("fetching tool `{tool}` from {url}"), Some(done), total)
                    }
                    FetchProgress::Unpacking => (format!("unpacking tool `{tool}`"), None, None),
                };
                shared.preparing_slowly(step);
                (shared.observer)(&Progress::StepPreparing { step: step.to_owned(), what, done, total });
            },
        );
        match job.await {
            Ok(r) => r.map_err(|e| format!("step `{step}`: {e}")),
            Err(e) => Err(format!("step `{step}`: fetching tool `{tool}` stopped: {e}")),
        }
    })
    .await
    .clone()
}
