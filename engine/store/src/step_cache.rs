//! The step cache: what a step made, by the key of everything it saw.
//!
//! An entry lives in the scope of the run that wrote it. Trusted runs
//! read and write the `trusted` scope only. An untrusted run (a fork's
//! pull request, a ref the policy does not trust) reads the trusted scope
//! and a scope of its own, `untrusted:WHO`, and writes only there: no
//! entry an untrusted run wrote is ever read by a trusted run, or by
//! another requester's untrusted run.
//!
//! An entry names its outputs by digest; the blobs are in the artifact
//! store, which a hit reads verified. Entries are kept in `step_cache`,
//! keyed `SCOPE\0KEY`.

use crate::kv::Tree;
use crate::{OutputRecord, Result, Store, decode, encode, now_ms};
use serde::{Deserialize, Serialize};

/// The scope of trusted runs.
pub const TRUSTED_SCOPE: &str = "trusted";

/// The scope an untrusted run of `requester` writes to.
pub fn untrusted_scope(requester: &str) -> String {
    format!("untrusted:{requester}")
}

/// What one step made, kept for the next run of the same step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The scope it was written in.
    pub scope: String,
    /// The step's cache key (sha256, hex).
    pub key: String,
    /// The run whose step made it.
    pub run: String,
    /// That step's name.
    pub step: String,
    /// Its outputs, by digest.
    pub outputs: Vec<OutputRecord>,
    /// When it was written.
    pub created_ms: u64,
    /// When a run last took it.
    pub last_used_ms: u64,
    /// Times a run took it.
    #[serde(default)]
    pub hits: u64,
}

impl CacheEntry {
    /// Bytes of its outputs.
    pub fn bytes(&self) -> u64 {
        self.outputs.iter().map(|o| o.size).sum()
    }
}

fn entry_key(scope: &str, key: &str) -> Vec<u8> {
    [scope.as_bytes(), b"\0", key.as_bytes()].concat()
}

impl Store {
    /// The entry for `key` that a run reading `scopes` (in that order)
    /// may use, marked used now.
    pub fn cache_lookup(&self, scopes: &[&str], key: &str) -> Result<Option<CacheEntry>> {
        for scope in scopes {
            let k = entry_key(scope, key);
            let Some(bytes) = self.db.get(Tree::StepCache, &k)? else { continue };
            let mut entry: CacheEntry = decode(&k, &bytes)?;
            entry.last_used_ms = now_ms();
            entry.hits += 1;
            // Losing a use time to a race costs nothing but a little
            // eviction order: no transaction for it.
            self.db.insert(Tree::StepCache, &k, encode(&entry))?;
            return Ok(Some(entry));
        }
        Ok(None)
    }

    /// Records what a step made, unless its scope has an entry for the
    /// key already (the first stays: a deterministic step makes the same
    /// outputs, and the first was what runs used). Returns whether it was
    /// written.
    pub fn cache_record(&self, entry: &CacheEntry) -> Result<bool> {
        let k = entry_key(&entry.scope, &entry.key);
        Ok(self.db.cas(Tree::StepCache, &k, None, Some(encode(entry)))?.is_ok())
    }

    /// Removes an entry (one whose outputs are gone, or by eviction).
    pub fn cache_remove(&self, scope: &str, key: &str) -> Result<()> {
        self.db.remove(Tree::StepCache, &entry_key(scope, key))
    }

    /// Every entry, least recently used first.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>> {
        let mut entries = self
            .db
            .all(Tree::StepCache)?
            .iter()
            .map(|(k, v)| decode::<CacheEntry>(k, v))
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then_with(|| a.key.cmp(&b.key)));
        Ok(entries)
    }

    /// Removes the entries least recently used until the outputs of those
    /// left come to at most `max_bytes`; returns those removed.
    pub fn cache_trim(&self, max_bytes: u64) -> Result<Vec<CacheEntry>> {
        let entries = self.cache_entries()?;
        let mut total: u64 = entries.iter().map(CacheEntry::bytes).sum();
        let mut removed = Vec::new();
        for entry in entries {
            if total <= max_bytes {
                break;
            }
            self.cache_remove(&entry.scope, &entry.key)?;
            total -= entry.bytes();
            removed.push(entry);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(scope: &str, key: &str, run: &str, size: u64) -> CacheEntry {
        CacheEntry {
            scope: scope.into(),
            key: key.into(),
            run: run.into(),
            step: "build".into(),
            outputs: vec![OutputRecord { path: "out".into(), sha256: "ab".repeat(32), size }],
            created_ms: now_ms(),
            last_used_ms: now_ms(),
            hits: 0,
        }
    }

    #[test]
    fn an_untrusted_entry_is_never_read_by_a_trusted_run() {
        crate::on_each_backend(|store| {
            let fork = untrusted_scope("mallory");
            assert!(store.cache_record(&entry(&fork, "k", "run-fork", 1)).expect("record"));
            assert_eq!(store.cache_lookup(&[TRUSTED_SCOPE], "k").expect("lookup"), None);
            // The fork's own later runs use it; another requester's do not.
            assert_eq!(store.cache_lookup(&[TRUSTED_SCOPE, &fork], "k").expect("lookup").expect("hit").run, "run-fork");
            let other = untrusted_scope("bob");
            assert_eq!(store.cache_lookup(&[TRUSTED_SCOPE, &other], "k").expect("lookup"), None);
            // A trusted entry is read by everyone, before the run's own.
            assert!(store.cache_record(&entry(TRUSTED_SCOPE, "k", "run-main", 1)).expect("record"));
            assert_eq!(store.cache_lookup(&[TRUSTED_SCOPE, &fork], "k").expect("lookup").expect("hit").run, "run-main");
            // The first entry of a key in a scope stays.
            assert!(!store.cache_record(&entry(TRUSTED_SCOPE, "k", "run-later", 1)).expect("record"));
            let hit = store.cache_lookup(&[TRUSTED_SCOPE], "k").expect("lookup").expect("hit");
            assert_eq!((hit.run.as_str(), hit.hits), ("run-main", 2));
        });
    }

    #[test]
    fn trimming_removes_the_least_recently_used_first() {
        crate::on_each_backend(|store| {
            for (i, key) in ["a", "b", "c"].iter().enumerate() {
                let mut e = entry(TRUSTED_SCOPE, key, "r", 100);
                e.last_used_ms = i as u64;
                store.cache_record(&e).expect("record");
            }
            store.cache_lookup(&[TRUSTED_SCOPE], "a").expect("lookup").expect("hit");
            let removed: Vec<String> = store.cache_trim(150).expect("trim").into_iter().map(|e| e.key).collect();
            assert_eq!(removed, ["b", "c"]);
            assert_eq!(store.cache_entries().expect("entries").len(), 1);
        });
    }
}
