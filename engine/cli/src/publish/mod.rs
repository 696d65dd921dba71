//! `airlock publish`: the client build machines use to publish a tree to
//! an `airlock serve`.
//!
//! 1. Find the files (globs, or directories taken whole) and hash them,
//!    in parallel; a stat cache (size, mtime, ctime, inode -> sha256)
//!    skips files that did not change since the last publish.
//! 2. Ask the server, in one call, which digests it lacks.
//! 3. Upload only those, in batches streamed over a few connections at
//!    once; the server checks every digest before keeping a blob.
//! 4. Commit the manifest: the tree appears whole, or not at all.
//!
//! An interrupted publish leaves nothing visible; running it again
//! uploads only what did not arrive.

mod cache;
mod walk;

use crate::exit;
use crate::http::{self, Body, Server};
use airlock_host::publish::check_build_id;
use airlock_server::protocol::{
    CommitAnswer, CommitRequest, ErrorCode, FrameHeader, MissingAnswer, MissingRequest, build_path,
};
use bytes::Bytes;
use cache::{Stat, StatCache};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use walk::{Found, find};

/// What `airlock publish` asks for.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// The server, e.g. `http://127.0.0.1:8480`.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The publish token. Prefer the environment variable: a flag shows
    /// in process lists and shell history.
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: String,
    /// The publish target, e.g. `snapshots`.
    #[arg(long, value_name = "NAME")]
    target: String,
    /// Drop this many leading directories from every published path.
    #[arg(long, value_name = "N", default_value_t = 0)]
    strip: usize,
    /// Uploads at once.
    #[arg(short, long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// The stat cache [default: STATE_DIR/publish-cache.bin].
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
    /// Hash every file, ignoring and not writing the stat cache.
    #[arg(long)]
    no_cache: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The build id to publish under: letters, digits, `.`, `-`, `_`.
    #[arg(value_name = "BUILD_ID")]
    build_id: String,
    /// Files to publish: paths, globs (`dist/**/*.js`) or directories
    /// (taken whole). Paths are published as given, without a leading
    /// `./` or `/` and the first `--strip` directories.
    #[arg(required = true, value_name = "GLOB")]
    globs: Vec<String>,
}

/// Blobs per upload request, at most.
const BATCH_FILES: usize = 2000;
/// Bytes per upload request before a new one is started.
const BATCH_BYTES: u64 = 16 << 20;
/// Digests per `missing` call.
const MISSING_CHUNK: usize = 100_000;
/// Bytes read per chunk while uploading.
const READ_CHUNK: usize = 256 << 10;

/// A failure with the exit code it maps to.
struct Fail {
    code: u8,
    message: String,
    hint: Option<String>,
    /// The server's code, when the server refused.
    refusal: Option<ErrorCode>,
}

fn fail(code: u8, message: impl Into<String>) -> Fail {
    Fail { code, message: message.into(), hint: None, refusal: None }
}

impl Fail {
    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// One file to publish.
struct Local {
    /// Where it is published.
    path: String,
    /// Where it is here.
    file: PathBuf,
    size: u64,
    /// Its sha256, hex.
    sha256: String,
    /// The same, as bytes.
    digest: [u8; 32],
}

/// 32 bytes in lowercase hex.
fn hex32(digest: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    // Cannot fail: the buffer is twice the input's length.
    let _ = hex::encode_to_slice(digest, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `airlock publish`.
pub async fn publish(state_dir: &Path, args: PublishArgs) -> anyhow::Result<u8> {
    match run(state_dir, &args).await {
        Ok(()) => Ok(exit::OK),
        Err(f) => {
            eprintln!("error: {}", f.message);
            if let Some(hint) = f.hint {
                eprintln!("hint: {hint}");
            }
            Ok(f.code)
        }
    }
}

async fn run(state_dir: &Path, args: &PublishArgs) -> Result<(), Fail> {
    let started = Instant::now();
    check_build_id(&args.build_id).map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let server = Server::new(&args.server, &args.token, usize::from(args.jobs))
        .map_err(|bad| fail(exit::USAGE, bad.message).hint(bad.hint))?;
    let progress = Progress::new(args.json);
    // The stat cache is read while the files are found.
    let cache_path = args.cache.clone().unwrap_or_else(|| state_dir.join("publish-cache.bin"));
    let (files, cache) = std::thread::scope(|s| {
        let cache = s.spawn(|| if args.no_cache { StatCache::default() } else { StatCache::load(&cache_path) });
        (find(&args.globs, args.strip), cache.join())
    });
    let files = files?;
    let mut cache = cache.unwrap_or_default();

    // Hash what the cache does not know.
    let total_bytes: u64 = files.iter().map(|f| f.stat.size).sum();
    let (hashed, hashed_now) = hash_all(files, &mut cache, usize::from(args.jobs).max(cores()), &progress)?;
    // `find` returns the files sorted by published path, as the server
    // keeps a tree, and hashing keeps their order: the manifest's digest
    // names the tree.
    debug_assert!(hashed.is_sorted_by(|a, b| a.path < b.path));

    let client = Api { server, build: build_path(&args.target, &args.build_id), jobs: usize::from(args.jobs) };
    let mut unique: BTreeMap<&str, &Local> = BTreeMap::new();
    for l in &hashed {
        unique.entry(l.sha256.as_str()).or_insert(l);
    }
    let digests: Vec<[u8; 32]> = unique.values().map(|l| l.digest).collect();
    let manifest = manifest_json(&hashed)?;
    let tree: [u8; 32] = Sha256::digest(&manifest).into();

    let place = format!("{} {}", client.server.base(), args.target);
    let known = Known {
        tree: (!args.no_cache && cache.all_present(&place, std::iter::once(&tree))).then(|| hex32(&tree)),
        blobs: !args.no_cache && cache.all_present(&place, digests.iter()),
    };
    let sent = send_tree(&client, known, &unique, manifest, &progress).await;
    // The cache is written once, whatever happened: what was hashed is
    // not hashed again. One that learnt nothing new is left as it was.
    let mut dirty = hashed_now > 0;
    match &sent {
        Ok(Sent { committed, .. }) => {
            dirty |= cache.record_present(&place, digests.iter());
            // Only a tree the server names as this client does can be
            // named by its digest next time.
            if committed.tree == hex32(&tree) {
                dirty |= cache.record_present(&place, std::iter::once(&tree));
            }
        }
        Err(f) if matches!(f.refusal, Some(ErrorCode::MissingBlob | ErrorCode::SizeMismatch)) => {
            dirty = true;
            cache.forget(&place);
        }
        Err(_) => {}
    }
    if !args.no_cache
        && dirty
        && let Err(e) = cache.save(&cache_path)
    {
        tracing::warn!("cannot save the stat cache at {}: {e}", cache_path.display());
    }
    let Sent { missing, upload_bytes, committed, by_digest } = sent?;
    let url = format!("{}{}", args.server.trim_end_matches('/'), committed.url);
    let summary = serde_json::json!({
        "target": committed.target,
        "build": committed.build,
        "url": url,
        "files": committed.files,
        "bytes": committed.bytes,
        "hashed_files": hashed_now,
        "uploaded_files": missing.len(),
        "uploaded_bytes": upload_bytes,
        "created": committed.created,
        "tree": committed.tree,
        "committed_by_digest": by_digest,
        "seconds": started.elapsed().as_secs_f64(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
        println!("{url}");
        eprintln!(
            "{} {} ({}) to {}/{}: uploaded {} ({}), {} already there; {:.2}s",
            if committed.created { "published" } else { "already published:" },
            count(committed.files as usize, "file"),
            airlock_model::format_size(total_bytes),
            committed.target,
            committed.build,
            count(missing.len(), "blob"),
            airlock_model::format_size(upload_bytes),
            unique.len().saturating_sub(missing.len()),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// What this client's cache says the target holds already.
struct Known {
    /// The tree (its digest, hex), committed there before.
    tree: Option<String>,
    /// Every blob of the tree.
    blobs: bool,
}

/// What [`send_tree`] did.
struct Sent {
    /// The digests uploaded.
    missing: Vec<String>,
    /// Their bytes.
    upload_bytes: u64,
    /// The commit's answer.
    committed: CommitAnswer,
    /// Whether the tree was committed by its digest alone.
    by_digest: bool,
}

/// Gets the tree to the server and commits it: by its digest alone when
/// the target is `known` to hold the tree, with its manifest when it is
/// known to hold every blob (either refused, with nothing published, if
/// the server lost them after all: then it goes the long way); else by
/// asking which blobs are missing and uploading them first.
async fn send_tree(
    client: &Api,
    known: Known,
    unique: &BTreeMap<&str, &Local>,
    manifest: Vec<u8>,
    progress: &Progress,
) -> Result<Sent, Fail> {
    let lost =
        |f: &Fail| matches!(f.refusal, Some(ErrorCode::UnknownTree | ErrorCode::MissingBlob | ErrorCode::SizeMismatch));
    if let Some(tree) = known.tree {
        let by_digest = serde_json::to_vec(&CommitRequest { tree: Some(tree), ..CommitRequest::default() })
            .map_err(|e| fail(exit::ERROR, e.to_string()))?;
        match client.call_json::<CommitAnswer>(Method::PUT, "", by_digest).await {
            Ok(committed) => return Ok(Sent { missing: Vec::new(), upload_bytes: 0, committed, by_digest: true }),
            Err(f) if lost(&f) => {}
            Err(f) => return Err(f),
        }
    }
    if known.blobs {
        match client.call_json::<CommitAnswer>(Method::PUT, "", manifest.clone()).await {
            Ok(committed) => return Ok(Sent { missing: Vec::new(), upload_bytes: 0, committed, by_digest: false }),
            Err(f) if lost(&f) => {}
            Err(f) => return Err(f),
        }
    }
    // Ask once which blobs the server lacks.
    let digests: Vec<String> = unique.keys().map(|d| (*d).to_owned()).collect();
    let mut missing = Vec::new();
    for chunk in digests.chunks(MISSING_CHUNK) {
        let answer: MissingAnswer =
            client.call(Method::POST, "/missing", &MissingRequest { digests: chunk.to_vec() }).await?;
        // Only digests that were asked about count: a confused server
        // cannot make the client send anything else.
        missing.extend(answer.missing.into_iter().filter(|d| unique.contains_key(d.as_str())));
    }
    missing.sort();
    missing.dedup();
    let to_send: Vec<(String, PathBuf, u64)> = missing
        .iter()
        .filter_map(|d| unique.get(d.as_str()).map(|l| (l.sha256.clone(), l.file.clone(), l.size)))
        .collect();
    let upload_bytes: u64 = to_send.iter().map(|(_, _, s)| s).sum();
    progress.uploading(to_send.len(), upload_bytes);
    client.upload(to_send, progress).await?;
    progress.finish();
    let committed: CommitAnswer = client.call_json(Method::PUT, "", manifest).await?;
    Ok(Sent { missing, upload_bytes, committed, by_digest: false })
}

/// `1 file`, `2 files`.
fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

fn hash_all(
    files: Vec<Found>,
    cache: &mut StatCache,
    threads: usize,
    progress: &Progress,
) -> Result<(Vec<Local>, usize), Fail> {
    let now_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    let mut done: Vec<Option<Local>> = Vec::with_capacity(files.len());
    let mut todo = Vec::new();
    for (i, Found { path, file, key, stat }) in files.into_iter().enumerate() {
        // A file changed within the last two seconds may change again
        // within the same mtime tick: hash it, do not trust the cache.
        let settled = now_ns - stat.mtime_ns.max(stat.ctime_ns) > 2_000_000_000;
        match cache.files.get(&key) {
            Some((s, sha)) if *s == stat && settled => {
                done.push(Some(Local { path, file, size: stat.size, sha256: hex32(sha), digest: *sha }));
            }
            _ => {
                done.push(None);
                todo.push((i, path, file, stat, key));
            }
        }
    }
    let todo_bytes: u64 = todo.iter().map(|t| t.3.size).sum();
    progress.hashing(todo.len(), todo_bytes);
    let next = AtomicUsize::new(0);
    // (index in `done`, the file, its stat, its cache key)
    type Hashed = (usize, Local, Stat, String);
    let results: Vec<Result<Vec<Hashed>, Fail>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(todo.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some((i, path, file, stat, key)) = todo.get(n) else { return Ok(out) };
                        let digest = hash_file(file, progress)?;
                        out.push((
                            *i,
                            Local {
                                path: path.clone(),
                                file: file.clone(),
                                size: stat.size,
                                sha256: hex32(&digest),
                                digest,
                            },
                            *stat,
                            key.clone(),
                        ));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(fail(exit::ERROR, "a hashing thread stopped"))))
            .collect()
    });
    for r in results {
        for (i, local, stat, key) in r? {
            cache.files.insert(key, (stat, local.digest));
            done[i] = Some(local);
        }
    }
    Ok((done.into_iter().flatten().collect(), todo.len()))
}

fn hash_file(file: &Path, progress: &Progress) -> Result<[u8; 32], Fail> {
    let mut f =
        std::fs::File::open(file).map_err(|e| fail(exit::ERROR, format!("cannot read `{}`: {e}", file.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(|e| fail(exit::ERROR, format!("cannot read `{}`: {e}", file.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.add(n as u64);
    }
    Ok(hasher.finalize().into())
}

/// Progress on a terminal: a bar for hashing, then one for uploading.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Self { bar }
    }

    fn hashing(&self, files: usize, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("hashing {}", count(files, "file")));
            b.set_length(bytes);
            b.set_position(0);
        }
    }

    fn uploading(&self, files: usize, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("uploading {}", count(files, "file")));
            b.set_length(bytes);
            b.set_position(0);
        }
    }

    fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The publish calls of one server, for one target and build.
struct Api {
    server: Server,
    /// The path of the build's calls.
    build: String,
    jobs: usize,
}

impl Api {
    /// Sends `req`; a refusal is an error, with the server's reason.
    async fn send(&self, req: Request<Body>) -> Result<Bytes, Fail> {
        answered_ok(self.server.send(req).await)
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Fail> {
        let json = serde_json::to_vec(body).map_err(|e| fail(exit::ERROR, e.to_string()))?;
        self.call_json(method, path, json).await
    }

    /// A call whose JSON body is already made.
    async fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        json: Vec<u8>,
    ) -> Result<T, Fail> {
        let answered = self.server.call(method, &format!("{}{path}", self.build), Some(json), &[]).await;
        let bytes = answered_ok(answered)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            fail(exit::ERROR, format!("the server answered something this client does not understand: {e}"))
        })
    }

    /// Uploads blobs in batches, `jobs` at a time.
    async fn upload(&self, blobs: Vec<(String, PathBuf, u64)>, progress: &Progress) -> Result<(), Fail> {
        let mut batches: Vec<Vec<(String, PathBuf, u64)>> = Vec::new();
        let mut bytes = 0;
        for blob in blobs {
            let start_new = match batches.last() {
                None => true,
                Some(b) => b.len() >= BATCH_FILES || bytes >= BATCH_BYTES,
            };
            if start_new {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += blob.2;
            if let Some(b) = batches.last_mut() {
                b.push(blob);
            }
        }
        let batches = Arc::new(std::sync::Mutex::new(batches.into_iter()));
        let workers = (0..self.jobs).map(|_| {
            let batches = batches.clone();
            async move {
                loop {
                    let next = batches.lock().ok().and_then(|mut b| b.next());
                    let Some(batch) = next else { return Ok(()) };
                    self.upload_batch(batch, progress).await?;
                }
            }
        });
        futures_util::future::try_join_all(workers).await.map(drop)
    }

    async fn upload_batch(&self, batch: Vec<(String, PathBuf, u64)>, progress: &Progress) -> Result<(), Fail> {
        let length: u64 = batch.iter().map(|(_, _, size)| FrameHeader::LEN as u64 + size).sum();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
        let bar = progress.bar.clone();
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            for (digest, file, size) in batch {
                let head = FrameHeader::new(&digest, size).ok_or_else(|| format!("`{digest}` is not a digest"))?;
                if tx.blocking_send(Ok(Frame::data(Bytes::copy_from_slice(&head.encode())))).is_err() {
                    return Ok(());
                }
                let mut f = std::fs::File::open(&file)
                    .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?
                    .take(size);
                let mut left = size;
                while left > 0 {
                    let mut buf = vec![0u8; READ_CHUNK.min(left as usize)];
                    let n = f.read(&mut buf).map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
                    if n == 0 {
                        let msg = format!("`{}` shrank while it was being published", file.display());
                        let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
                        return Err(msg);
                    }
                    buf.truncate(n);
                    left -= n as u64;
                    if let Some(b) = &bar {
                        b.inc(n as u64);
                    }
                    if tx.blocking_send(Ok(Frame::data(Bytes::from(buf)))).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed();
        let req = self
            .server
            .request(Method::POST, &format!("{}/blobs", self.build))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length)
            .body(body)
            .map_err(|e| fail(exit::USAGE, e.to_string()))?;
        let result = self.send(req).await.map(drop);
        let read = reader.await.map_err(|e| fail(exit::ERROR, e.to_string()))?;
        if let Err(msg) = read {
            return Err(fail(exit::ERROR, msg).hint("publish again once the files are settled"));
        }
        result
    }
}

/// The body of the commit: a `CommitRequest` of the protocol, written from the files
/// as they are rather than from a copy of every path and digest.
fn manifest_json(files: &[Local]) -> Result<Vec<u8>, Fail> {
    #[derive(Serialize)]
    struct Entry<'a> {
        path: &'a str,
        sha256: &'a str,
        size: u64,
    }
    #[derive(Serialize)]
    struct Manifest<'a> {
        files: Vec<Entry<'a>>,
    }
    let files = files.iter().map(|l| Entry { path: &l.path, sha256: &l.sha256, size: l.size }).collect();
    serde_json::to_vec(&Manifest { files }).map_err(|e| fail(exit::ERROR, e.to_string()))
}

/// The body of a successful answer; a refusal, or no answer, as the
/// failure to report.
fn answered_ok(answered: Result<(StatusCode, Bytes), http::CallError>) -> Result<Bytes, Fail> {
    match answered {
        Ok((status, body)) if status.is_success() => Ok(body),
        Ok((status, body)) => Err(server_error(status, &body)),
        Err(e @ http::CallError::BadRequest(_)) => Err(fail(exit::USAGE, e.to_string())),
        Err(e) => Err(fail(exit::ERROR, e.to_string())),
    }
}

/// The server's JSON error, with a hint where there is one to give.
fn server_error(status: StatusCode, body: &[u8]) -> Fail {
    let Some(error) = http::error_of(body) else {
        let text = airlock_model::text::one_line(&String::from_utf8_lossy(body), 300);
        return fail(exit::ERROR, format!("the server answered {status}: {text}"));
    };
    let message =
        format!("the server refused ({}): {}", error.code, airlock_model::text::one_line(&error.message, 2000));
    let code = if status.is_server_error() { exit::ERROR } else { exit::FAILED };
    let refusal = ErrorCode::parse(&error.code);
    let f = Fail { refusal, ..fail(code, message) };
    match refusal.and_then(ErrorCode::hint) {
        Some(h) => f.hint(h),
        None => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_host::publish::ManifestEntry;

    /// What the client writes is what the server reads.
    #[test]
    fn the_manifest_is_a_commit_request() {
        let local =
            Local { path: "a/b.txt".into(), file: "x".into(), size: 3, sha256: hex32(&[0xab; 32]), digest: [0xab; 32] };
        let json = manifest_json(&[local]).ok().expect("serializes");
        let read: CommitRequest = serde_json::from_slice(&json).expect("the server's type reads it");
        assert_eq!(read.files, [ManifestEntry { path: "a/b.txt".into(), sha256: "ab".repeat(32), size: 3 }]);
    }

    /// The digest of what the client sends is the name the server gives
    /// the tree, also for paths JSON escapes.
    #[test]
    fn the_manifest_digest_is_the_tree_the_server_names() {
        let mut files: Vec<Local> = ["z\"q\u{7f}.txt", "a/ü b.txt", "a/b\tc"]
            .iter()
            .zip(1u8..)
            .map(|(p, i)| Local {
                path: (*p).into(),
                file: "x".into(),
                size: u64::from(i),
                sha256: hex32(&[i; 32]),
                digest: [i; 32],
            })
            .collect();
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let json = manifest_json(&files).ok().expect("serializes");
        let entries: Vec<ManifestEntry> = files
            .iter()
            .map(|l| ManifestEntry { path: l.path.clone(), sha256: l.sha256.clone(), size: l.size })
            .collect();
        assert_eq!(hex::encode(Sha256::digest(&json)), airlock_host::publish::tree_digest(&entries));
    }
}
