//! Validation's questions about the world outside the pipeline file,
//! answered from the file system.

use airlock_model::Lookup;
use std::path::{Path, PathBuf};

/// Answers validation's questions from the file system, relative to the
/// pipeline file's directory.
pub struct FsLookup {
    base: PathBuf,
    policy: Option<airlock_model::policy::Policy>,
}

impl FsLookup {
    /// Looks paths up relative to `base`.
    pub fn new(base: &Path) -> Self {
        Self { base: base.to_owned(), policy: None }
    }

    /// Checks publish targets against this admin policy.
    pub fn with_policy(mut self, policy: airlock_model::policy::Policy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl Lookup for FsLookup {
    fn plugin_exists(&self, path: &str) -> bool {
        self.base.join(path).is_file()
    }
    fn dir_exists(&self, path: &str) -> bool {
        self.base.join(path).is_dir()
    }
    fn environment(&self, name: &str, pipeline: &str) -> Result<(), String> {
        let Some(policy) = &self.policy else {
            return Err(format!(
                "this step deploys to `{name}`, but no admin policy was given; pass `--policy FILE` or set AIRLOCK_POLICY"
            ));
        };
        match policy.environments.get(name) {
            Some(env) if env.allows_pipeline(pipeline) => Ok(()),
            Some(_) => Err(format!("pipeline `{pipeline}` may not deploy to `{name}`: the policy does not list it")),
            None => {
                let names: Vec<&str> = policy.environments.keys().map(String::as_str).collect();
                Err(format!("no environment `{name}` in the policy; it has: {}", names.join(", ")))
            }
        }
    }
    fn publish_target(&self, name: &str) -> Result<(), String> {
        match &self.policy {
            Some(policy) => policy.target(name).map(drop),
            None => Err(format!(
                "this step publishes to `{name}`, but no admin policy was given; pass `--policy FILE` or set AIRLOCK_POLICY"
            )),
        }
    }
}
