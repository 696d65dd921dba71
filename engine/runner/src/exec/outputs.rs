//! A succeeded step's outputs: taken into the artifact store, and laid
//! out read-only for the steps downstream.

use super::Shared;
use airlock_host::{ExtractLimits, extract};
use airlock_model::PluginStep;
use airlock_store::OutputRecord;
use std::path::{Path, PathBuf};

/// Copies a step's outputs from the artifact store, each checked against
/// its digest, to where downstream steps read them.
pub(crate) fn lay_out(
    artifacts: &airlock_host::ArtifactStore,
    dest: &Path,
    outputs: &[OutputRecord],
) -> Result<(), String> {
    match std::fs::remove_dir_all(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot clear {}: {e}", dest.display())),
    }
    // No outputs, no directory: a step that reads them gets an empty one
    // made then (see `invocation`), and a cached step with nothing to lay
    // out costs no inode.
    for o in outputs {
        let to = dest.join(&o.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot lay out outputs: {e}"))?;
        }
        artifacts.copy_verified(&o.sha256, &to).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a succeeded step's outputs are laid out for the steps downstream.
pub(crate) fn outputs_dir(shared: &Shared, step: &str) -> PathBuf {
    shared.run_dir.join(".outputs").join(step)
}

/// Extracts a succeeded step's outputs, indexes them, and lays them out
/// read-only for downstream steps.
pub(crate) async fn take_outputs(
    shared: &Shared,
    name: &str,
    step: &PluginStep,
    workspace: &Path,
) -> Result<Vec<OutputRecord>, String> {
    if step.outputs.is_empty() {
        // Nothing to extract; a downstream step naming this one as an
        // input gets an empty directory (see `invocation`).
        return Ok(Vec::new());
    }
    let dest = outputs_dir(shared, name);
    let artifacts = shared.artifacts.clone();
    let (ws, patterns) = (workspace.to_owned(), step.outputs.clone());
    let extracted = tokio::task::spawn_blocking(move || {
        let outputs = extract(&ws, &patterns, &ExtractLimits::default(), &artifacts).map_err(|e| e.to_string())?;
        // Downstream steps see a copy checked against its digest, never
        // the workspace the guest wrote.
        let records: Vec<OutputRecord> =
            outputs.into_iter().map(|o| OutputRecord { path: o.path, sha256: o.sha256, size: o.size }).collect();
        lay_out(&artifacts, &dest, &records)?;
        Ok::<_, String>(records)
    })
    .await
    .map_err(|e| format!("step `{name}`: output extraction stopped: {e}"))?
    .map_err(|e| format!("step `{name}`: {e}"))?;
    for o in &extracted {
        shared.store.index_artifact(&o.sha256, o.size).map_err(|e| format!("cannot index outputs: {e}"))?;
    }
    Ok(extracted)
}
