//! The shared tier of the artifact store: an S3-compatible object store
//! that servers on many machines keep their blobs in.
//!
//! Each server keeps its own local directory as a cache in front of it.
//! A blob is kept when it is in the object store: storing one uploads it
//! before the store answers, so a step is recorded only once its outputs
//! are where every other server can read them. A blob missing locally is
//! fetched and checked against its digest before anything reads it; the
//! object store is trusted no more than a disk.

use super::{ArtifactError, ArtifactStore};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Blobs up to this size are sent in one request; larger ones in parts
/// of this size, a few at a time.
const PART: usize = 16 << 20;

/// How many parts of one blob are in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Most digests remembered as being in the object store.
const PRESENT_AT_MOST: usize = 100_000;

/// An S3-compatible bucket (or a prefix in one) holding blobs under
/// `PREFIX/sha256/ab/cdef…`, the layout of the local store.
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix`: what messages name. Never a credential.
    url: String,
    /// The object store's client is asynchronous and the artifact store
    /// is not: its calls run on this runtime of their own, so they work
    /// from any thread, inside another runtime or not.
    runtime: Option<tokio::runtime::Runtime>,
    /// Digests this process has seen in the object store, so storing the
    /// same bytes again asks it nothing.
    present: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ObjectTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTier").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for ObjectTier {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime's own threads may not
        // do; this one's work is all awaited by then, so it may just go.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ObjectTier {
    /// The bucket at `url` (`s3://BUCKET` or `s3://BUCKET/PREFIX`),
    /// reached as the `AWS_*` variables among `env` say, as the AWS tools
    /// read them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL` (a server other than Amazon's),
    /// `AWS_ALLOW_HTTP` (an endpoint without TLS). Other variables are
    /// ignored.
    pub fn s3(url: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ArtifactError> {
        let parsed = url::Url::parse(url).map_err(|e| ArtifactError::BadLocation {
            // Whatever stands before an `@` may be a password.
            url: match url.rsplit_once('@') {
                Some((_, host)) => format!("s3://REDACTED@{host}"),
                None => url.to_owned(),
            },
            why: e.to_string(),
        })?;
        // What messages show: never a password written into the URL.
        let mut shown = parsed.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("REDACTED"));
        }
        let bad = |why: String| ArtifactError::BadLocation { url: shown.to_string(), why };
        if parsed.scheme() != "s3" {
            return Err(bad("the object store must be an s3:// URL".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
            return Err(bad("credentials and options come from the environment (AWS_*), not the URL".into()));
        }
        let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("it names no bucket".into()))?;
        let prefix = parsed.path().trim_matches('/').to_owned();
        // TLS to the store is the same rustls and ring the rest of the
        // host uses (installed once per process; a second try is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::new();
        for (name, value) in env {
            let name = name.to_ascii_lowercase();
            if name.starts_with("aws_")
                && let Ok(key) = name.parse::<object_store::aws::AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder.with_bucket_name(bucket).build().map_err(|e| bad(e.to_string()))?;
        let clean = match prefix.as_str() {
            "" => format!("s3://{bucket}"),
            p => format!("s3://{bucket}/{p}"),
        };
        Self::new(Arc::new(store), &prefix, clean)
    }

    /// Blobs in `store` under `prefix`; `url` is what messages call it.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: String) -> Result<Self, ArtifactError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("airlock-objects")
            .enable_all()
            .build()
            .map_err(|source| ArtifactError::Io { dir: url.clone().into(), source })?;
        Ok(Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            url,
            runtime: Some(runtime),
            present: Mutex::default(),
        })
    }

    /// Where the store is, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, sha256: &str) -> Key {
        let tail = format!("sha256/{}/{}", &sha256[..2], &sha256[2..]);
        match self.prefix.as_str() {
            "" => Key::from(tail),
            p => Key::from(format!("{p}/{tail}")),
        }
    }

    fn error(&self, source: object_store::Error) -> ArtifactError {
        ArtifactError::Shared { url: self.url.clone(), source: Box::new(source) }
    }

    /// Runs `work` on this tier's runtime and waits for it, from any
    /// thread.
    fn block<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, ArtifactError> {
        let stopped = || {
            self.error(object_store::Error::Generic {
                store: "S3",
                source: "the task talking to the object store stopped before it answered".into(),
            })
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().ok_or_else(stopped)?;
        runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        // The task sends before it ends, unless it panicked.
        rx.recv().map_err(|_| stopped())
    }

    fn seen(&self, sha256: &str) -> bool {
        self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(sha256)
    }

    fn mark(&self, sha256: &str) {
        let mut present = self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: forgetting only costs a request to ask again.
        if present.len() >= PRESENT_AT_MOST {
            present.clear();
        }
        present.insert(sha256.to_owned());
    }

    /// Asks the object store for the blobs under the prefix (one page of
    /// them), so that a bucket that does not exist, a wrong endpoint or a
    /// key that is refused shows up before anything is stored.
    pub fn check(&self) -> Result<(), ArtifactError> {
        let (store, prefix) = (self.store.clone(), Key::from(self.prefix.as_str()));
        self.block(async move { store.list_with_delimiter(Some(&prefix)).await })?.map(drop).map_err(|e| self.error(e))
    }

    /// The size of the blob in the object store, if it is there.
    pub fn size(&self, sha256: &str) -> Result<Option<u64>, ArtifactError> {
        let (store, key) = (self.store.clone(), self.key(sha256));
        match self.block(async move { store.head(&key).await })? {
            Ok(meta) => {
                self.mark(sha256);
                Ok(Some(meta.size))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Makes sure the object store has the blob whose bytes are in the
    /// local file `from`, uploading them unless it has.
    pub(super) fn keep(&self, sha256: &str, from: &Path) -> Result<(), ArtifactError> {
        if self.seen(sha256) || self.size(sha256)?.is_some() {
            return Ok(());
        }
        let (store, key, from) = (self.store.clone(), self.key(sha256), from.to_owned());
        let uploaded = self.block(async move {
            let mut file = std::fs::File::open(&from).map_err(|e| Upload::Io(from.clone(), e))?;
            let size = file.metadata().map_err(|e| Upload::Io(from.clone(), e))?.len();
            if size <= PART as u64 {
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes).map_err(|e| Upload::Io(from.clone(), e))?;
                store.put(&key, PutPayload::from(bytes)).await.map_err(Upload::Store)?;
                return Ok(());
            }
            let upload = store.put_multipart(&key).await.map_err(Upload::Store)?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = parts.abort().await;
                        return Err(Upload::Io(from, e));
                    }
                };
                if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = parts.abort().await;
                    return Err(Upload::Store(e));
                }
                parts.write(&buf[..n]);
            }
            parts.finish().await.map(drop).map_err(Upload::Store)
        })?;
        match uploaded {
            Ok(()) => {
                self.mark(sha256);
                Ok(())
            }
            Err(Upload::Store(e)) => Err(self.error(e)),
            Err(Upload::Io(path, source)) => Err(ArtifactError::Io { dir: path, source }),
        }
    }

    /// Fetches the blob into `local`'s directory, keeping it only if its
    /// bytes hash to `sha256`.
    pub(super) fn fetch(&self, sha256: &str, local: &ArtifactStore) -> Result<(), ArtifactError> {
        let (store, key, local, sha) = (self.store.clone(), self.key(sha256), local.clone(), sha256.to_owned());
        let fetched = self.block(async move {
            let got = match store.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(Fetch::Store(e)),
            };
            // Kept if the bytes hash to the digest, whatever length the
            // object store claims for them.
            let mut writer = local.writer(Some((&sha, got.meta.size))).map_err(Fetch::Local)?;
            writer.expected = Some((sha, None));
            writer.fetched = true;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                writer.write(&chunk.map_err(Fetch::Store)?).map_err(Fetch::Local)?;
            }
            writer.finish().map(Some).map_err(Fetch::Local)
        })?;
        match fetched {
            Ok(Some((actual, _, _))) if actual == sha256 => {
                self.mark(sha256);
                Ok(())
            }
            Ok(Some((actual, _, _))) => Err(ArtifactError::Corrupt { expected: sha256.to_owned(), actual }),
            Ok(None) => Err(ArtifactError::Missing(sha256.to_owned())),
            Err(Fetch::Store(e)) => Err(self.error(e)),
            Err(Fetch::Local(e)) => Err(e),
        }
    }
}

enum Upload {
    Io(std::path::PathBuf, std::io::Error),
    Store(object_store::Error),
}

enum Fetch {
    Store(object_store::Error),
    Local(ArtifactError),
}
