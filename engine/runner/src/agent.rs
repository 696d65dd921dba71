//! Steps on agents: what a server hands an `airlock agent` to run a
//! sandboxed step on another machine ([`JobSpec`]), what the agent sends
//! back ([`JobResult`]), and how the agent runs it ([`run_job`]).
//!
//! A job names everything by digest: the plugin, and every file of every
//! input. The agent fetches what it lacks from the server, checks each
//! against its digest, runs the step in the same sandbox as a server
//! does, takes the outputs out of the workspace as a server does, and
//! uploads them; the server checks every upload against its digest
//! before it takes the result. An agent never holds a credential, a
//! publish token or the database's address: what needs trust (publishing,
//! deploying, the step cache) stays on the server.

use airlock_host::{ArtifactStore, ExtractLimits, extract};
use airlock_sandbox::{Failure, HostGrants, HostInterface, Invocation, Quota, Sandbox};
use airlock_store::OutputRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What an agent needs to run one attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The plugin's sha256 and size.
    pub plugin: OutputRecord,
    /// How the pipeline names the plugin, for messages.
    pub uses: String,
    /// Whether it is compiled with fuel metering.
    pub fuel_metered: bool,
    /// The host interfaces the step's environment grants.
    pub interfaces: Vec<String>,
    /// The largest plugin the environment admits.
    pub max_plugin_bytes: u64,
    /// `argv[0]` of a command program.
    pub argv0: Option<String>,
    /// The function a core module starts from.
    pub entry: Option<String>,
    /// `with:` parameters.
    pub params: Vec<(String, String)>,
    /// `args:` of a command program.
    pub args: Vec<String>,
    /// The guest's environment.
    pub env: Vec<(String, String)>,
    /// The run's id and the step's name, as a step plugin is told.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// Linear memory limit, bytes.
    pub memory: u64,
    /// Bytes of log kept.
    pub log_limit: u64,
    /// Instruction budget.
    pub fuel: Option<u64>,
    /// Wall-clock limit, milliseconds.
    pub timeout_ms: u64,
    /// Bytes the workspace may hold.
    pub disk: u64,
    /// Files and directories the workspace may hold.
    pub files: u64,
    /// The seed of a deterministic step (hex).
    pub seed: Option<String>,
    /// The inputs, each a tree of files by digest, at `/inputs/NAME`.
    pub inputs: Vec<JobInput>,
    /// The trees mounted read-only at guest paths (a tool's files, a
    /// source, an upstream step's outputs), each by digest.
    #[serde(default)]
    pub mounts: Vec<JobMount>,
    /// Glob patterns of the outputs.
    pub outputs: Vec<String>,
}

/// One input of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    /// Its name under `/inputs`.
    pub name: String,
    /// Its files.
    pub files: Vec<OutputRecord>,
}

/// A tree mounted for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMount {
    /// The absolute guest path it is mounted at.
    pub guest: String,
    /// Its files.
    pub files: Vec<OutputRecord>,
}

impl JobSpec {
    /// Every digest the job names: what an agent may fetch for it.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.plugin.sha256.as_str())
            .chain(self.inputs.iter().flat_map(|i| i.files.iter().map(|f| f.sha256.as_str())))
            .chain(self.mounts.iter().flat_map(|m| m.files.iter().map(|f| f.sha256.as_str())))
    }
}

/// What an agent reports of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Why the attempt failed, in words; None when it succeeded.
    pub failure: Option<String>,
    /// The guest's output as kept (base64).
    pub log: String,
    /// Bytes the guest wrote in all.
    pub log_written: u64,
    /// The outputs, uploaded to the server before the result.
    pub outputs: Vec<OutputRecord>,
    /// Deployments the step asked for: (environment, workspace paths).
    pub deploy_requests: Vec<(String, Vec<String>)>,
}

/// Plugins an agent has loaded, by digest, metering and grants: a step
/// of a plugin run before starts without loading it again.
pub type Plugins = std::sync::Mutex<std::collections::HashMap<(String, bool, Vec<String>), airlock_sandbox::Plugin>>;

/// Runs a job in `dir`, which is absent or holds only empty `workspace`,
/// `tmp` and `inputs` directories, with every file it names already in
/// `blobs`; its outputs go into `blobs` too.
pub async fn run_job(
    sandbox: &Arc<Sandbox>,
    plugins: &Plugins,
    dir: &Path,
    blobs: &ArtifactStore,
    spec: &JobSpec,
) -> JobResult {
    let failed = |failure: String| JobResult {
        failure: Some(failure),
        log: String::new(),
        log_written: 0,
        outputs: Vec::new(),
        deploy_requests: Vec::new(),
    };
    let name = spec.step.as_str();
    let (workspace, scratch, inputs_root) = (dir.join("workspace"), dir.join("tmp"), dir.join("inputs"));
    let laid_out = {
        let (dir, blobs, spec) = (dir.to_owned(), blobs.clone(), spec.clone());
        tokio::task::spawn_blocking(move || lay_out_job(&dir, &blobs, &spec)).await
    };
    let (inputs, mounts) = match laid_out.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(laid_out) => laid_out,
        Err(e) => return failed(format!("step `{name}`: cannot lay out its inputs on the agent: {e}")),
    };
    let key = (spec.plugin.sha256.clone(), spec.fuel_metered, spec.interfaces.clone());
    let known = plugins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
    let plugin = match known {
        Some(p) => p,
        None => {
            let grants = HostGrants::of(spec.interfaces.iter().filter_map(|n| HostInterface::from_name(n)));
            let path = match blobs.path(&spec.plugin.sha256) {
                Ok(p) => p,
                Err(e) => return failed(format!("plugin `{}`: {e}", spec.uses)),
            };
            let loaded = {
                let (sandbox, fuel, max) = (sandbox.clone(), spec.fuel_metered, spec.max_plugin_bytes);
                // The blob is named by its sha256, checked when it came:
                // a plugin compiled before is loaded without reading it.
                let sha256 = spec.plugin.sha256.clone();
                tokio::task::spawn_blocking(move || {
                    sandbox.load_reporting(&path, Some(&sha256), fuel, &grants, max, &|_| {})
                })
                .await
            };
            match loaded.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                Ok(p) => {
                    plugins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, p.clone());
                    p
                }
                Err(e) => return failed(format!("plugin `{}` could not be loaded: {e}", spec.uses)),
            }
        }
    };
    let mut inv = Invocation::new(workspace.clone());
    inv.inputs = inputs;
    inv.mounts = mounts;
    inv.inputs_root = Some(inputs_root);
    inv.tmp = Some(scratch);
    inv.argv0 = spec.argv0.clone();
    inv.entry = spec.entry.clone();
    inv.params = spec.params.clone();
    inv.args = spec.args.clone();
    inv.env = spec.env.clone();
    inv.run_id = spec.run_id.clone();
    inv.step = spec.step.clone();
    inv.memory = spec.memory;
    inv.log_limit = spec.log_limit;
    inv.fuel = spec.fuel;
    let timeout = Duration::from_millis(spec.timeout_ms);
    inv.timeout = timeout;
    inv.quota = Quota { bytes: spec.disk, entries: spec.files };
    inv.seed = spec.seed.as_deref().and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok());
    let outcome = sandbox.run(&plugin, inv).await;
    use base64::Engine as _;
    let log = base64::engine::general_purpose::STANDARD.encode(&outcome.log);
    let deploy_requests = outcome.deploy_requests.into_iter().map(|r| (r.environment, r.paths)).collect();
    let failure = match outcome.result {
        Ok(()) => None,
        Err(failure) => {
            let said = matches!(failure, Failure::Exit(_)).then(|| crate::exec::last_lines(&outcome.log)).flatten();
            let described = crate::exec::describe(name, timeout, &failure);
            Some(match said {
                Some(lines) => format!("{described}: {lines}"),
                None => described,
            })
        }
    };
    let mut result = JobResult { failure, log, log_written: outcome.log_written, outputs: Vec::new(), deploy_requests };
    if result.failure.is_none() && !spec.outputs.is_empty() {
        let (ws, patterns, blobs) = (workspace, spec.outputs.clone(), blobs.clone());
        let extracted =
            tokio::task::spawn_blocking(move || extract(&ws, &patterns, &ExtractLimits::default(), &blobs)).await;
        match extracted.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            Ok(outputs) => {
                result.outputs = outputs
                    .into_iter()
                    .map(|o| OutputRecord { path: o.path, sha256: o.sha256, size: o.size })
                    .collect();
            }
            Err(e) => result.failure = Some(format!("step `{name}`: {e}")),
        }
    }
    result
}

/// What a job's invocation is given: its inputs by name and its mounts
/// by guest path, each a directory of the agent's.
type LaidOut = (Vec<(String, std::path::PathBuf)>, Vec<(String, std::path::PathBuf)>);

/// Makes `dir` (absent, or holding only empty directories of a job
/// before) hold an empty workspace and scratch directory, each input's
/// files (linked from `blobs`) under `inputs/NAME`, and each mount's
/// under `mounts/N`. Answers the inputs and the mounts for the
/// invocation.
fn lay_out_job(dir: &Path, blobs: &ArtifactStore, spec: &JobSpec) -> Result<LaidOut, String> {
    for sub in ["workspace", "tmp", "inputs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut inputs = Vec::new();
    for input in &spec.inputs {
        let to = dir.join("inputs").join(&input.name);
        link_out(blobs, &to, &input.files)?;
        inputs.push((input.name.clone(), to));
    }
    let mut mounts = Vec::new();
    for (i, mount) in spec.mounts.iter().enumerate() {
        let to = dir.join("mounts").join(i.to_string());
        link_out(blobs, &to, &mount.files)?;
        mounts.push((mount.guest.clone(), to));
    }
    Ok((inputs, mounts))
}

/// Lays `files` out under `to` (made empty) as links to the agent's
/// blobs, which were checked against their digests when they arrived: a
/// tool's tree of thousands of files costs a link each, not a copy and a
/// hash each, on every job. The step mounts them read-only, and a blob is
/// never written, so a link shares nothing a step could change. Where the
/// file system takes no links (the jobs on another device), each is
/// copied and checked instead.
fn link_out(blobs: &ArtifactStore, to: &Path, files: &[OutputRecord]) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for file in files {
        let dest = to.join(&file.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let blob = blobs.local(&file.sha256).map_err(|e| e.to_string())?;
        match std::fs::hard_link(&blob, &dest) {
            Ok(()) => {}
            // Never over a file there already: that could be a link to a
            // blob, and copying onto it would change the blob.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::CrossesDevices | std::io::ErrorKind::Unsupported) => {
                blobs.copy_verified(&file.sha256, &dest).map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(format!("{}: {e}", dest.display())),
        }
    }
    Ok(())
}
