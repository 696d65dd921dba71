//! The admin policy file: one file for the engine's own configuration,
//! written by the platform admin, never by a pipeline author.
//!
//! So far it names the publish targets: where each one keeps its
//! published trees and how much one publish may hold. It is read with the
//! same spanned parser as pipelines, so every mistake is reported at once
//! with `line:col`, and unknown keys are errors: a misspelt limit must not
//! silently become no limit.
//!
//! ```yaml
//! targets:
//!   snapshots:
//!     dir: /srv/airlock/snapshots
//!     limits: { file: 1GiB, files: 20000, total: 10GiB }
//!   releases:
//!     dir: releases          # relative to the policy file
//! ```

use crate::parse::{Checker, closest, count, document, get, join, size};
use crate::yaml::Node;
use crate::{Diagnostic, Span};
use indexmap::IndexMap;
use serde::Serialize;

const TOP_KEYS: &[&str] = &["targets"];
const TARGET_KEYS: &[&str] = &["dir", "description", "limits"];
const TARGET_LIMIT_KEYS: &[&str] = &["file", "files", "total"];

/// Names a target may not have: they are paths of the server's own.
pub const RESERVED_TARGET_NAMES: &[&str] = &["api", "static"];

/// Largest file one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 2 << 30;
/// Most files one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_FILES: u64 = 100_000;
/// Most bytes one publish may hold when the policy sets no limit.
pub const DEFAULT_MAX_TOTAL: u64 = 20 << 30;

/// The admin policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Policy {
    /// Publish targets by name.
    pub targets: IndexMap<String, PublishTarget>,
}

/// A place published trees go: `DIR` holds every build published to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishTarget {
    /// The directory, as written (relative paths are relative to the
    /// policy file; the caller resolves them).
    pub dir: String,
    /// What the target is for.
    pub description: Option<String>,
    /// Largest single file of a publish.
    pub max_file_size: u64,
    /// Most files in one publish.
    pub max_files: u64,
    /// Most bytes in one publish, all files together.
    pub max_total: u64,
    /// Where the target's name was written.
    #[serde(skip)]
    pub span: Span,
}

/// Parses and checks a policy file, reporting every error found.
pub fn load_policy(file: &str, src: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut c = Checker { file, diags: Vec::new() };
    let policy = document(&mut c, src, "a policy", "a policy names its publish `targets:`").map(|root| {
        let top = c.map(&root, "", Some(TOP_KEYS));
        let targets = get(top, "targets").map(|t| targets(&mut c, t)).unwrap_or_default();
        Policy { targets }
    });
    let mut diags = c.diags;
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.col)).unwrap_or((0, 0)));
    match policy {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(diags),
    }
}

fn targets(c: &mut Checker<'_>, node: &Node) -> IndexMap<String, PublishTarget> {
    let mut out = IndexMap::new();
    for (key, value) in c.map(node, "targets", None) {
        let Some(name) = key.as_scalar() else { continue };
        let path = format!("targets.{name}");
        c.name(name, "target name", &path, key.span);
        if RESERVED_TARGET_NAMES.contains(&name) {
            c.error(
                "reserved-name",
                &path,
                key.span,
                format!("`{name}` cannot name a target: the server uses `/{name}/` itself"),
                Some("choose another name, e.g. `snapshots`".into()),
            );
        }
        let entries = c.map(value, &path, Some(TARGET_KEYS));
        let dir = match get(entries, "dir") {
            Some(d) => c.scalar(d, &join(&path, "dir")).map(str::to_owned),
            None => {
                c.error(
                    "missing-key",
                    &join(&path, "dir"),
                    key.span,
                    format!("target `{name}` has no `dir`"),
                    Some("set `dir:` to the directory that keeps its published trees".into()),
                );
                None
            }
        };
        let description = get(entries, "description").and_then(|d| c.scalar(d, &join(&path, "description")));
        let mut target = PublishTarget {
            dir: dir.unwrap_or_default(),
            description: description.map(str::to_owned),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_files: DEFAULT_MAX_FILES,
            max_total: DEFAULT_MAX_TOTAL,
            span: key.span,
        };
        if let Some(limits) = get(entries, "limits") {
            let lpath = join(&path, "limits");
            let l = c.map(limits, &lpath, Some(TARGET_LIMIT_KEYS));
            if let Some(n) = get(l, "file").and_then(|n| size(c, n, &join(&lpath, "file"))) {
                target.max_file_size = n;
            }
            if let Some(n) = get(l, "files").and_then(|n| count(c, n, &join(&lpath, "files"), 10_000_000)) {
                target.max_files = n;
            }
            if let Some(n) = get(l, "total").and_then(|n| size(c, n, &join(&lpath, "total"))) {
                target.max_total = n;
            }
        }
        out.insert(name.to_owned(), target);
    }
    out
}

impl Policy {
    /// The target called `name`, or an error naming the targets there are.
    pub fn target(&self, name: &str) -> Result<&PublishTarget, String> {
        self.targets.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            match closest(name, &names) {
                Some(k) => format!("no publish target `{name}` in the policy; did you mean `{k}`?"),
                None if names.is_empty() => format!("no publish target `{name}`: the policy names none"),
                None => format!("no publish target `{name}` in the policy; it has: {}", names.join(", ")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_targets_with_defaults_and_limits() {
        let src = "targets:\n  snapshots:\n    dir: snaps\n    limits: { file: 1MiB, files: 10 }\n  releases:\n    dir: /srv/rel\n";
        let p = load_policy("policy.yaml", src).expect("valid");
        let s = &p.targets["snapshots"];
        assert_eq!(
            (s.dir.as_str(), s.max_file_size, s.max_files, s.max_total),
            ("snaps", 1 << 20, 10, DEFAULT_MAX_TOTAL)
        );
        assert_eq!(p.targets["releases"].dir, "/srv/rel");
        assert!(p.target("snapshot").expect_err("unknown").contains("did you mean `snapshots`?"));
    }

    #[test]
    fn reports_every_mistake_with_its_place() {
        let src =
            "targets:\n  api:\n    dir: x\n  snaps:\n    dri: y\n    limits: { files: lots, totl: 1GiB }\nusers: {}\n";
        let diags = load_policy("policy.yaml", src).expect_err("invalid");
        let shown: Vec<String> = diags
            .iter()
            .map(|d| format!("{} {} {} {}", d.span.map_or(0, |s| s.line), d.code, d.path, d.message))
            .collect();
        assert_eq!(
            shown,
            [
                "2 reserved-name targets.api `api` cannot name a target: the server uses `/api/` itself",
                "4 missing-key targets.snaps.dir target `snaps` has no `dir`",
                "5 unknown-key targets.snaps.dri unknown key `dri`",
                "6 bad-number targets.snaps.limits.files `lots` is not a whole number from 0 to 10000000",
                "6 unknown-key targets.snaps.limits.totl unknown key `totl`",
                "7 unknown-key users unknown key `users`",
            ]
        );
    }
}
