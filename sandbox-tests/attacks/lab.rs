//! The laboratory: a scratch directory with a pipeline around one hostile
//! step, planted secrets, and the checks every attack must pass.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The secret planted in the engine's environment and in a file beside
/// the state directory. It must never appear in a log, an artifact, a
/// record or anything airlock prints.
pub const CANARY: &str = "canary-3b9e61d07a5f4c28";

/// Environment variables of the engine that hold the canary.
const CANARY_VARS: &[&str] = &["AIRLOCK_TEST_CANARY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"];

/// How long one `airlock run` may take before the lab gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

fn build_once(once: &'static Once, script: &str) {
    once.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join(script))
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(status.success(), "{script} failed");
    });
}

/// A built guest from `sandbox-tests/guests/target`, by file name
/// without `.wasm`.
pub fn built(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    build_once(&BUILD, "sandbox-tests/guests/build");
    let path = repo().join("sandbox-tests/guests/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.is_file(), "no guest {}", path.display());
    path
}

/// A built example plugin from `plugins/`.
pub fn plugin(name: &str) -> String {
    static BUILD: Once = Once::new();
    build_once(&BUILD, "plugins/build");
    let path = repo().join("plugins/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.is_file(), "no plugin {}", path.display());
    path.display().to_string()
}

/// A scratch directory laid out like a project using airlock:
///
/// ```text
/// src/a.txt, src/b.txt   a source directory, an input of the attack
/// secret.txt             the canary, beside the state directory
/// pipeline.yaml          written by `attack`
/// state/                 airlock's state directory
/// ```
pub struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Self {
        let lab = Self { dir: tempfile::tempdir().expect("tempdir") };
        lab.file("src/a.txt", "alpha beta\ngamma\n");
        lab.file("src/b.txt", "one two three\n");
        lab.file("secret.txt", CANARY);
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Writes a file below the lab and returns its absolute path.
    pub fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        path.display().to_string()
    }

    /// Copies the built guest NAME into the lab and returns its path
    /// relative to the pipeline, as messages show it: `NAME.wasm`.
    pub fn guest(&self, name: &str) -> String {
        let file = format!("{name}.wasm");
        std::fs::copy(built(name), self.path().join(&file)).expect("copy guest");
        file
    }

    /// Assembles `sandbox-tests/guests/wat/NAME.wat` into the lab and
    /// returns its path relative to the pipeline: `NAME.wasm`.
    pub fn wat(&self, name: &str) -> String {
        let source = repo().join("sandbox-tests/guests/wat").join(format!("{name}.wat"));
        let bytes = wat::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let file = format!("{name}.wasm");
        self.file(&file, bytes);
        file
    }

    /// The absolute host path of the planted secret file.
    pub fn secret_path(&self) -> String {
        self.path().join("secret.txt").display().to_string()
    }

    /// Runs a pipeline in which the step `attack`, configured by `step`
    /// (YAML lines without `inputs:`), reads the source `src` and the
    /// outputs of `before`, while `beside` and `after-beside` run next to
    /// it. Extra `airlock run` flags go in `flags`.
    pub fn attack(&self, step: &str, flags: &[&str]) -> Report<'_> {
        let indented: String = step.lines().map(|l| format!("    {l}\n")).collect();
        self.pipeline(&format!("  attack:\n    needs: [before]\n    inputs: [src, before]\n{indented}"));
        self.run_pipeline(flags)
    }

    /// Writes `pipeline.yaml`: the source `src`, the hostile `steps` (YAML
    /// indented under `steps:`), and the honest steps every attack runs
    /// beside: `before` (whose outputs an attack may read), `beside` and
    /// `after-beside`, each of which must finish within 20 s.
    pub fn pipeline(&self, steps: &str) {
        let wordcount = plugin("wordcount");
        let noop = plugin("noop");
        let pipeline = format!(
            "name: attack
sources: {{ src: src }}
steps:
{steps}  before:
    uses: {wordcount}
    inputs: [src]
    args: [counts.txt, /inputs/src/a.txt, /inputs/src/b.txt]
    outputs: [counts.txt]
  beside:
    uses: {wordcount}
    inputs: [src]
    args: [beside.txt, /inputs/src/a.txt]
    outputs: [beside.txt]
    timeout: 20s
  after-beside:
    uses: {noop}
    needs: [beside, before]
    timeout: 20s
"
        );
        self.file("pipeline.yaml", pipeline);
    }

    /// Runs `pipeline.yaml` as it stands.
    pub fn run_pipeline(&self, flags: &[&str]) -> Report<'_> {
        let before = snapshot(self.path());
        let mut cmd = self.airlock();
        cmd.arg("run").arg(self.path().join("pipeline.yaml")).arg("--keep-workspaces").args(flags);
        let run = watch(cmd);
        let show = {
            let (code, out, err) = self.output(&["show", "last", "--json"]);
            assert_eq!(code, 0, "airlock show failed after the run: {err}\nrun stderr:\n{}", run.stderr);
            (serde_json::from_str(&out).expect("show --json is JSON"), out)
        };
        let after = snapshot(self.path());
        Report { lab: self, run, show: show.0, show_text: show.1, before, after }
    }

    /// An `airlock` command on the lab's state directory, with the canary
    /// in its environment.
    pub fn airlock(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
        cmd.arg("--state-dir").arg(self.state()).env("NO_COLOR", "1").env_remove("AIRLOCK_STATE_DIR");
        for var in CANARY_VARS {
            cmd.env(var, CANARY);
        }
        cmd
    }

    /// Runs `airlock ARGS` and returns (exit code, stdout, stderr).
    pub fn output(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.airlock().args(args).output().expect("spawn airlock");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// What one `airlock run` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The engine's peak resident memory, in bytes, as sampled while it ran.
    pub peak_rss: u64,
    pub elapsed: Duration,
}

/// Runs `cmd` to its end, sampling its peak memory, and kills it if it
/// outlives [`RUN_LIMIT`].
fn watch(mut cmd: Command) -> Run {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn airlock");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_rss = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if let Some(hwm) = std::fs::read_to_string(&status_file).ok().as_deref().and_then(vm_hwm) {
            peak_rss = peak_rss.max(hwm);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("airlock did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        peak_rss,
        elapsed: started.elapsed(),
    }
}

/// `VmHWM` of a `/proc/PID/status`, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One entry of a directory tree, as far as an attack could change it.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, sha256: String },
    Link { target: PathBuf },
}

/// Everything below `root` but the state directory.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("below root").to_owned();
            if rel == Path::new("state") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            let e = if meta.is_symlink() {
                Entry::Link { target: std::fs::read_link(&path).expect("readlink") }
            } else if meta.is_dir() {
                walk(root, &path, out);
                Entry::Dir { mode }
            } else {
                Entry::File { mode, sha256: hex::encode(Sha256::digest(std::fs::read(&path).expect("read"))) }
            };
            out.insert(rel, e);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_below(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

/// The result of one attack, and the checks on it.
pub struct Report<'a> {
    pub lab: &'a Lab,
    pub run: Run,
    /// `airlock show last --json`.
    pub show: serde_json::Value,
    show_text: String,
    before: BTreeMap<PathBuf, Entry>,
    after: BTreeMap<PathBuf, Entry>,
}

impl Report<'_> {
    /// The record of one step.
    pub fn step(&self, name: &str) -> &serde_json::Value {
        let steps = self.show["steps"].as_array().expect("steps");
        steps.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}: {}", self.show_text))
    }

    /// Why the attack step ended as it did.
    pub fn reason(&self) -> &str {
        self.step("attack")["reason"].as_str().unwrap_or("")
    }

    /// The attack step's log, as `airlock logs` shows it.
    pub fn log(&self) -> String {
        let (code, out, err) = self.lab.output(&["logs", "last", "attack"]);
        assert_eq!(code, 0, "{err}");
        out
    }

    /// The attack step's workspace (kept with `--keep-workspaces`).
    pub fn workspace(&self) -> PathBuf {
        self.run_dir().join("attack")
    }

    fn run_dir(&self) -> PathBuf {
        self.lab.state().join("work").join(self.show["run"]["id"].as_str().expect("run id"))
    }

    /// Everything an attack must leave true, whatever it tried:
    ///
    /// - the attack step failed (or was refused) with exactly `reason`
    ///   (for "exited with status N", followed by the last lines it
    ///   printed, which the guest chose);
    /// - the engine kept running: it exited 1 (a failed run, not a
    ///   crash), and every step not downstream of the attack succeeded;
    /// - nothing outside the attack's workspace changed: the lab's files,
    ///   the outputs the attack read, the artifact store;
    /// - the canary appears nowhere airlock wrote or printed.
    pub fn assert_contained(&self, reason: &str) {
        let ctx = || format!("\nrun stderr:\n{}\nattack log:\n{}", self.run.stderr, self.log());
        let got = self.reason();
        let got = match got.split_once(" exited with status ") {
            Some((head, rest)) => format!("{head} exited with status {}", rest.split(':').next().unwrap_or(rest)),
            None => got.to_owned(),
        };
        assert_eq!(got, reason, "the attack failed for another reason{}", ctx());
        assert_eq!(self.step("attack")["state"], "failed", "{}", ctx());
        self.assert_engine_survived();
        self.assert_outside_unchanged();
        self.assert_no_canary();
    }

    /// The engine ended the run normally and every other step succeeded.
    pub fn assert_engine_survived(&self) {
        let r = &self.run;
        assert_eq!(r.code, 1, "airlock should end a run with a failed step with exit 1\nstderr:\n{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "airlock panicked:\n{}", r.stderr);
        assert_eq!(self.show["run"]["state"], "failed");
        for name in ["before", "beside", "after-beside"] {
            assert_eq!(self.step(name)["state"], "succeeded", "step {name} did not finish: {}", self.step(name));
        }
    }

    /// The lab's files are as they were, the outputs of `before` (which
    /// the attack had as an input) are intact, and every artifact is
    /// stored under its own digest.
    pub fn assert_outside_unchanged(&self) {
        if self.before != self.after {
            let changed: Vec<_> = self
                .before
                .keys()
                .chain(self.after.keys())
                .filter(|k| self.before.get(*k) != self.after.get(*k))
                .collect();
            panic!("files outside the workspace changed: {changed:?}");
        }
        let outputs = self.run_dir().join(".outputs/before");
        let mut files = Vec::new();
        files_below(&outputs, &mut files);
        let recorded = self.step("before")["outputs"].as_array().expect("outputs").clone();
        assert_eq!(files.len(), recorded.len(), "the outputs of `before` changed: {files:?}");
        for o in recorded {
            let path = outputs.join(o["path"].as_str().expect("path"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(hex::encode(Sha256::digest(bytes)), o["sha256"], "{} changed", path.display());
        }
        let mut artifacts = Vec::new();
        files_below(&self.lab.state().join("artifacts/sha256"), &mut artifacts);
        for file in artifacts {
            let name: String =
                file.iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().map(|p| p.to_string_lossy()).collect();
            let bytes = std::fs::read(&file).expect("read artifact");
            assert_eq!(
                hex::encode(Sha256::digest(bytes)),
                name,
                "artifact {} is not what its name says",
                file.display()
            );
        }
    }

    /// The canary is in no file under the state directory (the store,
    /// logs, artifacts, compile cache, every workspace) and in nothing
    /// airlock printed.
    pub fn assert_no_canary(&self) {
        let needle = CANARY.as_bytes();
        let (_, logs, _) = self.lab.output(&["logs", "last"]);
        for (what, text) in [
            ("run stdout", &self.run.stdout),
            ("run stderr", &self.run.stderr),
            ("show --json", &self.show_text),
            ("logs", &logs),
        ] {
            assert!(!text.contains(CANARY), "the canary leaked into {what}:\n{text}");
        }
        let mut files = Vec::new();
        files_below(&self.lab.state(), &mut files);
        assert!(files.len() > 3, "the state directory is unexpectedly empty");
        for file in files {
            let mut reader = std::fs::File::open(&file).expect("open");
            let mut buf = vec![0; 1 << 20];
            let mut carry = Vec::new();
            loop {
                let n = reader.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                carry.extend_from_slice(&buf[..n]);
                assert!(memchr::memmem::find(&carry, needle).is_none(), "the canary leaked into {}", file.display());
                carry.drain(..carry.len().saturating_sub(needle.len()));
            }
        }
    }
}
