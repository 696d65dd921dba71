//! The `directory` provider: releases side by side, and a `current` link
//! switched from one to the next in a single rename.
//!
//! ```text
//! PATH/releases/1764000000000-RUN-STEP/   one directory per deployment
//! PATH/current -> releases/1764000000000-RUN-STEP
//! ```
//!
//! A release is copied (each file checked against its digest) into a
//! hidden staging directory and renamed into place whole; then a new link
//! is made beside `current` and renamed over it, so whoever follows
//! `current` sees the old release or the new one, never a mix. The newest
//! `keep` releases are kept; [`rollback`] points `current` back at the
//! one before.

use super::{DeployError, Deployed, Deployment, copy_out};
use crate::ArtifactStore;
use std::path::{Path, PathBuf};

fn fail(target: &Path, message: impl Into<String>) -> DeployError {
    DeployError::Provider { provider: "directory", target: target.display().to_string(), message: message.into() }
}

/// Release directories under `root`, oldest first.
fn releases(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    match std::fs::read_dir(root.join("releases")) {
        Ok(entries) => {
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    names.sort();
    Ok(names)
}

/// The release `current` points at.
pub fn current(root: &Path) -> Option<String> {
    let target = std::fs::read_link(root.join("current")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Points `current` at `releases/NAME` in one rename.
fn switch(root: &Path, name: &str) -> std::io::Result<()> {
    // Named after the release: two deployments switching at once (two runs
    // of one engine) must not share the temporary link. The last rename
    // wins, and `current` is whole either way.
    let tmp = root.join(format!(".current-{name}"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(name), &tmp)?;
    std::fs::rename(&tmp, root.join("current"))?;
    std::fs::File::open(root)?.sync_all()
}

/// The `directory` provider.
pub(super) struct Directory {
    pub(super) root: PathBuf,
    pub(super) keep: usize,
}

impl super::DeployProvider for Directory {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn target(&self) -> String {
        self.root.display().to_string()
    }

    fn deploy(
        &self,
        d: &Deployment,
        _secrets: &[(String, super::Secret)],
        artifacts: &ArtifactStore,
        now_ms: u64,
    ) -> Result<Deployed, DeployError> {
        deploy(d, &self.root, self.keep, artifacts, now_ms)
    }
}

fn deploy(
    d: &Deployment,
    root: &Path,
    keep: usize,
    artifacts: &ArtifactStore,
    now_ms: u64,
) -> Result<Deployed, DeployError> {
    let releases_dir = root.join("releases");
    std::fs::create_dir_all(&releases_dir)
        .map_err(|e| fail(root, format!("cannot create {}: {e}", releases_dir.display())))?;
    // The same deployment again (its engine stopped before it could
    // record the end): the release it made is found by its name and
    // finished, not made twice.
    let suffix = format!("-{}-{}", d.run, d.step);
    let all = releases(root).map_err(|e| fail(root, format!("cannot list the releases: {e}")))?;
    if let Some(made) = all.iter().find(|n| n.ends_with(&suffix)) {
        let newer = current(root).is_some_and(|c| c.as_str() > made.as_str());
        if !newer {
            switch(root, made).map_err(|e| fail(root, format!("cannot switch `current`: {e}")))?;
        }
        return Ok(Deployed {
            provider: "directory",
            target: releases_dir.join(made).display().to_string(),
            detail: format!(
                "release {made} was made by an earlier try of this deployment; {}",
                if newer { "`current` has moved on to a newer release since" } else { "`current` is on it" }
            ),
        });
    }
    let name = format!("{now_ms:013}{suffix}");
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&releases_dir)
        .map_err(|e| fail(root, format!("cannot stage a release: {e}")))?;
    for a in &d.artifacts {
        crate::publish::check_path(&a.path).map_err(|e| fail(root, e.to_string()))?;
        copy_out(artifacts, a, &staging.path().join(&a.path))?;
    }
    let release: PathBuf = releases_dir.join(&name);
    std::fs::rename(staging.path(), &release)
        .map_err(|e| fail(root, format!("cannot move the release into place: {e}")))?;
    // The staging directory is now the release; nothing is left to clean.
    let _ = staging.keep();
    switch(root, &name).map_err(|e| fail(root, format!("cannot switch `current`: {e}")))?;
    let pruned = prune(root, keep, &name);
    Ok(Deployed {
        provider: "directory",
        target: release.display().to_string(),
        detail: format!(
            "released {} ({} files) and switched `current` to it{}",
            name,
            d.artifacts.len(),
            if pruned > 0 { format!("; removed {pruned} old releases") } else { String::new() }
        ),
    })
}

/// Removes the oldest releases beyond `keep`, never `current`.
fn prune(root: &Path, keep: usize, current_name: &str) -> usize {
    let Ok(all) = releases(root) else { return 0 };
    let excess = all.len().saturating_sub(keep);
    let mut removed = 0;
    for old in all.iter().take(excess).filter(|n| *n != current_name) {
        match std::fs::remove_dir_all(root.join("releases").join(old)) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove old release {old}: {e}"),
        }
    }
    removed
}

/// Points `current` back at the release before it. Returns (from, to).
pub fn rollback(root: &Path) -> Result<(String, String), DeployError> {
    let all = releases(root).map_err(|e| fail(root, e.to_string()))?;
    let now = current(root).ok_or_else(|| fail(root, "there is no `current` release to roll back from"))?;
    let at = all
        .iter()
        .position(|n| *n == now)
        .ok_or_else(|| fail(root, format!("`current` points at `{now}`, which is gone")))?;
    let previous = at
        .checked_sub(1)
        .and_then(|i| all.get(i))
        .ok_or_else(|| fail(root, format!("`{now}` is the oldest release kept; there is nothing to roll back to")))?;
    switch(root, previous).map_err(|e| fail(root, format!("cannot switch `current`: {e}")))?;
    Ok((now, previous.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::DeployArtifact;

    fn deployment(run: &str, store: &ArtifactStore, files: &[(&str, &[u8])]) -> Deployment {
        let artifacts = files
            .iter()
            .map(|(path, bytes)| {
                let (sha256, size, _) = store.put(*bytes).expect("put");
                DeployArtifact { path: (*path).into(), sha256, size }
            })
            .collect();
        Deployment {
            environment: "www".into(),
            pipeline: "site".into(),
            run: run.into(),
            step: "deploy".into(),
            requester: "alice".into(),
            artifacts,
        }
    }

    #[test]
    fn releases_switch_current_keep_a_few_and_roll_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("artifacts"));
        let root = dir.path().join("www");
        for (i, run) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
            let body = format!("version {i}");
            let d = deployment(run, &store, &[("index.html", body.as_bytes()), ("css/a.css", b"a{}")]);
            let done = deploy(&d, &root, 3, &store, 1_000 + i as u64).expect("deploy");
            assert_eq!(done.provider, "directory");
            assert_eq!(std::fs::read_to_string(root.join("current/index.html")).expect("current"), body);
        }
        assert_eq!(releases(&root).expect("releases").len(), 3, "the oldest release was pruned");
        assert_eq!(current(&root).as_deref(), Some("0000000001003-r4-deploy"));
        let (from, to) = rollback(&root).expect("rollback");
        assert_eq!((from.as_str(), to.as_str()), ("0000000001003-r4-deploy", "0000000001002-r3-deploy"));
        assert_eq!(std::fs::read_to_string(root.join("current/index.html")).expect("current"), "version 2");
        rollback(&root).expect("again");
        let e = rollback(&root).expect_err("nothing older");
        assert!(e.to_string().contains("oldest release kept"), "{e}");
    }

    #[test]
    fn a_damaged_artifact_leaves_current_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("artifacts"));
        let root = dir.path().join("www");
        let good = deployment("r1", &store, &[("index.html", b"good")]);
        deploy(&good, &root, 5, &store, 1).expect("deploy");
        let bad = deployment("r2", &store, &[("index.html", b"changed after approval")]);
        let blob = store.path(&bad.artifacts[0].sha256).expect("path");
        std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        std::fs::write(&blob, b"tampered").expect("tamper");
        let e = deploy(&bad, &root, 5, &store, 2).expect_err("refused");
        assert!(e.to_string().contains("damaged"), "{e}");
        assert_eq!(std::fs::read_to_string(root.join("current/index.html")).expect("current"), "good");
        assert_eq!(releases(&root).expect("releases"), ["0000000000001-r1-deploy"], "no half release");
    }

    /// The same deployment sent again (its engine died before recording
    /// the end) finds its release: one release, `current` on it, and a
    /// later release is not undone.
    #[test]
    fn the_same_deployment_again_makes_no_second_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("artifacts"));
        let root = dir.path().join("www");
        let d = deployment("r1", &store, &[("index.html", b"one")]);
        deploy(&d, &root, 5, &store, 1).expect("deploy");
        // Cut off between the release and the switch.
        std::fs::remove_file(root.join("current")).expect("unlink");
        let again = deploy(&d, &root, 5, &store, 2).expect("again");
        assert!(again.detail.contains("earlier try"), "{}", again.detail);
        assert_eq!(releases(&root).expect("releases"), ["0000000000001-r1-deploy"]);
        assert_eq!(current(&root).as_deref(), Some("0000000000001-r1-deploy"));
        let later = deployment("r2", &store, &[("index.html", b"two")]);
        deploy(&later, &root, 5, &store, 3).expect("later");
        deploy(&d, &root, 5, &store, 4).expect("once more");
        assert_eq!(current(&root).as_deref(), Some("0000000000003-r2-deploy"));
    }
}
