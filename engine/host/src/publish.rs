//! Publish targets: where published trees live, and the checks that keep
//! a publish all-or-nothing.
//!
//! A target is a directory:
//!
//! ```text
//! DIR/blobs/sha256/ab/cdef…   every file ever uploaded, by content, read-only
//! DIR/trees/SHA256.json       every tree ever committed: path -> sha256, size
//! DIR/builds/BUILD-ID.json    one record per publish, naming its tree
//! ```
//!
//! Uploading a blob makes nothing visible: a tree is published only once
//! a build's record names it, and a record appears in one `link(2)`,
//! which fails if the build id is taken. So readers see a whole tree or
//! none, two publishers racing for one build id cannot both win, and an
//! interrupted publish leaves only blobs (and perhaps a tree) that the
//! next attempt finds already there.
//!
//! A tree is named by the sha256 of its manifest as a client sends it,
//! sorted by path (see [`tree_digest`]). Publishing a tree the target
//! already holds under a new build id (the same files again, the common
//! case of a release promoted or a build repeated) writes only the small
//! record: a client that knows the tree's digest sends that instead of
//! the manifest, and nothing of the tree is checked or written again.
//! Records written before trees were kept apart hold the files
//! themselves, and are read as they are.

use crate::ArtifactError;
use crate::artifacts::{ArtifactStore, BlobWriter};
use airlock_model::policy::PublishTarget;
use airlock_model::text::is_hazard;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest path in a manifest, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest build id.
pub const MAX_BUILD_ID: usize = 128;

/// One file of a published tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Where the file appears, `/`-separated, relative to the build.
    pub path: String,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A published tree, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The target it is in.
    pub target: String,
    /// Its build id.
    pub build: String,
    /// When it was committed (ms since the epoch).
    pub created_ms: u64,
    /// The sha256 of its tree (see [`tree_digest`]).
    #[serde(default)]
    pub tree: String,
    /// Its files, sorted by path.
    pub files: Vec<ManifestEntry>,
    /// The sha256 of its signed provenance (a DSSE envelope, a blob of
    /// the target), when the run that published it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
}

impl Published {
    /// Bytes of all its files together.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A build as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The target it is in.
    pub target: String,
    /// Its build id.
    pub build: String,
    /// The sha256 of its tree.
    pub tree: String,
    /// Files in the tree.
    pub files: u64,
    /// Their bytes, all together.
    pub bytes: u64,
    /// The sha256 of its signed provenance, if it has one.
    pub provenance: Option<String>,
}

/// The digest a tree is named by: the sha256 of its manifest as JSON,
/// `{"files":[{"path":…,"sha256":…,"size":…},…]}` with the entries
/// sorted by path (bytewise) and no white space. That is the body of a
/// commit that lists the files, so a client that sorts what it sends
/// knows the tree's name without asking.
pub fn tree_digest(sorted: &[ManifestEntry]) -> String {
    hex::encode(Sha256::digest(tree_json(sorted)))
}

/// A tree's manifest as it is stored and named.
fn tree_json(sorted: &[ManifestEntry]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Tree<'a> {
        files: &'a [ManifestEntry],
    }
    // Cannot fail: strings and numbers only.
    serde_json::to_vec(&Tree { files: sorted }).unwrap_or_default()
}

/// What a tree file (`trees/SHA256.json`) holds.
#[derive(Deserialize)]
struct TreeFile {
    files: Vec<ManifestEntry>,
}

/// What a build's record (`builds/BUILD-ID.json`) holds.
#[derive(Serialize, Deserialize)]
struct BuildRecord {
    target: String,
    build: String,
    created_ms: u64,
    /// Its tree, in `trees/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tree: Option<String>,
    /// Its files, in a record written before trees were kept apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<ManifestEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<String>,
}

impl BuildRecord {
    /// Its tree's digest, also for a record that holds its files.
    fn tree(&self) -> String {
        self.tree.clone().unwrap_or_else(|| tree_digest(&self.files))
    }
}

/// What the limits of a target are checked against: enough of a tree
/// to tell whether it may be published, without its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TreeFacts {
    files: u64,
    bytes: u64,
    /// The largest file's size.
    largest: u64,
}

impl TreeFacts {
    fn of(files: &[ManifestEntry]) -> Self {
        Self {
            files: files.len() as u64,
            bytes: files.iter().fold(0u64, |n, f| n.saturating_add(f.size)),
            largest: files.iter().map(|f| f.size).max().unwrap_or(0),
        }
    }
}

/// A tree that passed [`TargetStore::check`] or [`TargetStore::check_tree`]:
/// every path plain, every blob present with its size, within the
/// target's limits, ready for [`TargetStore::commit_checked`].
#[derive(Debug)]
pub struct Checked {
    tree: String,
    facts: TreeFacts,
    /// The tree file's bytes, when it may not be on disk yet.
    write: Option<Vec<u8>>,
}

impl Checked {
    /// The sha256 of the tree.
    pub fn tree(&self) -> &str {
        &self.tree
    }

    /// Files in the tree.
    pub fn file_count(&self) -> u64 {
        self.facts.files
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The tree is now published.
    Created,
    /// The same tree was already published under this build id; nothing
    /// changed. (A publisher retrying a commit it lost the answer to.)
    AlreadyThere,
}

/// Why a publish was refused. Nothing is visible after any of these.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A build id with characters a build id cannot have.
    #[error(
        "build id `{0}` is not valid: use 1 to {MAX_BUILD_ID} letters, digits, `.`, `-` and `_`, not starting with `.`"
    )]
    BadBuildId(String),
    /// A manifest path that is not a plain relative path.
    #[error("manifest path `{path}` is refused: {why}")]
    BadPath {
        /// The path, with hazardous characters escaped.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A path listed twice.
    #[error("manifest lists `{0}` twice")]
    DuplicatePath(String),
    /// A path that is both a file and a directory.
    #[error("manifest has `{file}` as a file and as the directory of `{inside}`")]
    PathClash {
        /// The file.
        file: String,
        /// A path below it.
        inside: String,
    },
    /// A digest that is not 64 lowercase hex characters.
    #[error("`{0}` is not a sha256 digest (64 lowercase hex characters)")]
    BadDigest(String),
    /// A manifest entry whose blob was never uploaded.
    #[error("`{path}` names blob sha256:{sha256}, which was not uploaded to this target")]
    MissingBlob {
        /// The entry's path.
        path: String,
        /// Its digest.
        sha256: String,
    },
    /// A manifest entry whose size is not the blob's.
    #[error("`{path}` is declared {declared} bytes but its blob has {actual}")]
    SizeMismatch {
        /// The entry's path.
        path: String,
        /// The size in the manifest.
        declared: u64,
        /// The blob's size.
        actual: u64,
    },
    /// An empty manifest.
    #[error("the manifest lists no files; a publish holds at least one")]
    Empty,
    /// Too many files.
    #[error("the publish has {count} files; target `{target}` allows {max}")]
    TooManyFiles {
        /// The target.
        target: String,
        /// Files in the manifest.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// One file over the target's limit.
    #[error("{what} is {size} bytes; target `{target}` allows files of at most {max}")]
    FileTooLarge {
        /// The file (a path or a digest).
        what: String,
        /// Its size.
        size: u64,
        /// The target.
        target: String,
        /// The limit.
        max: u64,
    },
    /// All files together over the target's limit.
    #[error("the publish holds {total} bytes; target `{target}` allows {max}")]
    TotalTooLarge {
        /// The target.
        target: String,
        /// Bytes in the manifest.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// Uploaded bytes that do not hash to the digest they were sent as.
    #[error("upload of sha256:{expected} does not match: its bytes hash to sha256:{actual}; it was not stored")]
    DigestMismatch {
        /// The digest announced.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// An upload that ended before its announced length.
    #[error("upload of sha256:{sha256} ended after {got} of {expected} bytes; it was not stored")]
    Truncated {
        /// The digest announced.
        sha256: String,
        /// The length announced.
        expected: u64,
        /// The bytes that came.
        got: u64,
    },
    /// A commit named a tree by its digest that the target does not hold.
    #[error("target `{target}` holds no tree sha256:{tree}; send the manifest's files")]
    UnknownTree {
        /// The target.
        target: String,
        /// The digest named.
        tree: String,
    },
    /// The build id is taken by a different tree.
    #[error("`{target}/{build}` is already published with different files; published trees never change")]
    Conflict {
        /// The target.
        target: String,
        /// The build id.
        build: String,
    },
    /// Disk trouble.
    #[error("publish target at {}: {source}", dir.display())]
    Io {
        /// Where.
        dir: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// The blob store failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// What a build's provenance is served as, after its id, beside its tree.
pub const PROVENANCE_SUFFIX: &str = ".intoto.jsonl";

/// Checks a build id: 1 to 128 of letters, digits, `.`, `-`, `_`, not
/// starting with `.` (so never `.` or `..`), not ending with
/// [`PROVENANCE_SUFFIX`] (that names a build's provenance).
pub fn check_build_id(id: &str) -> Result<(), PublishError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_BUILD_ID
        && !id.starts_with('.')
        && !id.ends_with(PROVENANCE_SUFFIX)
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(PublishError::BadBuildId(airlock_model::text::one_line(id, 200))) }
}

/// Checks one manifest path: relative, `/`-separated, no empty, `.` or
/// `..` component, no backslash, no control or bidi character.
pub fn check_path(path: &str) -> Result<(), PublishError> {
    let bad = |why| Err(PublishError::BadPath { path: airlock_model::text::one_line(path, 300), why });
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad("it is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return bad("it is absolute; paths are relative to the build");
    }
    if path.contains('\\') {
        return bad("it holds a backslash; separate directories with `/`");
    }
    if path.chars().any(is_hazard) {
        return bad("it holds a control or bidirectional-formatting character");
    }
    for part in path.split('/') {
        match part {
            "" => return bad("it has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return bad("it has a `.` or `..` component"),
            p if p.len() > 255 => return bad("a component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether an upload that was to be `len` bytes hashing to `sha256`
/// arrived so (and was then kept); `new` as the store said.
fn kept(sha256: &str, len: u64, actual: String, got: u64, new: bool) -> Result<bool, PublishError> {
    if got != len {
        return Err(PublishError::Truncated { sha256: sha256.to_owned(), expected: len, got });
    }
    if actual != sha256 {
        return Err(PublishError::DigestMismatch { expected: sha256.to_owned(), actual });
    }
    Ok(new)
}

/// A digest's 32 bytes, if it is 64 lowercase hex digits.
fn digest_bytes(d: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = d.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Syncs a directory, so the names made in it survive a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Blobs a target remembers having seen, at most; past it the record
/// starts again (about 60 MiB at most).
const MAX_KNOWN_BLOBS: usize = 1 << 20;

/// Trees a target remembers having checked, at most (about 4 MiB).
const MAX_KNOWN_TREES: usize = 1 << 16;

/// The prefixes of the temporary files a commit writes before it links
/// them to their names: left behind only by a process killed meanwhile.
const TREE_PARTIAL: &str = ".tree-";
const COMMIT_PARTIAL: &str = ".commit-";

/// One publish target on disk.
///
/// Clones share a record of the blobs this process has seen in the
/// target (stored, or found on disk) with their sizes, so asking again
/// whether a tree's blobs are there costs no `stat` per file, and of the
/// trees it committed or checked, so publishing one of them again costs
/// no check of its files at all. Blobs of a target are never deleted
/// while a server or engine serves it, so what was there once is there
/// still.
#[derive(Debug, Clone)]
pub struct TargetStore {
    name: String,
    dir: PathBuf,
    blobs: ArtifactStore,
    limits: PublishTarget,
    known: Arc<Mutex<HashMap<[u8; 32], u64>>>,
    trees: Arc<Mutex<HashMap<[u8; 32], TreeFacts>>>,
}

impl TargetStore {
    /// The target `name` of the policy, with its directory resolved
    /// (`dir` is absolute or relative to the working directory).
    pub fn new(name: &str, dir: PathBuf, limits: PublishTarget) -> Self {
        Self {
            name: name.to_owned(),
            blobs: ArtifactStore::new(dir.join("blobs")),
            dir,
            limits,
            known: Default::default(),
            trees: Default::default(),
        }
    }

    /// Remembers that the target holds this tree, on disk, with every
    /// blob it names.
    fn remember_tree(&self, tree: &str, facts: TreeFacts) {
        let (Some(key), Ok(mut trees)) = (digest_bytes(tree), self.trees.lock()) else { return };
        if trees.len() >= MAX_KNOWN_TREES {
            trees.clear();
        }
        trees.insert(key, facts);
    }

    /// What the target remembers of a tree it holds.
    fn known_tree(&self, tree: &str) -> Option<TreeFacts> {
        let key = digest_bytes(tree)?;
        self.trees.lock().ok()?.get(&key).copied()
    }

    /// Remembers that the target holds this blob, of this size.
    fn remember(&self, sha256: &str, size: u64) {
        let (Some(key), Ok(mut known)) = (digest_bytes(sha256), self.known.lock()) else { return };
        if known.len() >= MAX_KNOWN_BLOBS {
            known.clear();
        }
        known.insert(key, size);
    }

    /// The size of each blob in the target (`None` for one it does not
    /// have), from the record of blobs seen, or else from the disk.
    fn blob_sizes<'a>(&self, digests: impl Iterator<Item = &'a str>) -> Result<Vec<Option<u64>>, PublishError> {
        let digests: Vec<&str> = digests.collect();
        let mut sizes: Vec<Option<u64>> = match self.known.lock() {
            Ok(known) => digests.iter().map(|d| digest_bytes(d).and_then(|k| known.get(&k).copied())).collect(),
            Err(_) => vec![None; digests.len()],
        };
        for (d, size) in digests.iter().zip(sizes.iter_mut()).filter(|(_, s)| s.is_none()) {
            let path = self.blobs.path(d)?;
            *size = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    self.remember(d, m.len());
                    Some(m.len())
                }
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(self.io(e)),
            };
        }
        Ok(sizes)
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its policy entry.
    pub fn limits(&self) -> &PublishTarget {
        &self.limits
    }

    fn io(&self, source: std::io::Error) -> PublishError {
        PublishError::Io { dir: self.dir.clone(), source }
    }

    fn builds_dir(&self) -> PathBuf {
        self.dir.join("builds")
    }

    fn trees_dir(&self) -> PathBuf {
        self.dir.join("trees")
    }

    fn tree_path(&self, tree: &str) -> PathBuf {
        self.trees_dir().join(format!("{tree}.json"))
    }

    /// Which of `digests` the target does not have yet.
    pub fn missing(&self, digests: &[String]) -> Result<Vec<String>, PublishError> {
        if let Some(d) = digests.iter().find(|d| !valid_digest(d)) {
            return Err(PublishError::BadDigest(airlock_model::text::one_line(d, 100)));
        }
        let sizes = self.blob_sizes(digests.iter().map(String::as_str))?;
        Ok(digests.iter().zip(sizes).filter(|(_, size)| size.is_none()).map(|(d, _)| d.clone()).collect())
    }

    /// Stores one uploaded blob: exactly `len` bytes from `reader` that
    /// must hash to `sha256`. Returns whether it was new. A blob over the
    /// target's file limit is refused before a byte is read; one that is
    /// short or does not match is not kept.
    pub fn put_blob(&self, sha256: &str, len: u64, reader: impl Read) -> Result<bool, PublishError> {
        self.check_blob(sha256, len)?;
        let (actual, got, new) = self.blobs.put_expecting(reader.take(len), sha256, len)?;
        let new = kept(sha256, len, actual, got, new)?;
        self.remember(sha256, len);
        Ok(new)
    }

    /// Starts storing an uploaded blob of `len` bytes that must hash to
    /// `sha256`, for bytes that arrive piece by piece; refused at once if
    /// it is over the target's file limit. [`finish_blob`](Self::finish_blob)
    /// keeps it.
    pub fn blob_writer(&self, sha256: &str, len: u64) -> Result<BlobWriter, PublishError> {
        self.check_blob(sha256, len)?;
        Ok(self.blobs.writer(Some((sha256, len)))?)
    }

    /// Keeps a blob begun with [`blob_writer`](Self::blob_writer) if it is
    /// whole and hashes to its digest; returns whether it was new.
    pub fn finish_blob(&self, writer: BlobWriter) -> Result<bool, PublishError> {
        let (sha256, len) =
            writer.expected().map(|(d, len)| (d.to_owned(), len.unwrap_or_default())).unwrap_or_default();
        let (actual, got, new) = writer.finish()?;
        let new = kept(&sha256, len, actual, got, new)?;
        self.remember(&sha256, len);
        Ok(new)
    }

    /// A blob's digest and length, before a byte of it is taken.
    fn check_blob(&self, sha256: &str, len: u64) -> Result<(), PublishError> {
        if !valid_digest(sha256) {
            return Err(PublishError::BadDigest(airlock_model::text::one_line(sha256, 100)));
        }
        if len > self.limits.max_file_size {
            return Err(PublishError::FileTooLarge {
                what: format!("blob sha256:{sha256}"),
                size: len,
                target: self.name.clone(),
                max: self.limits.max_file_size,
            });
        }
        Ok(())
    }

    /// Deletes what a killed server left in the target: partial uploads
    /// in its blob store (see [`ArtifactStore::remove_partial`]) and the
    /// temporary files of commits, untouched for `untouched`.
    pub fn remove_partial(&self, untouched: std::time::Duration) -> Result<usize, PublishError> {
        let mut removed = self.blobs.remove_partial(untouched)?;
        for (dir, prefix) in [(self.trees_dir(), TREE_PARTIAL), (self.builds_dir(), COMMIT_PARTIAL)] {
            removed += crate::artifacts::remove_stale(&dir, prefix, untouched).map_err(|e| self.io(e))?;
        }
        Ok(removed)
    }

    /// Stores a blob from a local file that is known to hash to `sha256`
    /// (an artifact of this engine), hard-linking when the file system
    /// allows and copying with verification otherwise.
    pub fn put_local(&self, sha256: &str, file: &Path) -> Result<bool, PublishError> {
        if valid_digest(sha256) && self.blob_sizes(std::iter::once(sha256))?[0].is_some() {
            return Ok(false);
        }
        let len = std::fs::metadata(file).map_err(|e| self.io(e))?.len();
        let reader = std::fs::File::open(file).map_err(|e| self.io(e))?;
        self.put_blob(sha256, len, reader)
    }

    /// Checks a manifest against the rules and the target's limits, and
    /// returns it sorted by path, ready for [`commit_checked`](Self::commit_checked).
    /// Every blob must be present, with the size the manifest says.
    pub fn check(&self, files: Vec<ManifestEntry>) -> Result<Checked, PublishError> {
        let mut files = files;
        if files.is_empty() {
            return Err(PublishError::Empty);
        }
        if files.len() as u64 > self.limits.max_files {
            return Err(PublishError::TooManyFiles {
                target: self.name.clone(),
                count: files.len() as u64,
                max: self.limits.max_files,
            });
        }
        let mut seen = HashSet::with_capacity(files.len());
        for f in &files {
            check_path(&f.path)?;
            if !valid_digest(&f.sha256) {
                return Err(PublishError::BadDigest(airlock_model::text::one_line(&f.sha256, 100)));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(PublishError::DuplicatePath(f.path.clone()));
            }
        }
        for f in &files {
            let mut end = 0;
            while let Some(i) = f.path[end..].find('/') {
                end += i;
                if seen.contains(&f.path[..end]) {
                    return Err(PublishError::PathClash { file: f.path[..end].to_owned(), inside: f.path.clone() });
                }
                end += 1;
            }
        }
        if let Some(f) = files.iter().find(|f| f.size > self.limits.max_file_size) {
            return Err(PublishError::FileTooLarge {
                what: format!("`{}`", f.path),
                size: f.size,
                target: self.name.clone(),
                max: self.limits.max_file_size,
            });
        }
        let facts = TreeFacts::of(&files);
        self.check_limits(facts)?;
        let sizes = self.blob_sizes(files.iter().map(|f| f.sha256.as_str()))?;
        for (f, actual) in files.iter().zip(sizes) {
            let Some(actual) = actual else {
                return Err(PublishError::MissingBlob { path: f.path.clone(), sha256: f.sha256.clone() });
            };
            if actual != f.size {
                return Err(PublishError::SizeMismatch { path: f.path.clone(), declared: f.size, actual });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let json = tree_json(&files);
        let tree = hex::encode(Sha256::digest(&json));
        let write = self.known_tree(&tree).is_none().then_some(json);
        Ok(Checked { tree, facts, write })
    }

    /// Checks a tree the target holds, named by its digest, for a commit
    /// under a new build id: against the target's limits as they are now,
    /// and, unless this process committed or checked it before, every
    /// file of it as [`check`](Self::check) does. A tree the target does
    /// not hold is [`PublishError::UnknownTree`]: the client sends the
    /// files instead.
    pub fn check_tree(&self, tree: &str) -> Result<Checked, PublishError> {
        if !valid_digest(tree) {
            return Err(PublishError::BadDigest(airlock_model::text::one_line(tree, 100)));
        }
        if let Some(facts) = self.known_tree(tree) {
            self.check_limits(facts)?;
            return Ok(Checked { tree: tree.to_owned(), facts, write: None });
        }
        let files = self.read_tree(tree)?;
        let checked = self.check(files)?;
        // Sorted already when it was stored; a file that is not is not
        // what it is named.
        if checked.tree != tree {
            return Err(ArtifactError::Corrupt { expected: tree.to_owned(), actual: checked.tree }.into());
        }
        // A process killed between linking the tree and syncing its
        // directory may have left a name that a power loss would take:
        // a record about to name it must not outlive it.
        sync_dir(&self.trees_dir()).map_err(|e| self.io(e))?;
        self.remember_tree(tree, checked.facts);
        Ok(Checked { write: None, ..checked })
    }

    /// A tree's files, read back checked against its digest.
    fn read_tree(&self, tree: &str) -> Result<Vec<ManifestEntry>, PublishError> {
        let bytes = match std::fs::read(self.tree_path(tree)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PublishError::UnknownTree { target: self.name.clone(), tree: tree.to_owned() });
            }
            Err(e) => return Err(self.io(e)),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != tree {
            return Err(ArtifactError::Corrupt { expected: tree.to_owned(), actual }.into());
        }
        let parsed: TreeFile = serde_json::from_slice(&bytes).map_err(|e| self.io(e.into()))?;
        Ok(parsed.files)
    }

    /// The target's limits on the number of files, the largest file and
    /// the bytes of one publish.
    fn check_limits(&self, facts: TreeFacts) -> Result<(), PublishError> {
        if facts.files > self.limits.max_files {
            return Err(PublishError::TooManyFiles {
                target: self.name.clone(),
                count: facts.files,
                max: self.limits.max_files,
            });
        }
        if facts.largest > self.limits.max_file_size {
            return Err(PublishError::FileTooLarge {
                what: "a file of the tree".into(),
                size: facts.largest,
                target: self.name.clone(),
                max: self.limits.max_file_size,
            });
        }
        if facts.bytes > self.limits.max_total {
            return Err(PublishError::TotalTooLarge {
                target: self.name.clone(),
                total: facts.bytes,
                max: self.limits.max_total,
            });
        }
        Ok(())
    }

    /// Publishes `files` under `build`, all at once or not at all.
    ///
    /// The tree is written and synced under its digest (unless the target
    /// holds it already), then the build's record under a temporary name,
    /// linked to its final name: the link either appears whole or, when
    /// the build id is taken, fails. A taken build id holding the same
    /// tree is [`Committed::AlreadyThere`]; a different one is a
    /// [`PublishError::Conflict`].
    pub fn commit(&self, build: &str, files: Vec<ManifestEntry>) -> Result<(Committed, Commit), PublishError> {
        check_build_id(build)?;
        let checked = self.check(files)?;
        self.commit_checked(build, checked)
    }

    /// [`commit`](Self::commit) of a tree [`check`](Self::check) or
    /// [`check_tree`](Self::check_tree) passed: a caller that charges a
    /// quota for a commit can charge it only once the tree is known to be
    /// good.
    pub fn commit_checked(&self, build: &str, checked: Checked) -> Result<(Committed, Commit), PublishError> {
        self.commit_attested(build, checked, None)
    }

    /// [`commit_checked`](Self::commit_checked) with the signed provenance
    /// of the tree: stored as a blob first, and named in the build's
    /// record, so the tree and its provenance appear together. A build
    /// already there keeps the provenance it was published with.
    pub fn commit_attested(
        &self,
        build: &str,
        checked: Checked,
        provenance: Option<&[u8]>,
    ) -> Result<(Committed, Commit), PublishError> {
        check_build_id(build)?;
        let provenance = match provenance {
            Some(bytes) => Some(self.blobs.put(bytes)?.0),
            None => None,
        };
        if let Some(existing) = self.record(build)? {
            return self.same_or_conflict(existing, &checked);
        }
        if let Some(json) = &checked.write {
            self.write_tree(&checked.tree, json)?;
        }
        self.remember_tree(&checked.tree, checked.facts);
        let record = BuildRecord {
            target: self.name.clone(),
            build: build.to_owned(),
            created_ms: now_ms(),
            tree: Some(checked.tree.clone()),
            files: Vec::new(),
            provenance,
        };
        let dir = self.builds_dir();
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let final_path = dir.join(format!("{build}.json"));
        let mut tmp = tempfile::Builder::new().prefix(COMMIT_PARTIAL).tempfile_in(&dir).map_err(|e| self.io(e))?;
        let bytes = serde_json::to_vec(&record).map_err(|e| self.io(e.into()))?;
        tmp.write_all(&bytes).map_err(|e| self.io(e))?;
        tmp.as_file().sync_all().map_err(|e| self.io(e))?;
        match std::fs::hard_link(tmp.path(), &final_path) {
            Ok(()) => {
                // The name must survive a power loss before anyone is told.
                sync_dir(&dir).map_err(|e| self.io(e))?;
                Ok((Committed::Created, self.summary(record, checked.facts)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another publisher won the race.
                let existing = self.record(build)?.ok_or_else(|| self.io(e))?;
                self.same_or_conflict(existing, &checked)
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Writes a tree file, synced, its name too. One already there (an
    /// earlier commit's, perhaps of a process killed before it synced the
    /// name) only has its name synced.
    fn write_tree(&self, tree: &str, json: &[u8]) -> Result<(), PublishError> {
        let path = self.tree_path(tree);
        let dir = self.trees_dir();
        if path.is_file() {
            return sync_dir(&dir).map_err(|e| self.io(e));
        }
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let mut tmp = tempfile::Builder::new().prefix(TREE_PARTIAL).tempfile_in(&dir).map_err(|e| self.io(e))?;
        tmp.write_all(json).map_err(|e| self.io(e))?;
        tmp.as_file().sync_all().map_err(|e| self.io(e))?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            // Another commit of the same tree wrote the same bytes.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.io(e.error)),
        }
        // A build's record must never outlive the tree it names.
        sync_dir(&dir).map_err(|e| self.io(e))
    }

    fn summary(&self, record: BuildRecord, facts: TreeFacts) -> Commit {
        Commit {
            tree: record.tree(),
            target: record.target,
            build: record.build,
            files: facts.files,
            bytes: facts.bytes,
            provenance: record.provenance,
        }
    }

    fn same_or_conflict(
        &self,
        existing: BuildRecord,
        attempted: &Checked,
    ) -> Result<(Committed, Commit), PublishError> {
        if existing.tree() == attempted.tree {
            Ok((Committed::AlreadyThere, self.summary(existing, attempted.facts)))
        } else {
            Err(PublishError::Conflict { target: self.name.clone(), build: existing.build })
        }
    }

    /// The record of the build `build`, if there is one.
    fn record(&self, build: &str) -> Result<Option<BuildRecord>, PublishError> {
        check_build_id(build)?;
        match std::fs::read(self.builds_dir().join(format!("{build}.json"))) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| self.io(e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// The tree published under `build`, if there is one.
    pub fn published(&self, build: &str) -> Result<Option<Published>, PublishError> {
        let Some(record) = self.record(build)? else { return Ok(None) };
        let tree = record.tree();
        let files = match &record.tree {
            Some(t) => self.read_tree(t)?,
            None => record.files,
        };
        Ok(Some(Published {
            target: record.target,
            build: record.build,
            created_ms: record.created_ms,
            tree,
            files,
            provenance: record.provenance,
        }))
    }

    /// The signed provenance of the tree published under `build` (a DSSE
    /// envelope, its JSON text), read back checked against its digest;
    /// `None` when there is no such tree or it has none.
    pub fn provenance(&self, build: &str) -> Result<Option<Vec<u8>>, PublishError> {
        let Some(published) = self.published(build)? else { return Ok(None) };
        let Some(digest) = published.provenance else { return Ok(None) };
        Ok(Some(self.blobs.read_verified(&digest)?))
    }

    /// Build ids published here, with when, newest first.
    pub fn builds(&self) -> Result<Vec<(String, u64)>, PublishError> {
        let entries = match std::fs::read_dir(self.builds_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = entry.file_name();
            let Some(build) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if check_build_id(build).is_err() {
                continue;
            }
            let when = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            out.push((build.to_owned(), when));
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Opens a blob for reading. Blobs are verified when they arrive;
    /// whoever serves one hashes it again as it reads.
    pub fn open_blob(&self, sha256: &str) -> Result<std::fs::File, PublishError> {
        let path = self.blobs.path(sha256)?;
        std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PublishError::Artifact(ArtifactError::Missing(sha256.to_owned())),
            _ => self.io(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn target(dir: &Path) -> TargetStore {
        let limits = PublishTarget {
            dir: String::new(),
            description: None,
            max_file_size: 1000,
            max_files: 5,
            max_total: 1500,
            span: Default::default(),
        };
        TargetStore::new("snapshots", dir.to_owned(), limits)
    }

    fn blob(t: &TargetStore, bytes: &[u8]) -> String {
        let d = hex::encode(Sha256::digest(bytes));
        t.put_blob(&d, bytes.len() as u64, bytes).expect("put");
        d
    }

    fn entry(path: &str, sha256: &str, size: u64) -> ManifestEntry {
        ManifestEntry { path: path.into(), sha256: sha256.into(), size }
    }

    #[test]
    fn paths_and_build_ids_are_checked() {
        for ok in ["a", "dist/app.js", "a/b/c.tar.gz", "..hidden", "x..y"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\\b", "backslash"),
            ("a\u{202e}txt.exe", "bidirectional"),
            ("a\nb", "control"),
        ] {
            let e = check_path(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(check_path(&"a".repeat(1025)).is_err());
        for ok in ["pr-481-7", "v1.2.3", "20261124-101010-ab12"] {
            assert!(check_build_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_build_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uploads_are_verified_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let d = hex::encode(Sha256::digest(b"hello"));
        assert_eq!(t.missing(std::slice::from_ref(&d)).expect("missing"), vec![d.clone()]);
        let other = hex::encode(Sha256::digest(b"other"));
        assert!(matches!(t.put_blob(&other, 5, &b"hello"[..]), Err(PublishError::DigestMismatch { .. })));
        assert!(matches!(t.put_blob(&d, 9, &b"hello"[..]), Err(PublishError::Truncated { got: 5, .. })));
        assert!(matches!(t.put_blob(&d, 1001, &b"hello"[..]), Err(PublishError::FileTooLarge { .. })));
        assert_eq!(t.missing(std::slice::from_ref(&d)).expect("missing"), vec![d.clone()], "nothing was kept");
        assert!(t.put_blob(&d, 5, &b"hello"[..]).expect("put"));
        assert!(!t.put_blob(&d, 5, &b"hello"[..]).expect("again"), "the second upload is not new");
        assert!(t.missing(&[d]).expect("missing").is_empty());
        assert!(matches!(t.missing(&["zz".into()]), Err(PublishError::BadDigest(_))));
    }

    #[test]
    fn manifests_are_checked_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let a = blob(&t, b"aaa");
        let big = blob(&t, &[7u8; 900]);
        let absent = hex::encode(Sha256::digest(b"never uploaded"));
        type Is = fn(&PublishError) -> bool;
        let cases: Vec<(Vec<ManifestEntry>, &str, Is)> = vec![
            (vec![], "empty", |e| matches!(e, PublishError::Empty)),
            (vec![entry("../x", &a, 3)], "bad path", |e| matches!(e, PublishError::BadPath { .. })),
            (vec![entry("x", &a, 3), entry("x", &a, 3)], "duplicate", |e| matches!(e, PublishError::DuplicatePath(_))),
            (vec![entry("x", &a, 3), entry("x/y", &a, 3)], "clash", |e| matches!(e, PublishError::PathClash { .. })),
            (vec![entry("x", "nothex", 3)], "bad digest", |e| matches!(e, PublishError::BadDigest(_))),
            (vec![entry("x", &absent, 3)], "missing blob", |e| matches!(e, PublishError::MissingBlob { .. })),
            (vec![entry("x", &a, 4)], "size", |e| matches!(e, PublishError::SizeMismatch { .. })),
            (vec![entry("x", &a, 1001)], "file too large", |e| matches!(e, PublishError::FileTooLarge { .. })),
            (vec![entry("x", &big, 900), entry("y", &big, 900)], "total", |e| {
                matches!(e, PublishError::TotalTooLarge { .. })
            }),
            ((0..6).map(|i| entry(&format!("f{i}"), &a, 3)).collect(), "too many", |e| {
                matches!(e, PublishError::TooManyFiles { .. })
            }),
        ];
        for (files, what, is) in cases {
            let e = t.commit("b1", files).expect_err(what);
            assert!(is(&e), "{what}: {e}");
        }
        assert!(t.published("b1").expect("read").is_none(), "no refused publish is visible");
        assert!(t.builds().expect("builds").is_empty());
    }

    #[test]
    fn a_commit_is_atomic_and_taken_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let a = blob(&t, b"aaa");
        let b = blob(&t, b"bbbb");
        let files = vec![entry("z/b.txt", &b, 4), entry("a.txt", &a, 3)];
        let (c, p) = t.commit("pr-1", files.clone()).expect("commit");
        assert_eq!((c, p.files, p.bytes), (Committed::Created, 2, 7));
        assert_eq!(t.commit("pr-1", files).expect("retry").0, Committed::AlreadyThere);
        let e = t.commit("pr-1", vec![entry("a.txt", &b, 4)]).expect_err("conflict");
        assert!(matches!(e, PublishError::Conflict { .. }), "{e}");
        let read = t.published("pr-1").expect("read").expect("there");
        assert_eq!(read.files, [entry("a.txt", &a, 3), entry("z/b.txt", &b, 4)], "sorted by path");
        assert_eq!((read.tree.as_str(), read.bytes()), (p.tree.as_str(), 7));

        // Publishers racing for one build id with different trees: one wins.
        let t = &t;
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (a, b) = (a.clone(), b.clone());
                    s.spawn(move || {
                        let files = if i % 2 == 0 { vec![entry("x", &a, 3)] } else { vec![entry("x", &b, 4)] };
                        t.commit("race", files)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let created = outcomes.iter().filter(|o| matches!(o, Ok((Committed::Created, _)))).count();
        let conflicts = outcomes.iter().filter(|o| matches!(o, Err(PublishError::Conflict { .. }))).count();
        assert_eq!(created, 1);
        assert_eq!(
            created + conflicts + outcomes.iter().filter(|o| matches!(o, Ok((Committed::AlreadyThere, _)))).count(),
            8
        );
        assert!(conflicts >= 1);
    }

    /// A tree committed once is committed again by its digest alone,
    /// without its files being read or checked again, and still within
    /// the target's limits as they are now; a tree the target does not
    /// hold is refused, as is a damaged one.
    #[test]
    fn a_tree_is_committed_again_by_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let a = blob(&t, b"aaa");
        let b = blob(&t, b"bbbb");
        let files = vec![entry("z/b.txt", &b, 4), entry("a.txt", &a, 3)];
        let mut sorted = files.clone();
        sorted.sort_by(|x, y| x.path.cmp(&y.path));
        let tree = tree_digest(&sorted);
        let unknown = t.check_tree(&tree).expect_err("not committed yet");
        assert!(matches!(unknown, PublishError::UnknownTree { .. }), "{unknown}");
        assert!(matches!(t.check_tree("zz"), Err(PublishError::BadDigest(_))));

        let (_, first) = t.commit("b1", files).expect("commit");
        assert_eq!(first.tree, tree, "named by the digest of its sorted manifest");
        let stored = std::fs::read(dir.path().join(format!("trees/{tree}.json"))).expect("the tree file");
        assert_eq!(hex::encode(Sha256::digest(&stored)), tree);
        let record = std::fs::read(dir.path().join("builds/b1.json")).expect("the record");
        assert!(record.len() < 200, "the build's record names its tree, not its files");

        let (c, again) = t.commit_checked("b2", t.check_tree(&tree).expect("known")).expect("commit by digest");
        assert_eq!((c, again.files, again.bytes, again.tree.as_str()), (Committed::Created, 2, 7, tree.as_str()));
        let read = t.published("b2").expect("read").expect("there");
        assert_eq!(read.files, sorted);
        assert_eq!(
            t.commit_checked("b2", t.check_tree(&tree).expect("known")).expect("retry").0,
            Committed::AlreadyThere
        );

        // A server started again knows nothing: it reads the tree, checks
        // it whole, and refuses it when it no longer fits the target.
        let limits = PublishTarget { max_files: 1, ..t.limits().clone() };
        let smaller = TargetStore::new("snapshots", dir.path().to_owned(), limits);
        let e = smaller.check_tree(&tree).expect_err("over the new limit");
        assert!(matches!(e, PublishError::TooManyFiles { count: 2, max: 1, .. }), "{e}");
        let fresh = target(dir.path());
        std::fs::remove_file(t.blobs.path(&b).expect("path")).expect("lose a blob");
        let e = fresh.check_tree(&tree).expect_err("a blob is gone");
        assert!(matches!(e, PublishError::MissingBlob { .. }), "{e}");
        std::fs::write(dir.path().join(format!("trees/{tree}.json")), b"{\"files\":[]}").expect("damage");
        let e = target(dir.path()).check_tree(&tree).expect_err("damaged");
        assert!(matches!(e, PublishError::Artifact(ArtifactError::Corrupt { .. })), "{e}");
    }

    /// A build recorded with its files, as before trees were kept apart,
    /// reads as it did, and holds its build id against other trees.
    #[test]
    fn a_record_that_holds_its_files_is_read_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        let a = blob(&t, b"aaa");
        let files = vec![entry("a.txt", &a, 3)];
        std::fs::create_dir_all(dir.path().join("builds")).expect("mkdir");
        let old = serde_json::json!({ "target": "snapshots", "build": "v1", "created_ms": 5, "files": files });
        std::fs::write(dir.path().join("builds/v1.json"), old.to_string()).expect("write");
        let read = t.published("v1").expect("read").expect("there");
        assert_eq!((read.files.as_slice(), read.tree.clone()), (files.as_slice(), tree_digest(&files)));
        assert_eq!(t.commit("v1", files).expect("the same tree").0, Committed::AlreadyThere);
        let b = blob(&t, b"b");
        let e = t.commit("v1", vec![entry("b", &b, 1)]).expect_err("another tree");
        assert!(matches!(e, PublishError::Conflict { .. }), "{e}");
    }

    #[test]
    fn what_a_killed_commit_left_is_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = target(dir.path());
        for (sub, name) in [("trees", ".tree-x1"), ("builds", ".commit-x2"), ("builds", "kept.json")] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
            std::fs::write(dir.path().join(sub).join(name), b"partial").expect("write");
        }
        assert_eq!(t.remove_partial(std::time::Duration::from_secs(3600)).expect("clean"), 0, "too fresh");
        assert_eq!(t.remove_partial(std::time::Duration::ZERO).expect("clean"), 2);
        assert!(dir.path().join("builds/kept.json").is_file());
    }
}
