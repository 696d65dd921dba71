//! The workspaces of a run's steps, and the pool of empty ones.

use super::Shared;
use std::path::{Path, PathBuf};

/// The scratch directory beside a workspace, mounted at `/tmp`: the
/// step's disk quota counts it with the workspace; what is left in it is
/// never an output.
pub(crate) fn scratch_of(workspace: &Path) -> PathBuf {
    // Step names have no dots, so `NAME.tmp` is nobody's workspace.
    let mut name = workspace.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Empties a finished attempt's scratch directory, so that its workspace
/// and scratch can be reused.
pub(crate) async fn clear_scratch(workspace: &Path) -> Result<(), String> {
    let scratch = scratch_of(workspace);
    let empty = std::fs::read_dir(&scratch).map(|mut e| e.next().is_none()).unwrap_or(true);
    if empty {
        return Ok(());
    }
    let cleared = tokio::task::spawn_blocking(move || {
        std::fs::remove_dir_all(&scratch).and_then(|()| std::fs::create_dir(&scratch)).map_err(|e| (scratch, e))
    });
    match cleared.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err((dir, e))) => Err(format!("cannot empty the scratch directory {}: {e}", dir.display())),
        Err(e) => Err(format!("cannot empty the scratch directory: {e}")),
    }
}

/// An empty directory for one attempt of a step: a spare one left empty
/// by a step that finished, or a new one.
///
/// Creating directories is most of what a step costs on ext4 once many
/// have been deleted (the inode allocator skips recently freed inodes), so
/// empty workspaces are reused within a run.
pub(crate) fn fresh_workspace(shared: &Shared, name: &str, attempt: u32) -> Result<PathBuf, String> {
    if let Some(spare) = &shared.spare_workspaces
        && let Some(dir) = spare.lock().ok().and_then(|mut s| s.pop())
    {
        // Recycled with its empty scratch directory.
        return Ok(dir);
    }
    // A retry starts from a new workspace, like the first attempt (the
    // failed attempt's is deleted first, see `discard_workspace`, unless
    // workspaces are kept).
    let dir = match attempt {
        1 => shared.run_dir.join(name),
        n => shared.run_dir.join(format!("{name}.attempt-{n}")),
    };
    let created = std::fs::create_dir(&dir).or_else(|e| {
        // Left by an attempt whose engine stopped: this step's alone.
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        std::fs::remove_dir_all(&dir)?;
        std::fs::create_dir(&dir)
    });
    let scratch = scratch_of(&dir);
    let created = created.and_then(|()| match std::fs::create_dir(&scratch) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(&scratch).and_then(|()| std::fs::create_dir(&scratch))
        }
        other => other,
    });
    created.map_err(|e| format!("cannot create the workspace {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Offers the workspace of a succeeded attempt for reuse if it is empty.
///
/// Only succeeded attempts qualify: when an attempt fails or times out,
/// wasmtime may still be finishing a blocking file operation the guest
/// started, so its directory is never handed to another step.
pub(crate) fn recycle_workspace(shared: &Shared, workspace: PathBuf) {
    let Some(spare) = &shared.spare_workspaces else { return };
    // Its scratch directory too (see `clear_scratch`).
    let empty = |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    let empty = empty(&workspace) && empty(&scratch_of(&workspace));
    if empty && let Ok(mut spare) = spare.lock() {
        spare.push(workspace);
    }
}

/// Deletes the workspace of a failed attempt before the next one starts,
/// so a step that fails on purpose cannot keep a disk quota's worth of
/// files per retry. Kept with `--keep-workspaces`.
pub(crate) async fn discard_workspace(shared: &Shared, workspace: PathBuf) {
    if shared.spare_workspaces.is_none() {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(scratch_of(&workspace));
        std::fs::remove_dir_all(&workspace).map_err(|e| (workspace, e))
    });
    if let Ok(Err((dir, e))) = removed.await {
        tracing::warn!("cannot remove the workspace of a failed attempt at {}: {e}", dir.display());
    }
}
