//! A step's share of the disk: how much its workspace may hold.
//!
//! WASI writes go straight from wasmtime to the host file system, so the
//! quota is enforced by looking: while the step runs, its workspace is
//! measured every [`QUOTA_TICK`] or so (less often when measuring itself
//! takes long), and the step is stopped at the first measurement over its
//! limits. The guest can overshoot by what it writes between two looks;
//! it cannot fill the disk. A last measurement when the step ends catches
//! whatever was written between the last look and the end.
//!
//! The walk goes through cap-std handles on the workspace and never
//! follows a link, so the guest cannot point it anywhere else.

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a running step's workspace is measured, at most.
pub const QUOTA_TICK: Duration = Duration::from_millis(50);

/// Directories nested deeper than this stop the step: each level costs
/// the walk an open handle, and nothing real nests so deep.
pub const MAX_DEPTH: usize = 256;

/// What a workspace may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes, counting each file at the larger of its length and the
    /// space it takes on disk.
    pub bytes: u64,
    /// Files, directories and links.
    pub entries: u64,
}

/// Which part of a [`Quota`] a workspace went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// More bytes than [`Quota::bytes`].
    Bytes(u64),
    /// More entries than [`Quota::entries`].
    Entries(u64),
    /// Directories nested deeper than [`MAX_DEPTH`].
    Depth(usize),
}

/// What a workspace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes, as [`Quota::bytes`] counts them.
    pub bytes: u64,
    /// Files, directories and links.
    pub entries: u64,
}

/// Measures `workspace`, stopping as soon as it is over `quota`.
///
/// Entries that vanish while being looked at (the guest is still running)
/// are skipped; a workspace that cannot be opened at all counts as empty,
/// since then the guest cannot write to it either.
pub fn measure(workspace: &Path, quota: &Quota) -> Result<Usage, OverQuota> {
    measure_some(workspace, quota, u64::MAX).map(|usage| usage.unwrap_or_default())
}

/// [`measure`] for a step's directories together (its workspace and its
/// `/tmp`): one quota for all of them.
pub fn measure_all(dirs: &[PathBuf], quota: &Quota) -> Result<Usage, OverQuota> {
    let mut total = Usage::default();
    for dir in dirs {
        let left = Quota { bytes: quota.bytes - total.bytes, entries: quota.entries - total.entries };
        let usage = measure(dir, &left).map_err(|over| match over {
            OverQuota::Bytes(_) => OverQuota::Bytes(quota.bytes),
            OverQuota::Entries(_) => OverQuota::Entries(quota.entries),
            depth => depth,
        })?;
        total.bytes += usage.bytes;
        total.entries += usage.entries;
    }
    Ok(total)
}

/// [`measure`], giving up (`Ok(None)`) after looking at `budget` entries:
/// a small workspace is measured where it is cheaper than handing the
/// walk to another thread, a big one is left to [`measure`] there.
pub fn measure_some(workspace: &Path, quota: &Quota, budget: u64) -> Result<Option<Usage>, OverQuota> {
    let mut usage = Usage::default();
    let Ok(root) = Dir::open_ambient_dir(workspace, ambient_authority()) else { return Ok(Some(usage)) };
    // Depth-first with an explicit stack: one open handle per level.
    let mut stack: Vec<cap_std::fs::ReadDir> = Vec::new();
    let mut dirs: Vec<Dir> = Vec::new();
    match root.entries() {
        Ok(entries) => stack.push(entries),
        Err(_) => return Ok(Some(usage)),
    }
    dirs.push(root);
    while let Some(entries) = stack.last_mut() {
        let Some(entry) = entries.next() else {
            stack.pop();
            dirs.pop();
            continue;
        };
        let Ok(entry) = entry else { continue };
        if usage.entries >= budget {
            return Ok(None);
        }
        usage.entries += 1;
        if usage.entries > quota.entries {
            return Err(OverQuota::Entries(quota.entries));
        }
        let Ok(meta) = entry.metadata() else { continue };
        let on_disk = meta.blocks().saturating_mul(512);
        let size = if meta.is_file() { meta.len().max(on_disk) } else { on_disk };
        usage.bytes = usage.bytes.saturating_add(size);
        if usage.bytes > quota.bytes {
            return Err(OverQuota::Bytes(quota.bytes));
        }
        if meta.is_dir() {
            if dirs.len() >= MAX_DEPTH {
                return Err(OverQuota::Depth(MAX_DEPTH));
            }
            let Some(Ok(sub)) = dirs.last().map(|parent| parent.open_dir(entry.file_name())) else { continue };
            let Ok(sub_entries) = sub.entries() else { continue };
            stack.push(sub_entries);
            dirs.push(sub);
        }
    }
    Ok(Some(usage))
}

/// Measures `workspace` again and again until it is over `quota`, then
/// returns how. Each pause is at least [`QUOTA_TICK`] and at least four
/// times the last measurement, so a huge workspace costs the host at most
/// a fifth of a core.
pub async fn watch(dirs: Vec<PathBuf>, quota: Quota) -> OverQuota {
    let mut pause = QUOTA_TICK;
    loop {
        tokio::time::sleep(pause).await;
        let measured = dirs.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || measure_all(&measured, &quota)).await {
            Ok(Err(over)) => return over,
            Ok(Ok(_)) => {}
            // The walk panicked: a bug here, not the guest's doing. Stop
            // watching rather than take the step down with it.
            Err(e) => {
                tracing::error!("measuring the workspace {} failed: {e}", dirs[0].display());
                return std::future::pending().await;
            }
        }
        pause = QUOTA_TICK.max(started.elapsed() * 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Quota = Quota { bytes: 1 << 30, entries: 1000 };

    #[test]
    fn counts_files_directories_and_bytes() {
        let ws = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(ws.path().join("a/b")).expect("mkdir");
        std::fs::write(ws.path().join("a/b/f"), vec![1; 10_000]).expect("write");
        std::fs::write(ws.path().join("g"), "hi").expect("write");
        let usage = measure(ws.path(), &ROOMY).expect("within quota");
        assert_eq!(usage.entries, 4);
        assert!(usage.bytes >= 10_002, "{usage:?}");
    }

    #[test]
    fn a_partial_measurement_says_so() {
        let ws = tempfile::tempdir().expect("tempdir");
        for i in 0..5 {
            std::fs::write(ws.path().join(i.to_string()), "").expect("write");
        }
        assert_eq!(measure_some(ws.path(), &ROOMY, 4), Ok(None));
        assert_eq!(measure_some(ws.path(), &ROOMY, 5).map(|u| u.map(|u| u.entries)), Ok(Some(5)));
    }

    #[test]
    fn sparse_files_count_at_their_length() {
        let ws = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(ws.path().join("sparse")).expect("create");
        f.set_len(2 << 30).expect("set_len");
        assert_eq!(measure(ws.path(), &ROOMY), Err(OverQuota::Bytes(1 << 30)));
    }

    #[test]
    fn stops_at_the_first_entry_over() {
        let ws = tempfile::tempdir().expect("tempdir");
        for i in 0..20 {
            std::fs::write(ws.path().join(i.to_string()), "").expect("write");
        }
        assert_eq!(measure(ws.path(), &Quota { entries: 10, ..ROOMY }), Err(OverQuota::Entries(10)));
    }

    #[test]
    fn links_are_counted_not_followed() {
        let ws = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("big"), vec![0; 1 << 20]).expect("write");
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).expect("symlink");
        let usage = measure(ws.path(), &Quota { bytes: 64 << 10, ..ROOMY }).expect("within quota");
        assert_eq!(usage.entries, 1);
    }

    #[test]
    fn deep_nesting_is_refused_not_walked() {
        let ws = tempfile::tempdir().expect("tempdir");
        let mut dir = Dir::open_ambient_dir(ws.path(), ambient_authority()).expect("open");
        for _ in 0..MAX_DEPTH + 5 {
            dir.create_dir("d").expect("mkdir");
            dir = dir.open_dir("d").expect("open");
        }
        assert_eq!(measure(ws.path(), &ROOMY), Err(OverQuota::Depth(MAX_DEPTH)));
    }
}
