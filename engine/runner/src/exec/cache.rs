//! The step cache, from the runner's side: a step's key, a hit laid out,
//! a miss recorded.
//!
//! A plugin step sees only what the pipeline declares, and in a
//! deterministic step the clocks and random bytes are the host's fixed
//! ones (see [`airlock_sandbox::determinism`]). So the sha256 of what it
//! declares names what it will make: its key covers the sandbox's
//! version, the step's name (a step plugin is told it), its plugin (the
//! file's sha256, or the tool's pinned digest with its module, entry and
//! mounts), `argv[0]`, its `with:`, `args:` and `env:` after
//! substitution, each input and mount by the digest of its tree, the
//! patterns of its outputs, the limits that change what it does, and
//! the host interfaces its environment grants. Time limits are left out:
//! they decide whether a step ends, not what it makes.

use super::Shared;
use super::outputs::{lay_out, outputs_dir};
use airlock_model::{MountFrom, PluginStep};
use airlock_sandbox::Invocation;
use airlock_store::{CacheEntry, CachedRecord, OutputRecord, TRUSTED_SCOPE, now_ms};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A digest worked out once per run, or why it could not be.
pub(crate) type DigestCell = OnceCell<Result<String, String>>;

/// What a deterministic step is keyed by.
pub(crate) struct Keyed {
    /// sha256 of everything the step sees, hex.
    pub(crate) key: String,
    /// Whether what it makes goes into the cache.
    pub(crate) cacheable: bool,
    /// Whether its outputs may come from the cache.
    pub(crate) takes: bool,
}

impl Keyed {
    /// The seed of the step's clocks and random bytes.
    pub(crate) fn seed(&self) -> [u8; 32] {
        Sha256::new().chain_update(b"airlock seed\0").chain_update(self.key.as_bytes()).finalize().into()
    }

    /// What a step plugin is told as its run's id: the same in every run
    /// of the same step, so that what it makes does not depend on the run.
    pub(crate) fn run_id(&self) -> String {
        self.key[..16].to_owned()
    }
}

/// The scopes a run reads, in order, and the one it writes.
pub(crate) fn scopes(shared: &Shared) -> (Vec<String>, String) {
    match &shared.untrusted {
        None => (vec![TRUSTED_SCOPE.to_owned()], TRUSTED_SCOPE.to_owned()),
        Some(_) => {
            let own = airlock_store::untrusted_scope(&shared.untrusted_author);
            (vec![TRUSTED_SCOPE.to_owned(), own.clone()], own)
        }
    }
}

/// The key of a deterministic plugin step, or `None` for a step that
/// asked for the real clocks.
pub(crate) async fn key(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    inv: &Invocation,
) -> Result<Option<Keyed>, String> {
    if !step.deterministic {
        return Ok(None);
    }
    let plugin = match step.tool() {
        Some(tool) => {
            let def = &shared.tools[tool];
            serde_json::json!({ "tool": def.sha256, "module": def.module, "mounts": def.mounts, "entry": def.entry })
        }
        None => {
            let path = shared.base_dir.join(&step.uses);
            serde_json::json!({ "file": digest_of(shared, &path, Tree::File).await? })
        }
    };
    let mut inputs = Vec::new();
    for input in &step.inputs {
        inputs.push(serde_json::json!([input, tree_digest(shared, input, "").await?]));
    }
    let mut mounts = Vec::new();
    for (guest, from) in &step.mounts {
        let what = match MountFrom::parse(from) {
            MountFrom::Tool { tool, dir } => serde_json::json!({ "tool": shared.tools[tool].sha256, "dir": dir }),
            // Only what is mounted counts: a step mounting `src/data`
            // runs again when something there changes, not elsewhere.
            MountFrom::Tree { name: tree, dir } => serde_json::json!({ "tree": tree_digest(shared, tree, dir).await? }),
        };
        mounts.push(serde_json::json!([guest, what]));
    }
    let grants: Vec<&str> = shared.grants.iter().flat_map(|g| g.grants.interfaces.iter().map(|i| i.name())).collect();
    let seen = serde_json::json!({
        "sandbox": airlock_sandbox::SANDBOX_VERSION,
        "step": name,
        "uses": step.uses,
        "plugin": plugin,
        "argv0": step.argv0,
        "entry": step.entry,
        "params": inv.params,
        "args": inv.args,
        "env": inv.env,
        "inputs": inputs,
        "mounts": mounts,
        "outputs": step.outputs,
        "limits": { "memory": inv.memory, "fuel": inv.fuel, "disk": inv.quota.bytes, "files": inv.quota.entries },
        "grants": grants,
    });
    let key = hex::encode(Sha256::digest(seen.to_string().as_bytes()));
    Ok(Some(Keyed { key, cacheable: step.cache, takes: step.cache && !shared.no_cache }))
}

/// What a digest is taken of.
#[derive(Clone, Copy)]
enum Tree {
    /// One file's bytes.
    File,
    /// A directory: its names, kinds, links and file bytes.
    Dir,
}

/// The digest of a file or directory tree, worked out once per run.
async fn digest_of(shared: &Shared, path: &Path, kind: Tree) -> Result<String, String> {
    let cell = shared.digests.lock().await.entry(path.to_owned()).or_default().clone();
    cell.get_or_init(|| async {
        let p = path.to_owned();
        tokio::task::spawn_blocking(move || match kind {
            Tree::File => airlock_host::file_digest(&p),
            Tree::Dir => airlock_host::tree_digest(&p),
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("cannot read {}: {e}", path.display())))
    })
    .await
    .clone()
}

/// The sha256 of a plugin file, worked out once per run.
pub(crate) async fn file_digest(shared: &Shared, path: &Path) -> Result<String, String> {
    digest_of(shared, path, Tree::File).await
}

/// The digest of a source's tree, or of an upstream step's outputs (by
/// their recorded digests, which their laid-out copies were checked
/// against); of its directory `dir` only, unless that is empty.
pub(crate) async fn tree_digest(shared: &Shared, name: &str, dir: &str) -> Result<String, String> {
    if let Some(root) = shared.sources.get(name) {
        let path = if dir.is_empty() { root.clone() } else { root.join(dir) };
        return digest_of(shared, &path, Tree::Dir).await;
    }
    let record = shared.store.step(&shared.run_id, name).map_err(|e| e.to_string())?;
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let below: Vec<OutputRecord> = record
        .outputs
        .into_iter()
        .filter_map(|o| match dir.is_empty() {
            true => Some(o),
            false => o.path.strip_prefix(&prefix).map(|p| OutputRecord { path: p.to_owned(), ..o.clone() }),
        })
        .collect();
    Ok(outputs_digest(&below))
}

/// One digest for a list of outputs.
pub(crate) fn outputs_digest(outputs: &[OutputRecord]) -> String {
    let mut hasher = Sha256::new();
    let mut sorted: Vec<&OutputRecord> = outputs.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for o in sorted {
        hasher.update(o.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(o.sha256.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// The cached outputs of the step, laid out for the steps downstream
/// (each file checked against its digest), if the cache has them for a
/// scope the run reads. An entry whose files are gone or damaged is
/// removed, and the step runs.
pub(crate) async fn take(shared: &Shared, name: &str, keyed: &Keyed) -> Option<(Vec<OutputRecord>, CachedRecord)> {
    if !keyed.takes {
        return None;
    }
    let (reads, _) = scopes(shared);
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    let entry = match shared.store.cache_lookup(&reads, &keyed.key) {
        Ok(entry) => entry?,
        Err(e) => {
            tracing::warn!("step `{name}`: cannot read the step cache: {e}");
            return None;
        }
    };
    let (artifacts, dest, outputs) = (shared.artifacts.clone(), outputs_dir(shared, name), entry.outputs.clone());
    // Nothing to copy is done here and now; files, on a blocking thread.
    let laid_out = match outputs.is_empty() {
        true => lay_out(&artifacts, &dest, &outputs),
        false => tokio::task::spawn_blocking(move || lay_out(&artifacts, &dest, &outputs))
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
    };
    if let Err(e) = laid_out {
        tracing::warn!("step `{name}`: the cached outputs of run {} are unusable ({e}); running it", entry.run);
        let _ = shared.store.cache_remove(&entry.scope, &entry.key);
        return None;
    }
    Some((entry.outputs, CachedRecord { run: entry.run, step: entry.step, scope: entry.scope }))
}

/// Whether the policy's sample picks this step of this run to be run
/// although the cache has it. The pick is a digest of the run and step,
/// not a draw: the same run and step are picked again when it resumes.
pub(crate) fn sampled(shared: &Shared, name: &str) -> bool {
    let Some(percent) = shared.policy.as_ref().and_then(|p| p.0.step_cache).map(|c| c.verify_percent) else {
        return false;
    };
    let digest = Sha256::new().chain_update(shared.run_id.as_bytes()).chain_update(b"\0").chain_update(name).finalize();
    u64::from(digest[0]) * 100 < percent * 256
}

/// Compares what a sampled step made with what the cache held, records
/// the outcome on the step, and drops an entry that differs; answers
/// whether they were the same.
pub(crate) fn compare(
    shared: &Shared,
    name: &str,
    keyed: &Keyed,
    cached: &[OutputRecord],
    from: &CachedRecord,
    made: &[OutputRecord],
) -> Result<bool, super::StepError> {
    let same = outputs_digest(cached) == outputs_digest(made);
    let detail = if same {
        format!("cache check: the same bytes as run {} step `{}`", from.run, from.step)
    } else {
        tracing::error!(
            "step `{name}` of run {} made other bytes than run {} step `{}` from the same inputs (key {}): a \
             nondeterministic tool, or a bug in airlock; the cache entry is dropped",
            shared.run_id,
            from.run,
            from.step,
            keyed.key
        );
        if let Err(e) = shared.store.cache_remove(&from.scope, &keyed.key) {
            tracing::warn!("cannot drop the cache entry {}: {e}", keyed.key);
        }
        format!(
            "CACHE CHECK FAILED: other bytes than run {} step `{}` from the same inputs (a nondeterministic tool, \
             or a bug in airlock); the entry is dropped",
            from.run, from.step
        )
    };
    let check = airlock_store::CacheCheck { run: from.run.clone(), step: from.step.clone(), same };
    shared
        .store
        .update_step(&shared.run_id, name, Some(detail), |s| s.cache_check = Some(check.clone()))
        .map_err(|e| super::StepError::Failed(format!("cannot record the step: {e}")))?;
    Ok(same)
}

/// Records what a step that ran made, in the scope its run writes.
pub(crate) fn record(shared: &Shared, name: &str, keyed: &Keyed, outputs: &[OutputRecord]) {
    if !keyed.cacheable {
        return;
    }
    let (_, scope) = scopes(shared);
    let now = now_ms();
    let entry = CacheEntry {
        scope,
        key: keyed.key.clone(),
        run: shared.run_id.clone(),
        step: name.to_owned(),
        outputs: outputs.to_vec(),
        created_ms: now,
        last_used_ms: now,
        hits: 0,
    };
    if let Err(e) = shared.store.cache_record(&entry) {
        tracing::warn!("step `{name}`: cannot record it in the step cache: {e}");
    }
}

/// The digests worked out in one run, by path.
pub(crate) type Digests = tokio::sync::Mutex<std::collections::HashMap<PathBuf, Arc<DigestCell>>>;
