//! Helpers shared by the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Builds the example plugins (a no-op when they are up to date).
pub fn plugins() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("plugins/build"))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("run plugins/build");
        assert!(status.success(), "plugins/build failed");
    });
    repo().join("plugins/target")
}

/// An `airlock` command using `state` as its state directory, with a
/// clean environment (no colour, no inherited state directory).
pub fn airlock(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.arg("--state-dir").arg(state).env("NO_COLOR", "1").env_remove("AIRLOCK_STATE_DIR").env_remove("RUST_LOG");
    cmd
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("spawn airlock");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A scratch directory holding a pipeline file written from `yaml`, with
/// `{plugins}` replaced by the absolute path of the built plugins.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Writes `pipeline.yaml` and returns its path.
    pub fn pipeline(&self, yaml: &str) -> PathBuf {
        let text = yaml.replace("{plugins}", &plugins().display().to_string());
        let path = self.path().join("pipeline.yaml");
        std::fs::write(&path, text).expect("write pipeline");
        path
    }

    /// Writes a file below the scratch directory.
    pub fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    /// `airlock run` on the scratch pipeline.
    pub fn run(&self, extra: &[&str]) -> (i32, String, String) {
        let mut cmd = airlock(&self.state());
        cmd.arg("run").arg(self.path().join("pipeline.yaml")).args(extra);
        output(&mut cmd)
    }

    /// `airlock show last --json`, parsed.
    pub fn show(&self) -> serde_json::Value {
        let (code, stdout, stderr) = output(airlock(&self.state()).args(["show", "last", "--json"]));
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).expect("show --json is JSON")
    }

    /// The JSON record of one step of the last run.
    pub fn step(&self, name: &str) -> serde_json::Value {
        let show = self.show();
        show["steps"].as_array().expect("steps").iter().find(|s| s["name"] == name).cloned().expect("step present")
    }
}

/// Every file below `dir`, at any depth.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() { dirs.push(path) } else { out.push(path) }
        }
    }
    out
}
