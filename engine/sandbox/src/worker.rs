//! Big tools run in a step process of their own.
//!
//! In the engine's process a step's deadline is checked by the compiled
//! code itself (epoch interruption): at every loop back-edge and function
//! entry. That is what stops a looping step and ends a cancelled one, and
//! for most plugins it costs nothing worth measuring. For a big C++ tool
//! it is not small: Yosys runs 40% longer with the checks than without.
//!
//! So a core module of at least [`StepProcess::min_bytes`] is compiled
//! instead by an engine without the checks, into the compile cache,
//! and each of its steps runs in a fresh process: `airlock` started again
//! with a hidden first argument. The host starts it with an empty
//! environment, hands it the step on its stdin (kept open: the process
//! stops when it closes, so an engine that dies takes its steps with
//! it), and reads the guest's stdout and stderr from one pipe into the
//! step's log as it runs. The process maps the compiled module: on a
//! tool's first use from the sealed memory file the host compiled it
//! into (through `/proc`, while the host writes the cache entry beside
//! the running step), later from the cache (its sum checked, unless it
//! is the very file the host checked and keeps mapped). It builds the
//! same WASI context as an in-process step (the same [`Invocation`]
//! fields, the same memory limit) and runs it. The host keeps the
//! limits it can keep from outside: at the deadline, on cancel (the
//! process is killed when the step's future is dropped) or past the disk
//! quota it kills the process, which ends the guest wherever it is. How
//! the guest ended is written to a file in the compile cache, where no
//! guest can write; a process that ends without one (killed, crashed) is
//! a crash in words.
//!
//! The process holds nothing a step may not see: no environment, no
//! credential, only the step's own directories.

use crate::cache::Vouched;
use crate::run::Invocation;
use crate::{Failure, LogSink, Plugin, Sandbox, quota};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Core modules at least this big run in a step process of their own by
/// default: real tools (CPython, Yosys, even icepack's 390 KB), not the
/// plugins of a pipeline (tens of KB). Below a few hundred KB the
/// compile is a few milliseconds and a process would cost more than it
/// saves; above, compiling without deadline checks and without the
/// instance pool is ~15% quicker, and starting the process (~4 ms) is
/// less than that: a one-step icepack pipeline took 0.31 s instead of
/// 0.37 s on first use, and 55-61 ms instead of 66-77 ms a run after.
pub const DEFAULT_MIN_BYTES: u64 = 256 << 10;

/// How the files a step process reports into begin: in the compile
/// cache, which removes those left by a killed engine.
pub(crate) const RESULT_PREFIX: &str = "step-result-";

/// The most a step's description may be, read by the step process.
const MAX_SPEC_BYTES: u64 = 16 << 20;

/// How to start a step process.
#[derive(Debug, Clone)]
pub struct StepProcess {
    /// The program: `airlock` itself.
    pub program: PathBuf,
    /// Its arguments, which make it a step process.
    pub args: Vec<String>,
    /// Core modules at least this big run in one.
    pub min_bytes: u64,
}

/// A step, as the host hands it to a step process.
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    cache_dir: PathBuf,
    digest: String,
    /// The compiled file the host checked and holds open, if it did.
    checked: Option<crate::cache::FileId>,
    /// The host's sealed memory file with the compiled code, through
    /// `/proc`, if it has one (the first use of a tool).
    handed: Option<PathBuf>,
    name: String,
    workspace: PathBuf,
    inputs: Vec<(String, PathBuf)>,
    inputs_root: Option<PathBuf>,
    mounts: Vec<(String, PathBuf)>,
    tmp: Option<PathBuf>,
    argv0: Option<String>,
    entry: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    memory: u64,
    seed: Option<[u8; 32]>,
    result: PathBuf,
}

/// How the guest ended, as the step process reports it.
#[derive(Debug, Serialize, Deserialize)]
enum Ended {
    Ok,
    Exit(i32),
    MemoryLimit(u64),
    StackOverflow,
    TableLimit,
    Trap(String),
    Setup(String),
    Error(String),
}

impl Ended {
    fn of(result: Result<(), Failure>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(Failure::Exit(code)) => Self::Exit(code),
            Err(Failure::MemoryLimit { limit }) => Self::MemoryLimit(limit),
            Err(Failure::StackOverflow) => Self::StackOverflow,
            Err(Failure::TableLimit) => Self::TableLimit,
            Err(Failure::Trap(reason)) => Self::Trap(reason),
            Err(Failure::Setup(reason)) => Self::Setup(reason),
            Err(other) => Self::Error(format!("{other:?}")),
        }
    }

    fn result(self) -> Result<(), Failure> {
        match self {
            Self::Ok => Ok(()),
            Self::Exit(code) => Err(Failure::Exit(code)),
            Self::MemoryLimit(limit) => Err(Failure::MemoryLimit { limit }),
            Self::StackOverflow => Err(Failure::StackOverflow),
            Self::TableLimit => Err(Failure::TableLimit),
            Self::Trap(reason) => Err(Failure::Trap(reason)),
            Self::Setup(reason) => Err(Failure::Setup(reason)),
            Self::Error(reason) => Err(Failure::Trap(reason)),
        }
    }
}

/// Runs `plugin` for `inv` in a step process; its output goes to `log`.
/// The deadline and the disk quota are kept here, by killing the process.
pub(crate) async fn run(
    process: &StepProcess,
    cache_dir: &Path,
    plugin: &Plugin,
    inv: &Invocation,
    log: &LogSink,
) -> Result<(), Failure> {
    let setup = |what: &str, e: std::io::Error| Failure::Setup(format!("cannot {what} for the step's process: {e}"));
    // In the compile cache: a directory of the host's that no step sees.
    // On a tool's first use its entry may still be being written, and
    // the directory with it: made here too.
    std::fs::create_dir_all(cache_dir).map_err(|e| setup("make the compile cache's directory", e))?;
    let result = tempfile::Builder::new()
        .prefix(RESULT_PREFIX)
        .tempfile_in(cache_dir)
        .map_err(|e| setup("make a result file", e))?;
    let (checked, handed) = match &plugin.checked {
        Some(Vouched::Entry(id)) => (Some(*id), None),
        Some(Vouched::Memory(file)) => (None, Some(Vouched::handed_path(file))),
        None => (None, None),
    };
    let spec = Spec {
        cache_dir: cache_dir.to_owned(),
        digest: plugin.digest.clone(),
        checked,
        handed,
        name: plugin.name.clone(),
        workspace: inv.workspace.clone(),
        inputs: inv.inputs.clone(),
        inputs_root: inv.inputs_root.clone(),
        mounts: inv.mounts.clone(),
        tmp: inv.tmp.clone(),
        argv0: inv.argv0.clone(),
        entry: inv.entry.clone(),
        args: inv.args.clone(),
        env: inv.env.clone(),
        memory: inv.memory,
        seed: inv.seed,
        result: result.path().to_owned(),
    };
    let spec = serde_json::to_vec(&spec).map_err(|e| Failure::Setup(format!("cannot describe the step: {e}")))?;
    // stdout and stderr share one pipe, so the log interleaves them as
    // the guest wrote them, as it does in process.
    let (reader, writer) = std::io::pipe().map_err(|e| setup("make a pipe", e))?;
    let mut cmd = tokio::process::Command::new(&process.program);
    cmd.args(&process.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().map_err(|e| setup("make a pipe", e))?)
        .stderr(writer)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Setup(format!("cannot start a step process ({}): {e}", process.program.display())))?;
    // Only the child holds the pipe's writing end now: it reads to its end
    // when the child is gone.
    drop(cmd);
    let pump = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || copy_into(reader, &log))
    };
    // The step on one line; then stdin stays open for as long as this
    // side waits. Its end tells the process that the engine is gone (even
    // killed), and it stops at once.
    let mut stdin = child.stdin.take();
    if let Some(stdin) = &mut stdin {
        // A process that died at once is seen below; the write's error
        // says nothing more.
        let _ = stdin.write_all(&spec).await;
        let _ = stdin.write_all(b"\n").await;
        let _ = stdin.flush().await;
    }
    let ended = tokio::select! {
        status = child.wait() => status.map_err(|e| setup("wait", e)),
        () = tokio::time::sleep(inv.timeout) => Err(Failure::Timeout(inv.timeout)),
        over = quota::watch(inv.measured(), inv.quota) => Err(Failure::Quota(over)),
    };
    if ended.is_err() {
        let _ = child.start_kill();
    }
    // Reaped (a killed one too) before the log is read to its end.
    let _ = child.wait().await;
    drop(stdin);
    let _ = pump.await;
    let status = ended?;
    let mut text = Vec::new();
    let said = std::fs::File::open(result.path())
        .and_then(|f| f.take(MAX_SPEC_BYTES).read_to_end(&mut text))
        .ok()
        .filter(|&n| n > 0)
        .and_then(|_| serde_json::from_slice::<Ended>(&text).ok());
    match said {
        Some(ended) => ended.result(),
        None => {
            let how = describe(status);
            Err(Failure::Trap(format!("the step's process ended without saying how the tool did ({how}); see the log")))
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Copies the step process's output into the step's log until it ends.
fn copy_into(mut from: std::io::PipeReader, log: &LogSink) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => log.append(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The step process: reads one step from stdin, runs it, writes how it
/// ended to the file the host named. Returns the exit status: 0 once it
/// has reported (whatever the guest did), 2 if it could not.
pub fn main() -> i32 {
    use std::io::BufRead;
    let mut text = Vec::new();
    let mut stdin = std::io::stdin().lock();
    if let Err(e) = (&mut stdin).take(MAX_SPEC_BYTES).read_until(b'\n', &mut text) {
        eprintln!("[airlock step process: cannot read the step: {e}]");
        return 2;
    }
    drop(stdin);
    // The host keeps stdin open while it waits for this process; at its
    // end the host is gone, and so is the reason to go on.
    std::thread::spawn(|| {
        let mut byte = [0u8; 1];
        loop {
            match std::io::stdin().read(&mut byte) {
                Ok(0) | Err(_) => std::process::exit(3),
                Ok(_) => {}
            }
        }
    });
    let spec: Spec = match serde_json::from_slice(&text) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("[airlock step process: the step is not one: {e}]");
            return 2;
        }
    };
    let ended = Ended::of(serve(&spec));
    let written =
        serde_json::to_vec(&ended).map_err(std::io::Error::other).and_then(|b| std::fs::write(&spec.result, b));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("[airlock step process: cannot report how the step ended: {e}]");
            2
        }
    }
}

fn serve(spec: &Spec) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    // The guest's output goes straight to the host's pipe, unbuffered.
    let out = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Failure::Setup(format!("cannot write the log: {e}")))?;
    let log = LogSink::forwarding(std::fs::File::from(out));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Setup(format!("cannot start the step process's runtime: {e}")))?;
    let sandbox = Sandbox::new(Some(spec.cache_dir.clone())).map_err(|e| Failure::Setup(e.to_string()))?;
    let plugin = sandbox
        .load_compiled(&spec.digest, &spec.name, spec.checked, spec.handed.as_deref())
        .map_err(|e| Failure::Setup(e.to_string()))?;
    let mut inv = Invocation::new(spec.workspace.clone());
    inv.inputs = spec.inputs.clone();
    inv.inputs_root = spec.inputs_root.clone();
    inv.mounts = spec.mounts.clone();
    inv.tmp = spec.tmp.clone();
    inv.argv0 = spec.argv0.clone();
    inv.entry = spec.entry.clone();
    inv.args = spec.args.clone();
    inv.env = spec.env.clone();
    inv.memory = spec.memory;
    inv.seed = spec.seed;
    // The host keeps the deadline, by killing this process.
    inv.timeout = Duration::from_secs(10 * 365 * 24 * 3600);
    runtime.block_on(sandbox.execute(&plugin, &inv, &log, &mut Vec::new()))
}
