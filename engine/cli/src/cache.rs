//! `airlock cache`: the tools this machine has fetched and the step
//! cache's entries, and keeping each to a size.
//!
//! The tool cache is the state directory's `tools/` unless
//! AIRLOCK_TOOL_CACHE names another. It keeps itself to its bound after
//! each download; `gc` does the same now, to the bound or a smaller one,
//! and never removes a tool a run used within the last hour.

use crate::exit;
use airlock_host::ArtifactStore;
use airlock_host::tools::{CacheEntry, IN_USE, ToolCache};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How often a blob cache (a server's in front of its object store, an
/// agent's of its server's blobs) is trimmed to its bound.
const TRIM_EVERY: Duration = Duration::from_secs(600);

/// Keeps `blobs`, a cache of blobs kept elsewhere, to `limit` bytes: now,
/// and every [`TRIM_EVERY`] until `stop`. A blob used within the last
/// hour stays whatever the bound.
pub(crate) fn keep_trimmed(blobs: ArtifactStore, limit: u64, stop: airlock_runner::CancellationToken) {
    tokio::spawn(async move {
        loop {
            let store = blobs.clone();
            let trimmed = tokio::task::spawn_blocking(move || store.trim_cache(limit, IN_USE)).await;
            match trimmed {
                Ok(Ok(t)) if t.removed > 0 => tracing::info!(
                    "artifact cache: removed {} blobs used least recently ({}); {} left ({}, bound {})",
                    t.removed,
                    size(t.removed_bytes),
                    t.kept,
                    size(t.kept_bytes),
                    size(limit)
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("cannot trim the artifact cache: {e}"),
                Err(e) => tracing::warn!("trimming the artifact cache stopped: {e}"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(TRIM_EVERY) => {}
            }
        }
    });
}

/// The tool cache of this state directory (or AIRLOCK_TOOL_CACHE's).
fn open(state_dir: &Path) -> anyhow::Result<ToolCache> {
    let dir = crate::tool_cache_dir(state_dir);
    let limit = crate::tool_cache_limit()?;
    Ok(ToolCache::open(&dir)
        .map_err(|e| anyhow::anyhow!("cannot open the tool cache {}: {e}", dir.display()))?
        .with_limit(limit))
}

fn json_of(entries: &[CacheEntry]) -> Vec<serde_json::Value> {
    let ms = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    entries
        .iter()
        .map(|e| serde_json::json!({ "sha256": e.sha256, "bytes": e.bytes, "last_used_ms": ms(e.last_used) }))
        .collect()
}

fn print_table(entries: &[CacheEntry]) {
    println!("{:<16} {:>10}  LAST USED", "SHA256", "SIZE");
    for e in entries {
        let ms = e.last_used.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        println!("{:<16} {:>10}  {}", &e.sha256[..e.sha256.len().min(16)], size(e.bytes), crate::output::time(ms));
    }
}

fn size(bytes: u64) -> String {
    airlock_model::format_size(bytes)
}

/// `airlock cache ls`: every tool in the cache, least recently used first.
pub fn ls(state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let cache = open(state_dir)?;
    let entries = cache.entries()?;
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    if json {
        let out = serde_json::json!({
            "dir": cache.dir(), "bytes": total, "limit": cache.limit(), "tools": json_of(&entries)
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        eprintln!("the tool cache {} is empty", cache.dir().display());
        return Ok(exit::OK);
    }
    print_table(&entries);
    eprintln!("{} tools, {} of {} in {}", entries.len(), size(total), size(cache.limit()), cache.dir().display());
    Ok(exit::OK)
}

/// A size given on the command line; `0` is a size too.
fn parse_limit(text: &str) -> Result<u64, u8> {
    match text {
        "0" => Ok(0),
        text => airlock_model::parse_size(text).map_err(|e| {
            eprintln!("error: --max-size: {e}");
            eprintln!("hint: write a size such as 2GiB or 500MB");
            exit::USAGE
        }),
    }
}

fn step_json(entries: &[airlock_store::CacheEntry]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "key": e.key, "scope": e.scope, "run": e.run, "step": e.step, "bytes": e.bytes(),
                "outputs": e.outputs.len(), "hits": e.hits, "created_ms": e.created_ms, "last_used_ms": e.last_used_ms,
            })
        })
        .collect()
}

/// `airlock cache ls --steps`: the step cache's entries, least recently
/// used first.
pub fn ls_steps(state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let store = crate::output::open(state_dir)?;
    let entries = store.cache_entries()?;
    let total: u64 = entries.iter().map(airlock_store::CacheEntry::bytes).sum();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "bytes": total, "steps": step_json(&entries) }))?
        );
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        eprintln!("the step cache is empty");
        return Ok(exit::OK);
    }
    println!("{:<16} {:<20} {:>10} {:>5}  LAST USED  MADE BY", "KEY", "SCOPE", "SIZE", "HITS");
    for e in &entries {
        println!(
            "{:<16} {:<20} {:>10} {:>5}  {}  run {} step `{}`",
            &e.key[..e.key.len().min(16)],
            e.scope,
            size(e.bytes()),
            e.hits,
            crate::output::time(e.last_used_ms),
            e.run,
            e.step
        );
    }
    eprintln!("{} entries, outputs of {}", entries.len(), size(total));
    Ok(exit::OK)
}

/// `airlock cache gc --steps`: drops the step cache's entries least
/// recently used until the outputs of the rest come to `max_size`.
pub fn gc_steps(state_dir: &Path, max_size: &str, json: bool) -> anyhow::Result<u8> {
    let limit = match parse_limit(max_size) {
        Ok(limit) => limit,
        Err(code) => return Ok(code),
    };
    let store = crate::output::open(state_dir)?;
    let removed = store.cache_trim(limit)?;
    store.flush()?;
    let left: u64 = store.cache_entries()?.iter().map(airlock_store::CacheEntry::bytes).sum();
    if json {
        let out = serde_json::json!({ "removed": step_json(&removed), "bytes": left, "limit": limit });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        eprintln!("removed {} entries; {} of outputs left, bound {}", removed.len(), size(left), size(limit));
    }
    Ok(exit::OK)
}

/// `airlock cache gc`: removes the tools least recently used until the
/// cache fits `max_size` (its bound if not given).
pub fn gc(state_dir: &Path, max_size: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let cache = open(state_dir)?;
    let limit = match max_size {
        // Zero asks for everything not in use to go.
        Some(text) => match parse_limit(text) {
            Ok(bytes) => bytes,
            Err(code) => return Ok(code),
        },
        None => cache.limit(),
    };
    let removed = cache.evict(limit, IN_USE)?;
    let left: u64 = cache.entries()?.iter().map(|e| e.bytes).sum();
    if json {
        let out = serde_json::json!({ "removed": json_of(&removed), "bytes": left, "limit": limit });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let freed: u64 = removed.iter().map(|e| e.bytes).sum();
        eprintln!("removed {} tools ({}); {} left, bound {}", removed.len(), size(freed), size(left), size(limit));
        if left > limit {
            eprintln!("the rest was used within the last hour and stays; a run may be using it");
        }
    }
    Ok(exit::OK)
}
