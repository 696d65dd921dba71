//! Tools fetched by digest.
//!
//! A pipeline names a tool by URL and sha256. The host fetches it (a step
//! never does), checks the digest before anything reads a byte of it,
//! and keeps it in a tool cache that every run shares. An archive (a
//! wheel or zip, a tarball) is unpacked once, next to it.
//!
//! The cache, a directory:
//!
//! - `sha256/HEX`: a fetched file, whose sha256 is `HEX`. It is written
//!   under `partial/` and renamed here only after its digest matched, so
//!   a file here is always whole and right.
//! - `trees/HEX/`: the unpacked contents of the archive `sha256/HEX`,
//!   renamed into place once complete. Files are read-only.
//! - `sums/HEX/`: the sha256 of a module in that tree, one file per
//!   module (named by the sha256 of its path), recorded when a run first
//!   loaded it: later runs load its compiled form by it, without reading
//!   the module again.
//! - `partial/`: fetches and unpacks under way, or left by a process that
//!   was killed; entries older than a day are removed when a cache opens.
//!
//! Two processes may fetch the same tool at once: each works in its own
//! partial entry and the first rename wins; the other's is the same bytes.
//!
//! Every use of a tool touches its file. After each download, and on
//! `airlock cache gc`, the tools least recently used are removed until
//! the cache fits its bound ([`DEFAULT_TOOL_CACHE_LIMIT`], or
//! `AIRLOCK_TOOL_CACHE_LIMIT`); a tool used within [`IN_USE`] is never
//! removed, since a step may be running it. A removed tree is first
//! renamed into `partial/`, so it is there whole or not at all.
//! The cache holds what the state directory holds, by the same trust: it
//! is the host's own, and no step can write to it (tool trees are mounted
//! read-only).

use airlock_model::Tool;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The largest file a tool URL may serve.
pub const MAX_FETCH_BYTES: u64 = 4 << 30;
/// The most an archive may unpack to, in all.
pub const MAX_UNPACKED_BYTES: u64 = 16 << 30;
/// The most entries an archive may have.
pub const MAX_ARCHIVE_ENTRIES: u64 = 500_000;
/// How long connecting, and then waiting for the answer's head, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole body of one fetch may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Partial entries older than this are left by a process that stopped.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bytes of fetched tools (files and unpacked trees) kept by default:
/// the big toolchains several times over.
pub const DEFAULT_TOOL_CACHE_LIMIT: u64 = 16 << 30;
/// A tool (or a blob of an artifact cache) used this recently is never
/// evicted: a step may be running it, or a reader about to open it.
pub const IN_USE: Duration = Duration::from_secs(3600);
/// How airlock introduces itself to the servers it fetches from.
const USER_AGENT: &str = concat!("airlock/", env!("CARGO_PKG_VERSION"));

mod oci;

/// Why a tool could not be had. Its message names the tool and says what
/// to do.
#[derive(Debug, thiserror::Error)]
#[error("tool `{tool}`: {message}")]
pub struct ToolError {
    /// The tool's name in the pipeline.
    pub tool: String,
    /// What went wrong, and what to do.
    pub message: String,
}

/// A tool in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The WebAssembly module to run; `None` for an archive without
    /// `module:`, a tree of files (a library, a package) only to mount.
    pub module: Option<PathBuf>,
    /// The unpacked archive, for a tool that is one.
    pub tree: Option<PathBuf>,
    /// Bytes fetched just now; `None` when the cache had it.
    pub fetched: Option<u64>,
    /// The sha256 of `module`, when it is on record: the pinned digest of
    /// a tool that is one module, or what [`ToolCache::remember_module`]
    /// recorded for the module in an archive. With it a warm run need not
    /// read the module at all.
    pub module_sha256: Option<String>,
}

impl Fetched {
    /// A directory inside the tool's archive (`""` for all of it), for a
    /// mount; `tool` names it in messages.
    pub fn dir(&self, tool: &str, dir: &str) -> Result<PathBuf, ToolError> {
        let err = |message: String| ToolError { tool: tool.to_owned(), message };
        let Some(tree) = &self.tree else {
            return Err(err("it is a single module, not an archive: it has no directories to mount".into()));
        };
        if !Path::new(dir).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(err(format!("`{dir}` is not a path inside its archive")));
        }
        let path = tree.join(dir);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(path),
            Ok(_) => Err(err(format!("`{dir}` in its archive is a file, not a directory; mount a directory"))),
            Err(_) => Err(err(format!("its archive has no directory `{dir}`{}", listing(tree, dir)))),
        }
    }
}

/// What a fetch reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum FetchProgress {
    /// Bytes received so far, of the total if the server said.
    Downloading {
        /// So far.
        done: u64,
        /// Of, if known.
        total: Option<u64>,
    },
    /// The download is whole and right; its archive is being unpacked.
    Unpacking,
}

/// The tool cache.
#[derive(Debug, Clone)]
pub struct ToolCache {
    dir: PathBuf,
    limit: u64,
}

/// One tool in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The sha256 of the file fetched.
    pub sha256: String,
    /// Bytes on disk: the file, and its unpacked tree if it has one.
    pub bytes: u64,
    /// When a run last used it (or it was fetched).
    pub last_used: SystemTime,
}

impl ToolCache {
    /// The cache in `dir`, created if needed; partial entries left by
    /// processes that stopped long ago are removed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        for sub in ["sha256", "trees", "partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("partial")) {
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > PARTIAL_MAX_AGE);
                if old {
                    let path = entry.path();
                    let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                }
            }
        }
        Ok(Self { dir: dir.to_owned(), limit: DEFAULT_TOOL_CACHE_LIMIT })
    }

    /// The same cache, bounded to `bytes` after each download.
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// Where the cache is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bound it keeps to after each download.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Every tool in the cache, least recently used first.
    pub fn entries(&self) -> std::io::Result<Vec<CacheEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("sha256"))? {
            let entry = entry?;
            let sha256 = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            let tree = self.tree_of(&sha256);
            let bytes = meta.len() + if tree.is_dir() { size_of_tree(&tree) } else { 0 };
            out.push(CacheEntry { sha256, bytes, last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
        }
        out.sort_by(|a, b| (a.last_used, &a.sha256).cmp(&(b.last_used, &b.sha256)));
        Ok(out)
    }

    /// Removes tools, least recently used first, until what is left
    /// holds at most `limit` bytes; none used within `spare` goes.
    /// Answers those removed.
    pub fn evict(&self, limit: u64, spare: Duration) -> std::io::Result<Vec<CacheEntry>> {
        let entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut removed = Vec::new();
        for entry in entries {
            if total <= limit {
                break;
            }
            let recent = entry.last_used.elapsed().map_or(true, |age| age < spare);
            if recent {
                continue;
            }
            let tree = self.tree_of(&entry.sha256);
            if tree.is_dir() {
                // Out of sight at once, then deleted at leisure.
                let gone = self.dir.join("partial").join(format!("evicted-{}-{}", entry.sha256, std::process::id()));
                std::fs::rename(&tree, &gone)?;
                std::fs::remove_dir_all(&gone)?;
            }
            // The records of its modules first: a record without its
            // tree is never read, a tree without records is only slower.
            let sums = self.sums_of(&entry.sha256);
            if sums.is_dir() {
                std::fs::remove_dir_all(&sums)?;
            }
            std::fs::remove_file(self.file_of(&entry.sha256))?;
            tracing::debug!(tool = entry.sha256, bytes = entry.bytes, "tool evicted from the cache");
            total -= entry.bytes;
            removed.push(entry);
        }
        Ok(removed)
    }

    /// Marks a tool used now. The file is read-only; its owner may still
    /// set its times.
    fn touch(&self, sha256: &str) {
        let _ = crate::artifacts::touch(&self.file_of(sha256));
    }

    /// The tool if the cache has it whole (fetched and, for an archive,
    /// unpacked), without fetching anything.
    pub fn cached(&self, name: &str, tool: &Tool) -> Result<Option<Fetched>, ToolError> {
        let file = self.file_of(&tool.sha256);
        if !file.is_file() {
            return Ok(None);
        }
        self.touch(&tool.sha256);
        if tool.module.is_none() && is_module(&file) {
            let module_sha256 = Some(tool.sha256.clone());
            return Ok(Some(Fetched { module: Some(file), tree: None, fetched: None, module_sha256 }));
        }
        let tree = self.tree_of(&tool.sha256);
        if !tree.is_dir() {
            return Ok(None);
        }
        let module = tool.module.as_deref().map(|m| module_in(name, &tree, m)).transpose()?;
        let module_sha256 = self.recorded_module(tool);
        Ok(Some(Fetched { module, tree: Some(tree), fetched: None, module_sha256 }))
    }

    /// The tool, fetched and unpacked first if the cache lacks it.
    pub fn fetch(&self, name: &str, tool: &Tool, progress: &dyn Fn(FetchProgress)) -> Result<Fetched, ToolError> {
        if let Some(found) = self.cached(name, tool)? {
            return Ok(found);
        }
        let err = |message: String| ToolError { tool: name.to_owned(), message };
        let file = self.file_of(&tool.sha256);
        let mut fetched = None;
        if !file.is_file() {
            fetched = Some(self.download(name, tool, progress)?);
            // This one was used just now: the bound is kept by others.
            if let Err(e) = self.evict(self.limit, IN_USE) {
                tracing::warn!("cannot keep the tool cache {} to its bound: {e}", self.dir.display());
            }
        }
        if tool.module.is_none() && is_module(&file) {
            let module_sha256 = Some(tool.sha256.clone());
            return Ok(Fetched { module: Some(file), tree: None, fetched, module_sha256 });
        }
        let tree = self.tree_of(&tool.sha256);
        if !tree.is_dir() {
            progress(FetchProgress::Unpacking);
            let partial = tempfile::Builder::new()
                .prefix(&format!("tree-{}-", &tool.sha256[..16]))
                .tempdir_in(self.dir.join("partial"))
                .map_err(|e| err(format!("cannot make a directory in the tool cache {}: {e}", self.dir.display())))?;
            unpack(&file, partial.path()).map_err(|m| err(format!("cannot unpack {}: {m}", tool.url)))?;
            match std::fs::rename(partial.path(), &tree) {
                Ok(()) => {
                    // Renamed away: nothing left for the guard to delete.
                    let _ = partial.keep();
                }
                // Another process unpacked the same archive first.
                Err(_) if tree.is_dir() => {}
                Err(e) => return Err(err(format!("cannot put the unpacked tool in place at {}: {e}", tree.display()))),
            }
        }
        let module = tool.module.as_deref().map(|m| module_in(name, &tree, m)).transpose()?;
        let module_sha256 = self.recorded_module(tool);
        Ok(Fetched { module, tree: Some(tree), fetched, module_sha256 })
    }

    /// Records the sha256 of the `module:` of `tool`, an archive in the
    /// cache, as whoever loaded it found it, for [`Fetched::module_sha256`].
    /// The record lives beside the tree, in the cache the host alone
    /// writes, and goes with the tool when it is evicted. Failing to
    /// record is only logged: the next run reads the module again.
    pub fn remember_module(&self, tool: &Tool, sha256: &str) {
        let Some(module) = &tool.module else { return };
        if !self.tree_of(&tool.sha256).is_dir() || !is_sha256(sha256) {
            return;
        }
        let dir = self.sums_of(&tool.sha256);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            let mut file = tempfile::NamedTempFile::new_in(self.dir.join("partial"))?;
            file.write_all(sha256.as_bytes())?;
            file.persist(dir.join(sum_name(module))).map_err(|e| e.error).map(drop)
        });
        if let Err(e) = written {
            tracing::warn!("cannot record the sha256 of tool module {module} in {}: {e}", dir.display());
        }
    }

    /// The sha256 recorded for the `module:` of `tool`, if any.
    fn recorded_module(&self, tool: &Tool) -> Option<String> {
        let module = tool.module.as_deref()?;
        let text = std::fs::read_to_string(self.sums_of(&tool.sha256).join(sum_name(module))).ok()?;
        is_sha256(&text).then_some(text)
    }

    /// Where the sha256 of modules in the archive `sha256/HEX` are kept.
    fn sums_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("sums").join(sha256)
    }

    fn file_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    fn tree_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("trees").join(sha256)
    }

    /// Fetches the tool into the cache, checking its digest on the way;
    /// returns the bytes fetched. Nothing is kept unless it matched.
    fn download(&self, name: &str, tool: &Tool, progress: &dyn Fn(FetchProgress)) -> Result<u64, ToolError> {
        // Said before connecting: a slow server is seen waiting.
        progress(FetchProgress::Downloading { done: 0, total: None });
        let mut sink = Incoming::new(self, name, tool, progress)?;
        match oci::Location::of(&tool.url) {
            Some(location) => oci::pull(&location, &tool.sha256, &mut sink)?,
            None => self.download_http(tool, &mut sink)?,
        }
        sink.finish()
    }

    /// An `http(s)://` URL, streamed into `sink`.
    fn download_http(&self, tool: &Tool, sink: &mut Incoming<'_>) -> Result<(), ToolError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(CONNECT_TIMEOUT))
            .timeout_recv_body(Some(BODY_TIMEOUT))
            .http_status_as_error(false)
            // The system's certificate authorities, as other tools on this
            // machine trust them (a proxy's or a company's CA among them).
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
            .user_agent(USER_AGENT)
            .build()
            .into();
        let answer = agent.get(&tool.url).call().map_err(|e| {
            sink.error(format!(
                "cannot fetch {}: {e}; check the URL and the network, or fetch it with `airlock fetch` on a machine that can and copy the tool cache",
                tool.url
            ))
        })?;
        let status = answer.status();
        if !status.is_success() {
            return Err(sink.error(format!("{} answered {status}; check the URL", tool.url)));
        }
        let total = answer.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        sink.expect(total)?;
        let mut body = answer.into_body().into_with_config().limit(MAX_FETCH_BYTES + 1).reader();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(sink.error(format!("fetching {} stopped after {} bytes: {e}", tool.url, sink.done)));
                }
            };
            sink.write(&buf[..n])?;
        }
    }
}

/// Bytes of the regular files below `dir`.
fn size_of_tree(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// A download on its way into the cache: written to a partial file and
/// hashed as it arrives, within [`MAX_FETCH_BYTES`], and put in place by
/// [`Incoming::finish`] only if its digest is the pinned one.
struct Incoming<'a> {
    cache: &'a ToolCache,
    name: &'a str,
    tool: &'a Tool,
    progress: &'a dyn Fn(FetchProgress),
    partial: tempfile::NamedTempFile,
    hasher: Sha256,
    done: u64,
    total: Option<u64>,
    last_report: u64,
}

impl<'a> Incoming<'a> {
    fn new(
        cache: &'a ToolCache,
        name: &'a str,
        tool: &'a Tool,
        progress: &'a dyn Fn(FetchProgress),
    ) -> Result<Self, ToolError> {
        let partial = tempfile::Builder::new()
            .prefix(&format!("{}-", &tool.sha256[..16]))
            .tempfile_in(cache.dir.join("partial"))
            .map_err(|e| ToolError {
                tool: name.to_owned(),
                message: format!("cannot write to the tool cache {}: {e}", cache.dir.display()),
            })?;
        Ok(Self { cache, name, tool, progress, partial, hasher: Sha256::new(), done: 0, total: None, last_report: 0 })
    }

    fn error(&self, message: String) -> ToolError {
        ToolError { tool: self.name.to_owned(), message }
    }

    /// The length the source announced, if it did: refused at once when
    /// it is more than a tool may be.
    fn expect(&mut self, total: Option<u64>) -> Result<(), ToolError> {
        if let Some(total) = total
            && total > MAX_FETCH_BYTES
        {
            return Err(self.error(format!(
                "{} is {} long, more than the {} a tool may be",
                self.tool.url,
                airlock_model::format_size(total),
                airlock_model::format_size(MAX_FETCH_BYTES)
            )));
        }
        self.total = total;
        (self.progress)(FetchProgress::Downloading { done: 0, total });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ToolError> {
        self.done += bytes.len() as u64;
        if self.done > MAX_FETCH_BYTES {
            return Err(self.error(format!(
                "{} sent more than the {} a tool may be",
                self.tool.url,
                airlock_model::format_size(MAX_FETCH_BYTES)
            )));
        }
        self.hasher.update(bytes);
        self.partial.write_all(bytes).map_err(|e| self.error(format!("cannot write to the tool cache: {e}")))?;
        if self.done - self.last_report >= 4 << 20 {
            self.last_report = self.done;
            (self.progress)(FetchProgress::Downloading { done: self.done, total: self.total });
        }
        Ok(())
    }

    /// Checks the digest and puts the file in place; returns its length.
    fn finish(self) -> Result<u64, ToolError> {
        (self.progress)(FetchProgress::Downloading { done: self.done, total: self.total });
        let got = hex::encode(self.hasher.clone().finalize());
        if got != self.tool.sha256 {
            return Err(self.error(format!(
                "{} served {} with sha256 {got}, not the {} the pipeline pins; nothing was kept. If the tool changed on purpose, put its new digest in `sha256:`",
                self.tool.url,
                airlock_model::format_size(self.done),
                self.tool.sha256
            )));
        }
        let err = |message: String| ToolError { tool: self.name.to_owned(), message };
        self.partial.as_file().sync_all().map_err(|e| err(format!("cannot write to the tool cache: {e}")))?;
        let to = self.cache.file_of(&self.tool.sha256);
        self.partial
            .persist(to)
            .map_err(|e| err(format!("cannot put the fetched tool in the tool cache: {}", e.error)))?;
        Ok(self.done)
    }
}

/// The name of the record of a module's sha256: the sha256 of its path in
/// the archive, so no path can reach outside the records' directory.
fn sum_name(module: &str) -> String {
    hex::encode(Sha256::digest(module.as_bytes()))
}

/// 64 lowercase hex digits.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The module of an unpacked archive, which must be a file in it.
fn module_in(name: &str, tree: &Path, module: &str) -> Result<PathBuf, ToolError> {
    let path = tree.join(module);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        _ => Err(ToolError {
            tool: name.to_owned(),
            message: format!("its archive has no file `{module}`{}; fix `module:`", listing(tree, module)),
        }),
    }
}

/// ` (the archive has: a, b, c)`: what there is where `wanted` was not
/// found, at the deepest directory of it that exists.
fn listing(tree: &Path, wanted: &str) -> String {
    let mut dir = tree.to_owned();
    let mut shown = String::new();
    for part in wanted.split('/') {
        let next = dir.join(part);
        if !next.is_dir() {
            break;
        }
        dir = next;
        shown.push_str(part);
        shown.push('/');
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let dir = e.file_type().is_ok_and(|t| t.is_dir());
                    format!("{shown}{}{}", e.file_name().to_string_lossy(), if dir { "/" } else { "" })
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let more = names.len().saturating_sub(12);
    names.truncate(12);
    if names.is_empty() {
        return String::new();
    }
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(" (it has {}{more})", names.join(", "))
}

/// What kind of archive a file is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Zip,
    TarGz,
    Tar,
}

/// Whether a file starts like a WebAssembly module or component.
fn is_module(file: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(file).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"\0asm"
}

fn archive_kind(file: &Path) -> Result<Archive, String> {
    let mut head = [0u8; 262];
    let mut f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Archive::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Archive::TarGz)
    } else if head.get(257..262) == Some(b"ustar") {
        Ok(Archive::Tar)
    } else if head.starts_with(b"\0asm") {
        Err("it is a WebAssembly module, not an archive; leave out `module:`".into())
    } else {
        Err("it is not a zip (or wheel), tar or gzipped tar archive".into())
    }
}

/// Unpacks an archive into the empty directory `into`: regular files and
/// directories only (links are left out), every path inside `into`,
/// within [`MAX_ARCHIVE_ENTRIES`] and [`MAX_UNPACKED_BYTES`] whatever the
/// archive's headers claim.
fn unpack(file: &Path, into: &Path) -> Result<(), String> {
    let mut budget = Budget { entries: 0, bytes: 0 };
    match archive_kind(file)? {
        Archive::Zip => {
            let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
            let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
                let shown = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("number {i}"));
                let Some(rel) = entry.enclosed_name() else {
                    return Err(format!("its entry `{shown}` leads outside the archive"));
                };
                budget.entry()?;
                if entry.is_dir() {
                    std::fs::create_dir_all(into.join(rel)).map_err(|e| e.to_string())?;
                } else if entry.is_file() && !entry.is_symlink() {
                    write_file(&mut entry, &into.join(rel), &mut budget)?;
                }
            }
        }
        kind @ (Archive::TarGz | Archive::Tar) => {
            let f = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| e.to_string())?);
            let reader: Box<dyn Read> =
                if kind == Archive::TarGz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
            let mut tar = tar::Archive::new(reader);
            for entry in tar.entries().map_err(|e| e.to_string())? {
                let mut entry = entry.map_err(|e| e.to_string())?;
                let path = entry.path().map_err(|e| e.to_string())?.into_owned();
                if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
                    return Err(format!("its entry `{}` leads outside the archive", path.display()));
                }
                budget.entry()?;
                match entry.header().entry_type() {
                    tar::EntryType::Directory => {
                        std::fs::create_dir_all(into.join(&path)).map_err(|e| e.to_string())?;
                    }
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        write_file(&mut entry, &into.join(&path), &mut budget)?;
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

struct Budget {
    entries: u64,
    bytes: u64,
}

impl Budget {
    fn entry(&mut self) -> Result<(), String> {
        self.entries += 1;
        if self.entries > MAX_ARCHIVE_ENTRIES {
            return Err(format!("it has more than {MAX_ARCHIVE_ENTRIES} entries"));
        }
        Ok(())
    }
}

fn write_file(from: &mut dyn Read, to: &Path, budget: &mut Budget) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let mut out = std::fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let left = MAX_UNPACKED_BYTES - budget.bytes;
    let copied = std::io::copy(&mut from.take(left + 1), &mut out).map_err(|e| e.to_string())?;
    budget.bytes += copied;
    if copied > left {
        return Err(format!("it unpacks to more than {}", airlock_model::format_size(MAX_UNPACKED_BYTES)));
    }
    let mut perms = out.metadata().map_err(|e| e.to_string())?.permissions();
    perms.set_readonly(true);
    out.set_permissions(perms).map_err(|e| e.to_string())?;
    // The tree is renamed into place once whole; what it holds must be
    // on disk by then.
    out.sync_all().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback HTTP server answering each path with its bytes; counts requests.
    fn serve(files: Vec<(&'static str, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("server");
        let base = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for req in server.incoming_requests() {
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = match files.iter().find(|(p, _)| *p == req.url()) {
                    Some((_, bytes)) => tiny_http::Response::from_data(bytes.clone()),
                    None => tiny_http::Response::from_data(b"no".to_vec()).with_status_code(404),
                };
                let _ = req.respond(answer);
            }
        });
        (base, hits)
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut out);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            z.start_file(*name, stored).expect("entry");
            z.write_all(bytes).expect("write");
        }
        z.finish().expect("zip");
        out.into_inner()
    }

    fn tool(url: String, bytes: &[u8], module: Option<&str>) -> Tool {
        Tool {
            url,
            sha256: hex::encode(Sha256::digest(bytes)),
            module: module.map(str::to_owned),
            mounts: Default::default(),
            entry: None,
        }
    }

    const WASM: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn an_archive_is_fetched_once_checked_and_unpacked_with_its_trees() {
        let wheel = zip_of(&[("t/tool.wasm", WASM), ("t/share/data.txt", b"data"), ("t/share/sub/more.txt", b"m")]);
        let (base, hits) = serve(vec![("/t.whl", wheel.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let t = tool(format!("{base}/t.whl"), &wheel, Some("t/tool.wasm"));
        assert!(cache.cached("t", &t).expect("looked").is_none());
        let seen = std::sync::Mutex::new(Vec::new());
        let got = cache.fetch("t", &t, &|p| seen.lock().expect("lock").push(format!("{p:?}"))).expect("fetched");
        assert_eq!(got.fetched, Some(wheel.len() as u64));
        assert_eq!(std::fs::read(got.module.as_ref().expect("a module")).expect("module"), WASM);
        let share = got.dir("t", "t/share").expect("a directory");
        assert_eq!(std::fs::read(share.join("sub/more.txt")).expect("file"), b"m");
        assert!(std::fs::metadata(share.join("data.txt")).expect("file").permissions().readonly());
        assert!(seen.lock().expect("lock").iter().any(|s| s.starts_with("Unpacking")));
        // Again, from another cache on the same directory: no request.
        let again = ToolCache::open(dir.path()).expect("cache").fetch("t", &t, &|_| {}).expect("cached");
        assert_eq!((again.fetched, hits.load(Ordering::SeqCst)), (None, 1));
        // The module's sha256 is on record once whoever loaded it said so
        // (a tool that is one module is known by its pinned digest).
        assert_eq!(got.module_sha256, None);
        let module_sha256 = hex::encode(Sha256::digest(WASM));
        cache.remember_module(&t, "not a digest");
        assert_eq!(cache.cached("t", &t).expect("looked").expect("cached").module_sha256, None);
        cache.remember_module(&t, &module_sha256);
        assert_eq!(cache.cached("t", &t).expect("looked").expect("cached").module_sha256, Some(module_sha256.clone()));
        let other = Tool { module: Some("t/share/data.txt".into()), ..t.clone() };
        assert_eq!(cache.cached("t", &other).expect("looked").expect("cached").module_sha256, None, "per module");
        // Directories that are not there, or are files, are named.
        let e = got.dir("t", "t/shar").expect_err("missing");
        assert_eq!(e.to_string(), "tool `t`: its archive has no directory `t/shar` (it has t/share/, t/tool.wasm)");
        assert!(got.dir("t", "t/tool.wasm").expect_err("a file").message.contains("is a file"));
        assert!(got.dir("t", "../x").is_err());
    }

    /// Sets a tool's last use `hours` ago.
    fn used_ago(cache: &ToolCache, sha256: &str, hours: u64) {
        let f = std::fs::File::open(cache.file_of(sha256)).expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(hours * 3600)).expect("set time");
    }

    #[test]
    fn the_least_recently_used_tools_go_first_and_none_in_use_goes() {
        let wheel = zip_of(&[("t/tool.wasm", WASM), ("t/share/data.txt", &[7; 5000])]);
        let other = [WASM, b"\0".as_slice()].concat();
        let third = [WASM, b"\0\0".as_slice()].concat();
        let (base, hits) =
            serve(vec![("/a.whl", wheel.clone()), ("/b.wasm", other.clone()), ("/c.wasm", third.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let a = tool(format!("{base}/a.whl"), &wheel, Some("t/tool.wasm"));
        let b = tool(format!("{base}/b.wasm"), &other, None);
        let c = tool(format!("{base}/c.wasm"), &third, None);
        for t in [&a, &b, &c] {
            cache.fetch("t", t, &|_| {}).expect("fetched");
        }
        assert_eq!(cache.cached("t", &b).expect("looked").expect("cached").module_sha256.as_ref(), Some(&b.sha256));
        cache.remember_module(&a, &b.sha256);
        // An archive counts with its unpacked tree.
        let sizes: Vec<(String, u64)> =
            cache.entries().expect("entries").into_iter().map(|e| (e.sha256, e.bytes)).collect();
        let of = |t: &Tool| sizes.iter().find(|(s, _)| *s == t.sha256).expect("listed").1;
        assert_eq!(of(&a), wheel.len() as u64 + WASM.len() as u64 + 5000);
        // Used just now, all three stay, whatever the bound.
        assert!(cache.evict(0, IN_USE).expect("evicted").is_empty());
        // Used 3, 2 and 5 hours ago: over a bound that fits two of them,
        // the one used longest ago (c) goes, then a.
        used_ago(&cache, &a.sha256, 3);
        used_ago(&cache, &b.sha256, 2);
        used_ago(&cache, &c.sha256, 5);
        let bound = of(&a) + of(&b);
        let gone: Vec<String> = cache.evict(bound, IN_USE).expect("evicted").into_iter().map(|e| e.sha256).collect();
        assert_eq!(gone, std::slice::from_ref(&c.sha256));
        let gone: Vec<String> = cache.evict(of(&b), IN_USE).expect("evicted").into_iter().map(|e| e.sha256).collect();
        assert_eq!(gone, std::slice::from_ref(&a.sha256));
        assert!(!cache.tree_of(&a.sha256).exists(), "its tree went with it");
        assert!(!cache.sums_of(&a.sha256).exists(), "and the record of its module");
        assert!(std::fs::read_dir(dir.path().join("partial")).expect("partial").next().is_none(), "nothing left over");
        // Used again, a tool is touched; one evicted is fetched again.
        assert!(cache.cached("t", &b).expect("looked").is_some());
        assert!(cache.entries().expect("entries")[0].last_used.elapsed().expect("age") < Duration::from_secs(60));
        let before = hits.load(Ordering::SeqCst);
        let fetched = cache.fetch("t", &a, &|_| {}).expect("fetched again");
        assert_eq!(hits.load(Ordering::SeqCst), before + 1);
        assert_eq!(fetched.module_sha256, None, "no record survives its tool");
    }

    #[test]
    fn a_wrong_digest_keeps_nothing_and_says_what_was_served() {
        let (base, _) = serve(vec![("/t.wasm", WASM.to_vec())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let mut t = tool(format!("{base}/t.wasm"), WASM, None);
        let right = t.sha256.clone();
        t.sha256 = "0".repeat(64);
        let e = cache.fetch("t", &t, &|_| {}).expect_err("refused");
        assert!(e.message.contains(&format!("with sha256 {right}, not the {}", t.sha256)), "{e}");
        let left: Vec<_> =
            ["sha256", "partial"].iter().flat_map(|d| std::fs::read_dir(dir.path().join(d)).expect("dir")).collect();
        assert!(left.is_empty(), "{left:?}");
        // The right digest: the module is the file itself.
        t.sha256 = right;
        let got = cache.fetch("t", &t, &|_| {}).expect("fetched");
        assert_eq!(std::fs::read(got.module.as_ref().expect("a module")).expect("module"), WASM);
        assert!(got.dir("t", "").expect_err("no tree").message.contains("not an archive"));
    }

    #[test]
    fn fetch_failures_name_the_tool_and_the_way_out() {
        let wheel = zip_of(&[("t/tool.wasm", WASM)]);
        let (base, _) = serve(vec![("/t.whl", wheel.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let e = cache.fetch("t", &tool(format!("{base}/gone.whl"), &wheel, None), &|_| {}).expect_err("404");
        assert!(e.to_string().starts_with("tool `t`: http://") && e.message.contains("404"), "{e}");
        let e = cache
            .fetch("t", &tool(format!("{base}/t.whl"), &wheel, Some("t/yosys.wasm")), &|_| {})
            .expect_err("no module");
        assert_eq!(e.message, "its archive has no file `t/yosys.wasm` (it has t/tool.wasm); fix `module:`");
        // A port nobody listens on (and a cache that lacks the file).
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let e =
            cache.fetch("u", &tool(format!("http://127.0.0.1:{port}/t.whl"), &wheel, None), &|_| {}).expect_err("down");
        assert!(e.message.starts_with("cannot fetch http://127.0.0.1:") && e.message.contains("airlock fetch"), "{e}");
        // A module where an archive was expected.
        let (base, _) = serve(vec![("/t.wasm", WASM.to_vec())]);
        let e = cache
            .fetch("w", &tool(format!("{base}/t.wasm"), WASM, Some("x.wasm")), &|_| {})
            .expect_err("not an archive");
        assert!(e.message.contains("leave out `module:`"), "{e}");
    }

    #[test]
    fn archives_cannot_write_outside_their_tree() {
        let evil = zip_of(&[("../evil.txt", b"x"), ("t/tool.wasm", WASM)]);
        let (base, _) = serve(vec![("/e.whl", evil.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(&dir.path().join("cache")).expect("cache");
        let e =
            cache.fetch("e", &tool(format!("{base}/e.whl"), &evil, Some("t/tool.wasm")), &|_| {}).expect_err("refused");
        assert!(e.message.contains("leads outside the archive"), "{e}");
        assert!(!dir.path().join("cache/evil.txt").exists() && !dir.path().join("evil.txt").exists());
        assert_eq!(std::fs::read_dir(dir.path().join("cache/trees")).expect("trees").count(), 0);
    }

    #[test]
    fn a_gzipped_tarball_unpacks_like_a_wheel() {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, bytes) in [("package/bin/t.wasm", WASM), ("package/lib/x.txt", b"x".as_slice())] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, bytes).expect("append");
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().expect("tar")).expect("gz");
        let tgz = gz.finish().expect("gz");
        let (base, _) = serve(vec![("/t.tgz", tgz.clone())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ToolCache::open(dir.path()).expect("cache");
        let got =
            cache.fetch("t", &tool(format!("{base}/t.tgz"), &tgz, Some("package/bin/t.wasm")), &|_| {}).expect("ok");
        assert_eq!(std::fs::read(got.module.as_ref().expect("a module")).expect("module"), WASM);
        assert_eq!(std::fs::read(got.dir("t", "package/lib").expect("dir").join("x.txt")).expect("x"), b"x");

        // Without `module:` the same archive is a tree to mount, nothing to run.
        let files = cache.fetch("t", &tool(format!("{base}/t.tgz"), &tgz, None), &|_| {}).expect("ok");
        assert!(files.module.is_none());
        assert_eq!(files.dir("t", "package").expect("dir"), got.dir("t", "package").expect("dir"));
        let again = cache.cached("t", &tool(format!("{base}/t.tgz"), &tgz, None)).expect("ok").expect("cached");
        assert!(again.module.is_none() && again.tree.is_some());
    }
}
