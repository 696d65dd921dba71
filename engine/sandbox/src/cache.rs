//! Compiled plugins on disk, keyed by (plugin digest, engine configuration).
//!
//! Compiling a plugin takes milliseconds for a small step and a minute for
//! a big toolchain; loading the compiled form takes microseconds. Each
//! entry is two files: `KEY.cwasm`, exactly what wasmtime serialized, so
//! that it can be mapped into memory rather than read (a 150 MiB Yosys
//! costs no resident memory until its code runs, and the kernel shares
//! the pages between steps), and `KEY.sum`, the BLAKE3 hash of the first.
//! The sum is checked before wasmtime sees the file: a damaged, truncated
//! or swapped file is recompiled, never run. (BLAKE3 rather than sha256
//! because the check is on the path of every warm run of a big tool: it
//! hashes Yosys's 219 MiB in about 0.03 s on two cores, sha256 in 0.12 s.
//! Plugins themselves are still named by sha256, as policies pin them.)
//!
//! Writes go to a temporary file renamed into place, the sum after the
//! code, so a crash leaves no entry, a whole one, or a sum whose code is
//! missing (a miss). Every use touches the entry; when the entries pass
//! the size bound, the least recently used are removed.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Bytes of compiled plugins kept by default: the big toolchains several
/// times over (Yosys, nextpnr and CPython compile to about 300 MiB).
pub const DEFAULT_COMPILE_CACHE_LIMIT: u64 = 4 << 30;

/// Which hash an entry's sum is, part of every key.
const SUM_FORM: &str = "blake3";

/// How much of an entry is read at a time to check its sum: enough for
/// both cores to hash their halves.
const READ_CHUNK: usize = 8 << 20;

/// Where compiled plugins are kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    limit: u64,
}

/// A verified entry, open: the file wasmtime maps.
#[derive(Debug)]
pub struct Cached {
    /// The compiled code, positioned at its start.
    pub file: File,
    /// Which file it is.
    pub id: FileId,
}

/// Which file an entry is, by device and inode. An entry's file is never
/// written after it is renamed into place (a new compile replaces it with
/// another file), so a file known by its id to have had its sum checked
/// holds the same bytes for as long as someone keeps it open (which also
/// keeps its inode from being reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

/// Compiled code of a core module that a step process may map without
/// checking its sum again, because the engine that starts it made or
/// checked it and keeps it open.
#[derive(Debug, Clone)]
pub(crate) enum Vouched {
    /// The cache entry with this identity.
    Entry(FileId),
    /// The compiler's output just now, in a sealed memory file of the
    /// engine's process, while its cache entry is written behind it. The
    /// step process opens it through `/proc`.
    Memory(Arc<File>),
}

impl Vouched {
    /// Where another process of this user opens the memory file: its
    /// descriptor in this process, through `/proc`.
    pub(crate) fn handed_path(file: &File) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd()))
    }
}

/// Puts compiled code in a sealed memory file: where a step process maps
/// a tool's code from on its first use. On the reference machine this
/// takes 0.09 s for Yosys's 217 MB of code, where writing them into a
/// file on disk takes 0.45–0.5 s; the cache entry is written meanwhile,
/// beside the running step.
pub(crate) fn in_memory(name: &str, code: &[u8]) -> std::io::Result<File> {
    use memfd::FileSeal;
    let fd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(format!("airlock-compiled-{name}"))
        .map_err(std::io::Error::other)?;
    fd.as_file().write_all(code)?;
    // Nobody, this process included, can change it after this.
    fd.add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealWrite, FileSeal::SealSeal])
        .map_err(std::io::Error::other)?;
    let mut file = fd.into_file();
    file.rewind()?;
    Ok(file)
}

/// Tests: entries written behind take a while, as Yosys's do.
#[cfg(test)]
pub(crate) static SLOW_WRITES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Cache entries being written on threads of their own, waited for when
/// the sandbox goes (so a finished `airlock run` or `airlock fetch` has
/// left its entries in place).
#[derive(Debug, Default)]
pub(crate) struct WriteBehind(Mutex<Vec<(String, std::thread::JoinHandle<()>)>>);

impl WriteBehind {
    /// Writes `code` into `cache` on a thread of its own; failing to is
    /// logged (the steps that need it run from memory meanwhile, and the
    /// next engine compiles it again).
    pub(crate) fn put(&self, cache: &CompileCache, digest: &str, engine: &wasmtime::Engine, code: Vec<u8>) {
        let key = CompileCache::key(digest, engine);
        let (cache, digest, engine) = (cache.clone(), digest.to_owned(), engine.clone());
        let write = move || {
            // Behind the step: the lowest priority (on Linux a thread's
            // own, inherited by the thread it starts to take the sum), so
            // that the writing takes only a core the engine and the
            // tool's process leave idle (at the engine's priority, the
            // step process started only once the sum was taken, 50 ms
            // later under `strace`).
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
                tracing::debug!("cannot lower the priority of the compile cache's writer: {e}");
            }
            #[cfg(test)]
            if SLOW_WRITES.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            let started = std::time::Instant::now();
            match cache.put(&digest, &engine, &code) {
                Ok(()) => tracing::debug!(took = ?started.elapsed(), plugin = digest, "stored in the compile cache"),
                Err(e) => tracing::warn!(dir = %cache.dir().display(), "cannot cache a compiled plugin: {e}"),
            }
        };
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|(_, h)| !h.is_finished());
        match std::thread::Builder::new().name("airlock-cache-write".into()).spawn(write) {
            Ok(handle) => pending.push((key, handle)),
            Err(e) => tracing::warn!("cannot start a thread to write the compile cache: {e}"),
        }
    }

    /// Waits until the entry for this plugin and engine is written, if it
    /// is being written: a step loading it meanwhile finds it in the
    /// cache rather than compiling it again.
    pub(crate) fn wait_for(&self, plugin_digest: &str, engine: &wasmtime::Engine) {
        let key = CompileCache::key(plugin_digest, engine);
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (these, others) = std::mem::take(&mut *pending).into_iter().partition(|(k, _)| *k == key);
        *pending = others;
        drop(pending);
        Self::join(these);
    }

    /// Waits until every entry begun is written (or failed).
    pub(crate) fn wait(&self) {
        Self::join(std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner())));
    }

    fn join(handles: Vec<(String, std::thread::JoinHandle<()>)>) {
        for (_, handle) in handles {
            let _ = handle.join();
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.wait();
    }
}

impl FileId {
    fn of(file: &File) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        Some(Self { dev: meta.dev(), ino: meta.ino() })
    }
}

impl CompileCache {
    /// A cache in `dir`, created when first written to, holding up to
    /// [`DEFAULT_COMPILE_CACHE_LIMIT`] bytes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), limit: DEFAULT_COMPILE_CACHE_LIMIT }
    }

    /// The same cache holding up to `bytes` of compiled code. The entry
    /// just written is always kept, even when it alone is larger.
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn key(plugin_digest: &str, engine: &wasmtime::Engine) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        // The form of the entries: sums were sha256 before BLAKE3; an
        // entry of an older form is a miss, evicted in its turn.
        SUM_FORM.hash(&mut hasher);
        format!("{plugin_digest}-{:016x}", hasher.finish())
    }

    /// The compiled code for this plugin and engine, if a sound entry
    /// exists: its sum checked against the open file, read in pieces.
    pub fn get(&self, plugin_digest: &str, engine: &wasmtime::Engine) -> Option<Cached> {
        let key = Self::key(plugin_digest, engine);
        let sum = std::fs::read(self.dir.join(format!("{key}.sum"))).ok()?;
        let path = self.dir.join(format!("{key}.cwasm"));
        let mut file = File::open(&path).ok()?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0; READ_CHUNK];
        loop {
            match read_full(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update_rayon(&buf[..n]),
                Err(_) => return None,
            };
        }
        if hasher.finalize().as_bytes().as_slice() != sum.as_slice() {
            tracing::warn!(plugin = plugin_digest, "compiled plugin in the cache is damaged; compiling again");
            return None;
        }
        file.rewind().ok()?;
        touch(&path);
        let id = FileId::of(&file)?;
        Some(Cached { file, id })
    }

    /// The entry as [`CompileCache::get`] gives it, without reading it
    /// again when its file is still `checked`, one whose sum was checked
    /// by a process that keeps it open (a step process's engine).
    pub fn get_checked(&self, plugin_digest: &str, engine: &wasmtime::Engine, checked: FileId) -> Option<Cached> {
        let key = Self::key(plugin_digest, engine);
        let file = File::open(self.dir.join(format!("{key}.cwasm"))).ok()?;
        if FileId::of(&file) == Some(checked) {
            return Some(Cached { file, id: checked });
        }
        self.get(plugin_digest, engine)
    }

    /// The compiled code for this plugin and engine, read whole and
    /// checked against its sum: for components, which are small and which
    /// wasmtime maps only by path.
    pub fn get_bytes(&self, plugin_digest: &str, engine: &wasmtime::Engine) -> Option<Vec<u8>> {
        let key = Self::key(plugin_digest, engine);
        let sum = std::fs::read(self.dir.join(format!("{key}.sum"))).ok()?;
        let path = self.dir.join(format!("{key}.cwasm"));
        let code = std::fs::read(&path).ok()?;
        if blake3::Hasher::new().update_rayon(&code).finalize().as_bytes().as_slice() != sum.as_slice() {
            tracing::warn!(plugin = plugin_digest, "compiled plugin in the cache is damaged; compiling again");
            return None;
        }
        touch(&path);
        Some(code)
    }

    /// Stores compiled bytes, then removes the least recently used other
    /// entries while the cache is over its bound. Failing to cache is not
    /// failing to run: the error is returned for the caller to log.
    pub fn put(&self, plugin_digest: &str, engine: &wasmtime::Engine, compiled: &[u8]) -> std::io::Result<()> {
        let key = self.write(plugin_digest, engine, compiled)?.1;
        self.evict(&key)
    }

    /// [`put`](Self::put), and the entry written, open: the very file
    /// holding `compiled`, whose sum need not be checked by whoever keeps
    /// it open (or knows it by its id while it is kept open). Failing to
    /// evict is logged, not returned.
    pub fn put_open(&self, plugin_digest: &str, engine: &wasmtime::Engine, compiled: &[u8]) -> std::io::Result<Cached> {
        let (mut file, key) = self.write(plugin_digest, engine, compiled)?;
        if let Err(e) = self.evict(&key) {
            tracing::warn!(dir = %self.dir.display(), "cannot evict from the compile cache: {e}");
        }
        file.rewind()?;
        let id = FileId::of(&file).ok_or_else(|| std::io::Error::other("cannot read the identity of a cache entry"))?;
        Ok(Cached { file, id })
    }

    /// Writes an entry: its code, then its sum. Returns the code's file,
    /// still open, and the entry's key.
    fn write(
        &self,
        plugin_digest: &str,
        engine: &wasmtime::Engine,
        compiled: &[u8],
    ) -> std::io::Result<(File, String)> {
        std::fs::create_dir_all(&self.dir)?;
        let key = Self::key(plugin_digest, engine);
        let mut code = tempfile::NamedTempFile::new_in(&self.dir)?;
        // Not synced: after a power cut, a file the kernel had not written
        // fails its sum and is compiled again. The sum is taken while the
        // code is written, on a thread of its own (Yosys's 219 MiB of code
        // take about a quarter of a second to write).
        let (written, digest) = std::thread::scope(|s| {
            let digest = s.spawn(|| blake3::hash(compiled));
            (code.write_all(compiled), digest.join())
        });
        written?;
        let digest = digest.map_err(|_| std::io::Error::other("the thread taking a compiled plugin's sum panicked"))?;
        let file = code.persist(self.dir.join(format!("{key}.cwasm"))).map_err(|e| e.error)?;
        let mut sum = tempfile::NamedTempFile::new_in(&self.dir)?;
        sum.write_all(digest.as_bytes())?;
        sum.persist(self.dir.join(format!("{key}.sum"))).map_err(|e| e.error)?;
        Ok((file, key))
    }

    /// Removes entries, oldest use first, until what is left fits the
    /// bound; `keep` is never removed.
    fn evict(&self, keep: &str) -> std::io::Result<()> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            // What a step process reports into lives a step long, and a
            // temporary file as long as a write; one a day old was left
            // by an engine that was killed.
            if (name.starts_with(crate::worker::RESULT_PREFIX) || name.starts_with(".tmp"))
                && meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() > 24 * 3600)
            {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = name.strip_suffix(".cwasm") else { continue };
            entries.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), key.to_owned()));
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort();
        for (_, len, key) in entries {
            if total <= self.limit {
                break;
            }
            if key == keep {
                continue;
            }
            // The sum first: an entry without its sum is a miss, never
            // code taken for another.
            let _ = std::fs::remove_file(self.dir.join(format!("{key}.sum")));
            std::fs::remove_file(self.dir.join(format!("{key}.cwasm")))?;
            tracing::debug!(entry = key, bytes = len, "compiled plugin evicted from the cache");
            total -= len;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends: the number of bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Marks an entry recently used, for eviction. Its modification time is
/// set through a handle opened for appending, which writes nothing.
fn touch(path: &Path) {
    if let Ok(f) = File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> wasmtime::Engine {
        wasmtime::Engine::default()
    }

    #[test]
    fn a_damaged_entry_is_a_miss() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = CompileCache::new(dir.path());
        cache.put("aa", &engine(), b"compiled code").expect("put");
        let mut got = String::new();
        cache.get("aa", &engine()).expect("hit").file.read_to_string(&mut got).expect("read");
        assert_eq!(got, "compiled code");
        let cwasm = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("entry file");
        assert_eq!(cache.get_bytes("aa", &engine()).as_deref(), Some(b"compiled code".as_slice()));
        std::fs::write(&cwasm, b"compiled codf").expect("damage");
        assert!(cache.get("aa", &engine()).is_none(), "a damaged entry must not be used");
        assert!(cache.get_bytes("aa", &engine()).is_none(), "a damaged entry must not be used");
        std::fs::write(&cwasm, b"compiled").expect("truncate");
        assert!(cache.get("aa", &engine()).is_none(), "a truncated entry must not be used");
    }

    /// A step process trusts the file its engine checked and holds, by
    /// identity; any other file in its place is checked again.
    #[test]
    fn a_file_checked_before_is_known_by_its_identity_and_no_other() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = CompileCache::new(dir.path());
        let e = engine();
        cache.put("aa", &e, b"compiled code").expect("put");
        let held = cache.get("aa", &e).expect("hit");
        let cwasm = dir.path().join(format!("{}.cwasm", CompileCache::key("aa", &e)));
        // The same file (what an engine holding it open would see):
        // taken as checked, without reading it.
        let again = cache.get_checked("aa", &e, held.id).expect("hit");
        assert_eq!(again.id, held.id);
        // Another file renamed into its place, damaged: checked, refused.
        let other = dir.path().join("other");
        std::fs::write(&other, b"compiled codf").expect("write");
        std::fs::rename(&other, &cwasm).expect("replace");
        assert!(cache.get_checked("aa", &e, held.id).is_none(), "a replaced file must be checked");
        // A sound replacement is checked and used, under its own identity.
        cache.put("aa", &e, b"compiled code").expect("put");
        let fresh = cache.get_checked("aa", &e, held.id).expect("hit");
        assert_ne!(fresh.id, held.id);
    }

    /// Past its bound the cache drops what was used longest ago, and keeps
    /// what was just written and what was just read.
    #[test]
    fn the_least_recently_used_entries_go_first() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = CompileCache::new(dir.path()).with_limit(250);
        let e = engine();
        let at = |key: &str, secs: u64| {
            let path = dir.path().join(format!("{}.cwasm", CompileCache::key(key, &e)));
            let f = File::options().append(true).open(path).expect("open");
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).expect("time");
        };
        cache.put("a", &e, &[1; 100]).expect("put");
        at("a", 1000);
        cache.put("b", &e, &[2; 100]).expect("put");
        at("b", 2000);
        // Reading `a` makes it the most recently used.
        assert!(cache.get("a", &e).is_some());
        cache.put("c", &e, &[3; 100]).expect("put");
        assert!(cache.get("b", &e).is_none(), "b was used longest ago");
        assert!(cache.get("a", &e).is_some() && cache.get("c", &e).is_some());
        // An entry bigger than the whole bound is still kept, alone.
        cache.put("d", &e, &[4; 300]).expect("put");
        assert!(cache.get("d", &e).is_some());
        assert!(cache.get("a", &e).is_none() && cache.get("c", &e).is_none());
        let files = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(files, 2, "one entry, its code and its sum");
    }
}
