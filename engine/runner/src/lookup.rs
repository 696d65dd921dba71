//! Validation's questions about the world outside the pipeline file,
//! answered from the file system.

use airlock_model::Lookup;
use std::path::{Path, PathBuf};

/// Answers validation's questions from the file system, relative to the
/// pipeline file's directory.
pub struct FsLookup {
    base: PathBuf,
    policy: Option<airlock_model::policy::Policy>,
    /// Whether plugins and sources must resolve inside `base`.
    confined: bool,
}

impl FsLookup {
    /// Looks paths up relative to `base`.
    pub fn new(base: &Path) -> Self {
        Self { base: base.to_owned(), policy: None, confined: false }
    }

    /// Finds plugins and sources only inside `base`, after every link is
    /// followed: for a repository's checkout, whose pipeline was written
    /// by whoever pushed, and may not reach the server's own files.
    pub fn confined(mut self) -> Self {
        self.confined = true;
        self
    }

    /// Whether `path` may be used: inside the base when confined.
    fn reachable(&self, path: &str) -> bool {
        if !self.confined {
            return true;
        }
        let (Ok(base), Ok(found)) = (std::fs::canonicalize(&self.base), std::fs::canonicalize(self.base.join(path)))
        else {
            return false;
        };
        found.starts_with(base)
    }

    /// Checks publish targets against this admin policy.
    pub fn with_policy(mut self, policy: airlock_model::policy::Policy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl Lookup for FsLookup {
    fn plugin_exists(&self, path: &str) -> bool {
        self.base.join(path).is_file() && self.reachable(path)
    }
    fn dir_exists(&self, path: &str) -> bool {
        self.base.join(path).is_dir() && self.reachable(path)
    }
    fn paths_hint(&self) -> Option<&'static str> {
        self.confined.then_some(
            "in a repository's pipeline, paths start at the repository's root and must stay inside its commit",
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_lookup_finds_nothing_outside_its_base() {
        let dir = tempfile::tempdir().expect("dir");
        let (tree, outside) = (dir.path().join("tree"), dir.path().join("secret"));
        std::fs::create_dir_all(tree.join("src")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(tree.join("step.wasm"), b"\0asm").expect("write");
        std::fs::write(outside.join("step.wasm"), b"\0asm").expect("write");
        std::os::unix::fs::symlink(&outside, tree.join("out")).expect("link");
        let open = FsLookup::new(&tree);
        let confined = FsLookup::new(&tree).confined();
        assert!(confined.paths_hint().expect("a hint").contains("repository's root"));
        for (path, plugin) in [("step.wasm", true), ("src", false)] {
            let found = if plugin { confined.plugin_exists(path) } else { confined.dir_exists(path) };
            assert!(found, "{path} is inside");
        }
        // Through `..` or a link: found by the open lookup, not by the
        // confined one.
        for plugin in ["../secret/step.wasm", "out/step.wasm"] {
            assert!(open.plugin_exists(plugin) && !confined.plugin_exists(plugin), "{plugin}");
        }
        assert!(open.dir_exists("out") && !confined.dir_exists("out"));
    }
}
