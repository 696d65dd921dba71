//! The content-addressed artifact store: a local directory, in front of
//! an S3-compatible object store when servers on several machines share
//! their artifacts (see [`ObjectTier`]).

mod shared;

pub use shared::ObjectTier;

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Errors of the artifact store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Disk trouble.
    #[error("artifact store at {}: {source}", dir.display())]
    Io {
        /// Where.
        dir: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// The bytes on disk no longer hash to their name.
    #[error("artifact sha256:{expected} is damaged on disk (its content hashes to sha256:{actual}); it was not used")]
    Corrupt {
        /// The digest it is stored under.
        expected: String,
        /// What its bytes hash to now.
        actual: String,
    },
    /// No blob with this digest.
    #[error("artifact sha256:{0} is not in the store")]
    Missing(String),
    /// A digest that is not 64 lowercase hex characters.
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
    /// An object store location that cannot be used.
    #[error("artifact store `{url}`: {why}")]
    BadLocation {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The shared object store failed or could not be reached.
    #[error("object store {url}: {source}")]
    Shared {
        /// The store's `s3://` URL.
        url: String,
        /// What it answered.
        source: Box<object_store::Error>,
    },
}

/// Blobs stored under `ROOT/sha256/ab/cdef…`, written once, never
/// changed; with an [`ObjectTier`], a blob is kept there too, and `ROOT`
/// is the cache of what this process has read or written.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    shared: Option<Arc<ObjectTier>>,
    /// Which of the 256 `sha256/xx/` directories (and, last, `tmp/`) are
    /// known to exist, so storing a blob makes no `mkdir` or `stat` call
    /// after the first in its directory.
    made: Arc<[AtomicBool; 257]>,
}

/// Copy buffer size: large enough to stream at disk speed.
const CHUNK: usize = 256 * 1024;

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Copies `from` into `to` in chunks and returns the sha256 (hex) and
/// size of what was copied.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

impl ArtifactStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        // An absolute root spares a `getcwd` per temporary file.
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root, shared: None, made: Arc::new(std::array::from_fn(|_| AtomicBool::new(false))) }
    }

    /// Keeps blobs in `tier` as well, with this store's directory as its
    /// local cache: a blob is stored once it is in the object store, and
    /// one missing here is fetched from there, verified.
    pub fn with_shared(mut self, tier: ObjectTier) -> Self {
        self.shared = Some(Arc::new(tier));
        self
    }

    /// The shared object store's URL, if blobs are kept in one.
    pub fn shared_url(&self) -> Option<&str> {
        self.shared.as_deref().map(ObjectTier::url)
    }

    fn io(&self, source: std::io::Error) -> ArtifactError {
        ArtifactError::Io { dir: self.root.clone(), source }
    }

    /// Where the blob with this digest lives on this machine (it may not
    /// be there yet; [`local`](Self::local) fetches it).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        if !valid_digest(sha256) {
            return Err(ArtifactError::BadDigest(sha256.to_owned()));
        }
        Ok(self.root.join("sha256").join(&sha256[..2]).join(&sha256[2..]))
    }

    /// Whether a blob is present, here or in the shared object store (not
    /// verified). An object store that cannot be reached has nothing.
    pub fn contains(&self, sha256: &str) -> bool {
        matches!(self.size(sha256), Ok(Some(_)))
    }

    /// The size of a blob, if the store has it (here or in the shared
    /// object store).
    pub fn size(&self, sha256: &str) -> Result<Option<u64>, ArtifactError> {
        match std::fs::metadata(self.path(sha256)?) {
            Ok(meta) => return Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(e)),
        }
        match &self.shared {
            Some(tier) => tier.size(sha256),
            None => Ok(None),
        }
    }

    /// The path of a blob on this machine, fetched from the shared object
    /// store (and verified) if it is not here yet. The blob is marked
    /// used: [`trim_cache`](Self::trim_cache) leaves it for [`IN_USE`](crate::tools::IN_USE) at
    /// least, so the path stays good for whoever opens it.
    pub fn local(&self, sha256: &str) -> Result<PathBuf, ArtifactError> {
        let path = self.path(sha256)?;
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
        {
            mark_used(&path, &meta);
            return Ok(path);
        }
        match &self.shared {
            Some(tier) => tier.fetch(sha256, self).map(|()| path),
            None => Err(ArtifactError::Missing(sha256.to_owned())),
        }
    }

    /// Streams `reader` into the store and returns `(sha256, size, new)`.
    /// `new` is false when the store already had these bytes: they are
    /// then not written a second time.
    pub fn put(&self, reader: impl Read) -> Result<(String, u64, bool), ArtifactError> {
        self.put_inner(reader, None)
    }

    /// Like [`put`](Self::put), but keeps the bytes only if there are
    /// `len` of them and they hash to `sha256`; returns what arrived
    /// either way.
    pub fn put_expecting(
        &self,
        reader: impl Read,
        sha256: &str,
        len: u64,
    ) -> Result<(String, u64, bool), ArtifactError> {
        self.put_inner(reader, Some((sha256, len)))
    }

    /// Creates `dir` (the `sha256/xx` directory of index `slot`, or
    /// `tmp` at 256) unless this process already did.
    fn make_dir(&self, slot: usize, dir: &Path) -> Result<(), ArtifactError> {
        let made = &self.made[slot];
        if !made.load(Ordering::Relaxed) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
            made.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Where new bytes are written before they are kept: beside where
    /// they will stay when their digest is known, so keeping them is a
    /// rename within one directory.
    fn staging_dir(&self, expected: Option<&str>) -> Result<PathBuf, ArtifactError> {
        let (slot, dir) = match expected {
            Some(digest) => {
                let dir = self.path(digest)?.parent().map(Path::to_owned).unwrap_or_else(|| self.root.clone());
                (usize::from(u8::from_str_radix(&digest[..2], 16).unwrap_or(0)), dir)
            }
            None => (256, self.root.join("tmp")),
        };
        self.make_dir(slot, &dir)?;
        Ok(dir)
    }

    fn put_inner(
        &self,
        mut reader: impl Read,
        expected: Option<(&str, u64)>,
    ) -> Result<(String, u64, bool), ArtifactError> {
        let mut writer = self.writer(expected)?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            };
            writer.write(&buf[..n])?;
        }
        writer.finish()
    }

    /// A blob written piece by piece (an upload arriving over a network),
    /// kept by [`BlobWriter::finish`] only if it has `len` bytes hashing
    /// to `sha256`, when those are given.
    pub fn writer(&self, expected: Option<(&str, u64)>) -> Result<BlobWriter, ArtifactError> {
        let tmp_dir = self.staging_dir(expected.map(|(d, _)| d))?;
        // Stored blobs are never written again; readers get them read-only.
        let tmp = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .tempfile_in(&tmp_dir)
            .map_err(|e| self.io(e))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            hasher: Sha256::new(),
            size: 0,
            expected: expected.map(|(d, len)| (d.to_owned(), Some(len))),
            fetched: false,
        })
    }

    /// Deletes what writers that never finished left behind (a process
    /// killed in the middle of an upload) and that nothing has touched
    /// for `untouched`: a writer going on now keeps its file fresh.
    /// Returns how many it deleted.
    pub fn remove_partial(&self, untouched: std::time::Duration) -> Result<usize, ArtifactError> {
        let mut removed = 0;
        let mut dirs = vec![self.root.join("tmp")];
        match std::fs::read_dir(self.root.join("sha256")) {
            Ok(entries) => dirs.extend(entries.flatten().map(|e| e.path())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(e)),
        }
        for dir in dirs {
            removed += remove_stale(&dir, PARTIAL_PREFIX, untouched).map_err(|e| self.io(e))?;
        }
        Ok(removed)
    }

    /// Removes the blobs used least recently (by [`local`](Self::local),
    /// or stored) until the rest come to at most `limit` bytes, but none
    /// used within `in_use`. Only for a store that is a cache of blobs
    /// kept elsewhere: the local side of an [`ObjectTier`], or an agent's
    /// copies of its server's blobs. Partial writes are left to
    /// [`remove_partial`](Self::remove_partial).
    pub fn trim_cache(&self, limit: u64, in_use: std::time::Duration) -> Result<Trimmed, ArtifactError> {
        let mut blobs = Vec::new();
        let dirs = match std::fs::read_dir(self.root.join("sha256")) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Trimmed::default()),
            Err(e) => return Err(self.io(e)),
        };
        for dir in dirs.flatten() {
            let Ok(entries) = std::fs::read_dir(dir.path()) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() {
                    blobs.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len(), entry.path()));
                }
            }
        }
        let mut trimmed =
            Trimmed { kept: blobs.len(), kept_bytes: blobs.iter().map(|b| b.1).sum(), ..Trimmed::default() };
        blobs.sort();
        let now = std::time::SystemTime::now();
        for (used, len, path) in blobs {
            if trimmed.kept_bytes <= limit || now.duration_since(used).unwrap_or_default() < in_use {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(e)),
            }
            trimmed.kept -= 1;
            trimmed.kept_bytes -= len;
            trimmed.removed += 1;
            trimmed.removed_bytes += len;
        }
        Ok(trimmed)
    }

    /// Copies a blob to `dest`, checking its digest on the way. On a
    /// mismatch `dest` is removed and nothing damaged is left behind.
    pub fn copy_verified(&self, sha256: &str, dest: &Path) -> Result<u64, ArtifactError> {
        let src = self.local(sha256)?;
        let mut file = match std::fs::File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::Missing(sha256.to_owned()));
            }
            Err(e) => return Err(self.io(e)),
        };
        let mut out = std::fs::File::create(dest).map_err(|e| self.io(e))?;
        let (actual, size) = copy_hashing(&mut file, &mut out).map_err(|e| self.io(e))?;
        if actual != sha256 {
            drop(out);
            let _ = std::fs::remove_file(dest);
            return Err(ArtifactError::Corrupt { expected: sha256.to_owned(), actual });
        }
        Ok(size)
    }

    /// Checks that a blob is present and still hashes to its digest,
    /// reading it through once.
    pub fn verify(&self, sha256: &str) -> Result<(), ArtifactError> {
        let mut file = match std::fs::File::open(self.local(sha256)?) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::Missing(sha256.to_owned()));
            }
            Err(e) => return Err(self.io(e)),
        };
        let (actual, _) = copy_hashing(&mut file, &mut std::io::sink()).map_err(|e| self.io(e))?;
        if actual != sha256 {
            return Err(ArtifactError::Corrupt { expected: sha256.to_owned(), actual });
        }
        Ok(())
    }

    /// Reads a whole blob, verified.
    pub fn read_verified(&self, sha256: &str) -> Result<Vec<u8>, ArtifactError> {
        let bytes = match std::fs::read(self.local(sha256)?) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::Missing(sha256.to_owned()));
            }
            Err(e) => return Err(self.io(e)),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            return Err(ArtifactError::Corrupt { expected: sha256.to_owned(), actual });
        }
        Ok(bytes)
    }
}

/// Deletes the files in `dir` whose names start with `prefix` and that
/// nothing has touched for `untouched` (what a killed process left
/// behind); returns how many. A directory that cannot be listed holds
/// nothing to delete.
pub(crate) fn remove_stale(dir: &Path, prefix: &str, untouched: std::time::Duration) -> std::io::Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        if meta.is_file() && age >= untouched {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The bytes of blobs a cache keeps unless told otherwise
/// (`AIRLOCK_ARTIFACT_CACHE_LIMIT`).
pub const DEFAULT_CACHE_LIMIT: u64 = 16 << 30;

/// A use is written down (as the blob's modification time) at most this
/// often, so reading a blob again and again writes nothing.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Marks the blob at `path` (with `meta`) used now, unless that was
/// written down lately.
fn mark_used(path: &Path, meta: &std::fs::Metadata) {
    if meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age < TOUCH_EVERY) {
        return;
    }
    if let Err(e) = touch(path) {
        tracing::debug!(path = %path.display(), "cannot mark a blob used: {e}");
    }
}

/// Sets the modification time of the file at `path` to now: how the
/// host's caches write down a use. A cached file is read-only, but its
/// owner may set its times through a handle opened for reading.
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.set_modified(std::time::SystemTime::now())
}

/// What [`ArtifactStore::trim_cache`] removed and left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Blobs removed.
    pub removed: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Blobs left.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: u64,
}

/// What a writer's temporary file is named with, until it is kept.
const PARTIAL_PREFIX: &str = ".new-";

/// A blob being written; see [`ArtifactStore::writer`]. Dropped
/// unfinished, it leaves nothing behind.
pub struct BlobWriter {
    store: ArtifactStore,
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    /// The digest it must have, and its length if known.
    expected: Option<(String, Option<u64>)>,
    /// Bytes fetched from the shared object store: kept here only.
    fetched: bool,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.hasher.update(bytes);
        self.tmp.write_all(bytes).map_err(|e| self.store.io(e))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest and length it must have to be kept, if it was given.
    pub fn expected(&self) -> Option<(&str, Option<u64>)> {
        self.expected.as_ref().map(|(d, len)| (d.as_str(), *len))
    }

    /// Keeps the blob, unless it is not what was expected; returns
    /// `(sha256, size, new)` of what arrived either way. `new` is false
    /// when the store had these bytes already, or did not keep them.
    pub fn finish(self) -> Result<(String, u64, bool), ArtifactError> {
        let Self { store, tmp, hasher, size, expected, fetched } = self;
        let digest = hex::encode(hasher.finalize());
        if expected.as_ref().is_some_and(|(d, len)| *d != digest || len.is_some_and(|len| len != size)) {
            // Dropping `tmp` deletes what arrived.
            return Ok((digest, size, false));
        }
        let dest = store.path(&digest)?;
        if expected.is_none() {
            store.staging_dir(Some(&digest))?;
        }
        let new = match tmp.persist_noclobber(&dest) {
            Ok(_) => true,
            // Someone stored the same bytes first; they are in use again.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(meta) = std::fs::metadata(&dest) {
                    mark_used(&dest, &meta);
                }
                false
            }
            Err(e) => return Err(store.io(e.error)),
        };
        // Kept only once every server can read it.
        if let Some(tier) = store.shared.as_deref().filter(|_| !fetched) {
            tier.keep(&digest, &dest)?;
        }
        Ok((digest, size, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_once_and_verifies_on_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let (d1, size, new1) = store.put(&b"hello"[..]).expect("put");
        let (d2, _, new2) = store.put(&b"hello"[..]).expect("put again");
        assert_eq!((d1.as_str(), size, new1, new2), (d2.as_str(), 5, true, false));
        assert_eq!(d1, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");

        // Damage the blob behind the store's back: reading it is refused.
        let path = store.path(&d1).expect("path");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        std::fs::write(&path, b"jello").expect("damage");
        let out = dir.path().join("copy");
        assert!(matches!(store.copy_verified(&d1, &out), Err(ArtifactError::Corrupt { .. })));
        assert!(!out.exists(), "a damaged copy is not left behind");
        assert!(matches!(store.read_verified(&d1), Err(ArtifactError::Corrupt { .. })));
        assert!(matches!(store.verify(&d1), Err(ArtifactError::Corrupt { .. })));
    }

    /// Sets a blob's last use `ago` back.
    fn used_ago(store: &ArtifactStore, sha: &str, ago: std::time::Duration) {
        let file = std::fs::File::open(store.path(sha).expect("path")).expect("open");
        file.set_modified(std::time::SystemTime::now() - ago).expect("set time");
    }

    #[test]
    fn a_cache_is_trimmed_least_recently_used_first_and_never_what_is_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path().join("a"));
        let hour = std::time::Duration::from_secs(3600);
        let put = |bytes: &[u8]| store.put(bytes).expect("put").0;
        let (old, older, oldest, fresh) = (put(b"old--"), put(b"older"), put(b"oldst"), put(b"fresh"));
        used_ago(&store, &old, 3 * hour);
        used_ago(&store, &older, 4 * hour);
        used_ago(&store, &oldest, 5 * hour);
        // A partial write is no blob: never counted, never removed here.
        let elsewhere = "ab".repeat(32);
        let partial = store.writer(Some((&elsewhere, 1))).expect("writer");
        let staging = store.path(&elsewhere).expect("path").parent().expect("dir").to_owned();
        for entry in std::fs::read_dir(&staging).expect("dir").flatten() {
            let file = std::fs::File::open(entry.path()).expect("open");
            file.set_modified(std::time::SystemTime::now() - 9 * hour).expect("set time");
        }

        // Reading a blob marks it used, so it stays.
        store.local(&old).expect("local");
        let trimmed = store.trim_cache(10, crate::tools::IN_USE).expect("trim");
        assert_eq!(trimmed, Trimmed { removed: 2, removed_bytes: 10, kept: 2, kept_bytes: 10 });
        assert!(!store.contains(&oldest) && !store.contains(&older), "the least recently used went first");
        assert!(store.contains(&old) && store.contains(&fresh));
        // Under the bound, nothing goes; over it, nothing in use goes.
        assert_eq!(store.trim_cache(10, crate::tools::IN_USE).expect("trim").removed, 0);
        assert_eq!(store.trim_cache(0, crate::tools::IN_USE).expect("trim").removed, 0, "a blob in use was removed");
        // Storing the same bytes again is a use too.
        used_ago(&store, &fresh, 2 * hour);
        used_ago(&store, &old, 2 * hour);
        put(b"fresh");
        let trimmed = store.trim_cache(0, crate::tools::IN_USE).expect("trim");
        assert_eq!((trimmed.removed, trimmed.kept), (1, 1));
        assert!(store.contains(&fresh) && !store.contains(&old));
        assert_eq!(std::fs::read_dir(&staging).expect("dir").count(), 1, "a partial write was removed");
        drop(partial);
    }
}
