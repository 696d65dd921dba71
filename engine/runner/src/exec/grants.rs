//! What the environment a pipeline runs for lets its plugin steps do.

use super::Shared;
use airlock_model::PluginStep;
use std::path::{Path, PathBuf};

/// The grants of the environment a pipeline runs for, ready to apply.
pub(crate) struct EnvironmentGrants {
    environment: String,
    pub(crate) grants: airlock_model::policy::Grants,
    /// The allowed plugin patterns, as absolute paths.
    plugins: Option<globset::GlobSet>,
}

impl EnvironmentGrants {
    pub(crate) fn new(
        environment: &str,
        grants: &airlock_model::policy::Grants,
        policy_dir: &Path,
    ) -> Result<Self, String> {
        let plugins = if grants.plugins.is_empty() {
            None
        } else {
            let base = std::fs::canonicalize(policy_dir).unwrap_or_else(|_| policy_dir.to_owned());
            let mut set = globset::GlobSetBuilder::new();
            for pattern in &grants.plugins {
                let absolute = normalize(&base.join(pattern));
                let glob = globset::GlobBuilder::new(&absolute.to_string_lossy())
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("plugin pattern `{pattern}` of environment `{environment}`: {e}"))?;
                set.add(glob);
            }
            Some(set.build().map_err(|e| e.to_string())?)
        };
        Ok(Self { environment: environment.to_owned(), grants: grants.clone(), plugins })
    }

    /// The environment's name.
    pub(crate) fn environment(&self) -> &str {
        &self.environment
    }

    /// Whether the environment lets this tool run: its `plugins:` must
    /// name the digest of what was fetched, as `sha256:HEX`.
    pub(crate) fn check_tool(&self, tool: &str, sha256: &str) -> Result<(), String> {
        if self.plugins.is_none() || self.grants.plugins.iter().any(|p| p.strip_prefix("sha256:") == Some(sha256)) {
            return Ok(());
        }
        Err(format!(
            "tool `{tool}` is not among the plugins environment `{}` allows; an admin allows it by adding `sha256:{sha256}` to the environment's `plugins:`",
            self.environment
        ))
    }

    /// Whether the environment lets this plugin file run.
    pub(crate) fn check_plugin(&self, file: &Path, as_written: &str) -> Result<(), String> {
        let Some(allowed) = &self.plugins else { return Ok(()) };
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| normalize(file));
        if allowed.is_match(&real) {
            Ok(())
        } else {
            Err(format!(
                "plugin `{as_written}` is not among the plugins environment `{}` allows ({})",
                self.environment,
                self.grants.plugins.join(", ")
            ))
        }
    }
}

/// A step's limits: what the pipeline asked for, bounded by what the
/// environment it runs for grants.
pub(crate) fn effective_limits(shared: &Shared, step: &PluginStep) -> airlock_model::Limits {
    match &shared.grants {
        Some(g) => g.grants.limits.apply(&step.limits, &step.limits_written),
        None => step.limits,
    }
}

/// `path` with `.` and `..` resolved by name, not by the file system.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
