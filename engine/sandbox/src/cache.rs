//! Compiled plugins on disk, keyed by (plugin digest, engine configuration).
//!
//! Compiling a plugin takes milliseconds to seconds; loading the compiled
//! form takes microseconds. Each entry is written to a temporary file and
//! renamed into place, so a crash leaves either no entry or a whole one.
//! Each entry starts with the sha256 of the rest, checked before the bytes
//! are handed to wasmtime: a damaged or truncated file is recompiled, never
//! loaded.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where compiled plugins are kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir`, created when first written to.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, plugin_digest: &str, engine: &wasmtime::Engine) -> PathBuf {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{plugin_digest}-{:016x}.cwasm", hasher.finish()))
    }

    /// The compiled bytes for this plugin and engine, if a sound entry exists.
    pub fn get(&self, plugin_digest: &str, engine: &wasmtime::Engine) -> Option<Vec<u8>> {
        let data = std::fs::read(self.path(plugin_digest, engine)).ok()?;
        if data.len() < 32 {
            return None;
        }
        let (sum, body) = data.split_at(32);
        if Sha256::digest(body).as_slice() != sum {
            tracing::warn!(plugin = plugin_digest, "compiled plugin in the cache is damaged; compiling again");
            return None;
        }
        Some(body.to_vec())
    }

    /// Stores compiled bytes. Failing to cache is not failing to run: the
    /// error is returned for the caller to log.
    pub fn put(&self, plugin_digest: &str, engine: &wasmtime::Engine, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&Sha256::digest(compiled))?;
        tmp.write_all(compiled)?;
        tmp.persist(self.path(plugin_digest, engine)).map_err(|e| e.error)?;
        Ok(())
    }
}
