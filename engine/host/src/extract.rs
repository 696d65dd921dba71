//! Taking a finished step's outputs out of its workspace.
//!
//! The workspace was written by untrusted code. Everything is read through
//! a cap-std [`Dir`] opened on the workspace, so no path can resolve
//! outside it, and entries are judged by their own type, never by what a
//! link points to. The guest has exited before extraction starts, so the
//! tree cannot change underneath.

use crate::{ArtifactError, ArtifactStore};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::path::Path;

/// Caps on what one step may produce.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    /// Files taken out at most.
    pub max_files: usize,
    /// Bytes taken out at most, all files together.
    pub max_bytes: u64,
    /// Longest path, in bytes.
    pub max_path_len: usize,
    /// Workspace entries looked at at most, matching or not: walking a
    /// directory of millions of entries is itself a way to stall the host.
    pub max_entries: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        Self { max_files: 10_000, max_bytes: 4 << 30, max_path_len: 1024, max_entries: 100_000 }
    }
}

/// One output taken out of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Path relative to the workspace, `/`-separated.
    pub path: String,
    /// sha256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why outputs could not be taken out. The step fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An output is a symbolic link.
    #[error("output `{0}` is a symbolic link; only regular files are taken out of a workspace")]
    Symlink(String),
    /// An output has more than one name on disk.
    #[error("output `{0}` is a hard link; only regular files with one name are taken out of a workspace")]
    Hardlink(String),
    /// An output is a device, FIFO or socket.
    #[error("output `{0}` is not a regular file (a device, FIFO or socket)")]
    Special(String),
    /// A name that is not UTF-8.
    #[error("output name `{0}` is not valid UTF-8")]
    NotUtf8(String),
    /// A name with control or bidirectional-formatting characters.
    #[error("output name {0:?} contains control or bidirectional-formatting characters")]
    UnsafeName(String),
    /// A path over the length cap.
    #[error("output path `{prefix}…` is {len} bytes long, over the limit of {limit}")]
    PathTooLong {
        /// The first characters of the path.
        prefix: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More files than allowed.
    #[error("the outputs hold more than {0} files, the limit for one step")]
    TooManyFiles(usize),
    /// The workspace has more entries than extraction will look at.
    #[error("the workspace holds more than {0} entries, the most extraction looks at")]
    TooManyEntries(usize),
    /// More bytes than allowed.
    #[error("the outputs hold more than {0} bytes, the limit for one step")]
    TooManyBytes(u64),
    /// A declared pattern matched nothing.
    #[error("output `{0}` matched no file in the workspace")]
    NoMatch(String),
    /// A pattern that does not compile (validation normally catches this).
    #[error("output pattern `{0}` is invalid: {1}")]
    BadPattern(String, String),
    /// Reading the workspace failed.
    #[error("cannot read the workspace at `{path}`: {source}")]
    Io {
        /// Where, relative to the workspace.
        path: String,
        /// What.
        source: std::io::Error,
    },
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] ArtifactError),
}

struct Walk<'a> {
    patterns: &'a [GlobSet],
    limits: &'a ExtractLimits,
    store: &'a ArtifactStore,
    matched: Vec<bool>,
    entries: usize,
    bytes: u64,
    out: Vec<Extracted>,
}

/// Takes every file matching `patterns` out of `workspace` into `store`.
///
/// A pattern matches a file by its path relative to the workspace (`*`
/// stays within one directory, `**` crosses them); a pattern that matches
/// a directory takes everything below it. Every pattern must match
/// something. The result is sorted by path.
pub fn extract(
    workspace: &Path,
    patterns: &[String],
    limits: &ExtractLimits,
    store: &ArtifactStore,
) -> Result<Vec<Extracted>, ExtractError> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let mut sets = Vec::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p.trim_start_matches("./"))
            .literal_separator(true)
            .build()
            .map_err(|e| ExtractError::BadPattern(p.clone(), e.kind().to_string()))?;
        sets.push(single(glob)?);
    }
    let root = Dir::open_ambient_dir(workspace, ambient_authority())
        .map_err(|source| ExtractError::Io { path: ".".into(), source })?;
    let mut walk = Walk {
        patterns: &sets,
        limits,
        store,
        matched: vec![false; sets.len()],
        entries: 0,
        bytes: 0,
        out: Vec::new(),
    };
    walk.dir(&root, "", &[])?;
    if let Some(i) = walk.matched.iter().position(|m| !m) {
        return Err(ExtractError::NoMatch(patterns[i].clone()));
    }
    walk.out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(walk.out)
}

fn single(glob: Glob) -> Result<GlobSet, ExtractError> {
    let text = glob.glob().to_owned();
    GlobSetBuilder::new().add(glob).build().map_err(|e| ExtractError::BadPattern(text, e.kind().to_string()))
}

impl Walk<'_> {
    /// Which patterns match `path` itself.
    fn matching(&mut self, path: &str) -> Vec<usize> {
        (0..self.patterns.len()).filter(|i| self.patterns[*i].is_match(path)).collect()
    }

    /// Walks `dir` (at `rel`); `inherited` are the patterns that matched
    /// an enclosing directory, taking everything below it.
    fn dir(&mut self, dir: &Dir, rel: &str, inherited: &[usize]) -> Result<(), ExtractError> {
        let io = |path: &str| {
            let path = if path.is_empty() { ".".to_owned() } else { path.to_owned() };
            move |source| ExtractError::Io { path, source }
        };
        let mut names = Vec::new();
        for entry in dir.entries().map_err(io(rel))? {
            let entry = entry.map_err(io(rel))?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries(self.limits.max_entries));
            }
            names.push(entry);
        }
        // In name order, so a workspace with several bad outputs always
        // fails on the same one.
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let raw = entry.file_name();
            let Some(name) = raw.to_str() else {
                let shown = format!("{rel}{}{}", if rel.is_empty() { "" } else { "/" }, raw.to_string_lossy());
                // A name we cannot match against UTF-8 patterns is refused
                // only if it could be an output: inside a matched directory.
                if inherited.is_empty() {
                    continue;
                }
                return Err(ExtractError::NotUtf8(shown));
            };
            let path = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
            if path.len() > self.limits.max_path_len {
                return Err(ExtractError::PathTooLong {
                    prefix: path.chars().take(40).collect(),
                    len: path.len(),
                    limit: self.limits.max_path_len,
                });
            }
            let mut hits = self.matching(&path);
            hits.extend_from_slice(inherited);
            let ty = entry.file_type().map_err(io(&path))?;
            if ty.is_dir() {
                let sub = dir.open_dir(name).map_err(io(&path))?;
                self.dir(&sub, &path, &hits)?;
                continue;
            }
            if hits.is_empty() {
                continue;
            }
            // Such names would act on a terminal, or read differently
            // from what they are, wherever they are shown later.
            if name.chars().any(airlock_model::text::is_hazard) {
                return Err(ExtractError::UnsafeName(path));
            }
            if ty.is_symlink() {
                return Err(ExtractError::Symlink(path));
            }
            if !ty.is_file() {
                return Err(ExtractError::Special(path));
            }
            let meta = entry.metadata().map_err(io(&path))?;
            if meta.nlink() > 1 {
                return Err(ExtractError::Hardlink(path));
            }
            if self.out.len() >= self.limits.max_files {
                return Err(ExtractError::TooManyFiles(self.limits.max_files));
            }
            self.bytes += meta.len();
            if self.bytes > self.limits.max_bytes {
                return Err(ExtractError::TooManyBytes(self.limits.max_bytes));
            }
            let file = dir.open(name).map_err(io(&path))?;
            let (sha256, size, _) = self.store.put(file.into_std())?;
            for h in &hits {
                self.matched[*h] = true;
            }
            self.out.push(Extracted { path, sha256, size });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ArtifactStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("store"));
        std::fs::create_dir_all(dir.path().join("ws/site/css")).expect("mkdir");
        std::fs::write(dir.path().join("ws/site/index.html"), "<h1>hi</h1>").expect("write");
        std::fs::write(dir.path().join("ws/site/css/a.css"), "body{}").expect("write");
        std::fs::write(dir.path().join("ws/notes.txt"), "x").expect("write");
        (dir, store)
    }

    fn paths(v: &[Extracted]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn globs_and_directories() {
        let (dir, store) = setup();
        let ws = dir.path().join("ws");
        let all = extract(&ws, &["site".into()], &ExtractLimits::default(), &store).expect("extract");
        assert_eq!(paths(&all), vec!["site/css/a.css", "site/index.html"]);
        let top =
            extract(&ws, &["site/*.html".into(), "*.txt".into()], &ExtractLimits::default(), &store).expect("extract");
        assert_eq!(paths(&top), vec!["notes.txt", "site/index.html"]);
        assert!(matches!(
            extract(&ws, &["*.pdf".into()], &ExtractLimits::default(), &store),
            Err(ExtractError::NoMatch(_))
        ));
    }

    #[test]
    fn links_are_refused() {
        let (dir, store) = setup();
        let ws = dir.path().join("ws");
        std::os::unix::fs::symlink("/etc/passwd", ws.join("site/passwd")).expect("symlink");
        let err = extract(&ws, &["site/**".into()], &ExtractLimits::default(), &store).expect_err("refused");
        assert!(matches!(err, ExtractError::Symlink(ref p) if p == "site/passwd"), "{err}");
        std::fs::remove_file(ws.join("site/passwd")).expect("rm");
        std::fs::hard_link(ws.join("notes.txt"), ws.join("site/notes.txt")).expect("link");
        let err = extract(&ws, &["site/**".into()], &ExtractLimits::default(), &store).expect_err("refused");
        assert!(matches!(err, ExtractError::Hardlink(_)), "{err}");
    }

    #[test]
    fn caps_are_enforced() {
        let (dir, store) = setup();
        let ws = dir.path().join("ws");
        let limits = ExtractLimits { max_files: 1, ..ExtractLimits::default() };
        assert!(matches!(extract(&ws, &["site".into()], &limits, &store), Err(ExtractError::TooManyFiles(1))));
        let limits = ExtractLimits { max_bytes: 5, ..ExtractLimits::default() };
        assert!(matches!(extract(&ws, &["site".into()], &limits, &store), Err(ExtractError::TooManyBytes(5))));
    }
}
