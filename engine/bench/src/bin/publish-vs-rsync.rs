//! `airlock publish` to a loopback `airlock serve`, beside rsync to a
//! loopback rsync daemon, on the same tree in the same run.
//!
//! ```sh
//! apt-get install rsync
//! cargo build --release -p airlock-cli
//! cargo run --release -p airlock-bench --bin publish-vs-rsync [-- FILES MIB ROUNDS]
//! ```
//!
//! It builds a tree of mixed sizes (by default 10,008 files, ~614 MiB:
//! many small files, some medium, a few large; random, incompressible
//! bytes from a fixed seed), then times, for each tool: the first
//! publish, publishing the unchanged tree again, and publishing it with
//! two files changed. rsync copies into the same directory each time (its
//! normal use); airlock publishes each time under a new build id (its
//! normal use), so "unchanged" means "a new build whose files the server
//! already has". Every command runs as its own process, as in CI.
//!
//! Disk caches make single timings on a small VM swing by a factor of
//! two, so it does ROUNDS rounds (default 3), each into fresh
//! destinations, alternating which tool goes first, with the disk synced
//! before every command, and prints the medians.

use anyhow::{Context, bail};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `files` files of about `mib` MiB in all under `dir`: 90% small
/// (1-8 KiB), 9.5% medium (32-256 KiB), 0.5% large (the rest, evenly).
fn make_tree(dir: &Path, files: usize, mib: u64) -> anyhow::Result<(usize, u64)> {
    let mut rng = StdRng::seed_from_u64(0xa1b0c4);
    let small = files * 90 / 100;
    let medium = files * 95 / 1000;
    let large = files - small - medium;
    let mut sizes: Vec<u64> = (0..small).map(|_| rng.random_range(1024..8 * 1024)).collect();
    sizes.extend((0..medium).map(|_| rng.random_range(32 * 1024..256 * 1024)));
    let so_far: u64 = sizes.iter().sum();
    let rest = (mib << 20).saturating_sub(so_far);
    sizes.extend((0..large).map(|_| rest / large.max(1) as u64));
    let mut buf = Vec::new();
    let mut total = 0;
    for (i, size) in sizes.iter().enumerate() {
        let sub = dir.join(format!("d{:02}/e{:02}", i % 40, i / 40 % 25));
        std::fs::create_dir_all(&sub)?;
        buf.resize(*size as usize, 0);
        rng.fill_bytes(&mut buf);
        std::fs::write(sub.join(format!("f{i:05}.bin")), &buf)?;
        total += size;
    }
    Ok((sizes.len(), total))
}

fn run(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

/// What `--help` prints.
const USAGE: &str = "\
usage: publish-vs-rsync [FILES MIB ROUNDS]

`airlock publish` to a loopback server beside rsync to a loopback rsync
daemon, on the same tree. Defaults: 10008 files, 614 MiB, 3 rounds.";

fn main() -> anyhow::Result<()> {
    airlock_bench::help(USAGE);
    let args = airlock_bench::positional();
    let smoke = airlock_bench::smoke();
    let files: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(if smoke { 20 } else { 10_008 });
    let mib: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(if smoke { 1 } else { 614 });
    let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(if smoke { 1 } else { 3 }).max(1);
    let airlock = airlock_bench::airlock_bin()?;
    if Command::new("rsync").arg("--version").output().is_err() {
        bail!("rsync is not installed; `apt-get install rsync`");
    }
    let work = tempfile::tempdir()?;
    let tree = work.path().join("tree");
    eprint!("building the tree ... ");
    let (n, bytes) = make_tree(&tree, files, mib)?;
    eprintln!("{n} files, {:.0} MiB", bytes as f64 / (1 << 20) as f64);

    // rsync daemon on loopback, writing into its own directory.
    let rsync_port = free_port()?;
    let dest = work.path().join("rsync-dest");
    std::fs::create_dir_all(&dest)?;
    let conf = work.path().join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "pid file = {}\nuse chroot = false\n[bench]\npath = {}\nread only = false\nuid = root\ngid = root\n",
            work.path().join("rsyncd.pid").display(),
            dest.display()
        ),
    )?;
    let _rsyncd = airlock_bench::Guard(
        Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address", "127.0.0.1", "--port", &rsync_port.to_string(), "--config"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );

    // airlock serve on loopback, with a token for the whole run.
    let state = work.path().join("state");
    let policy = work.path().join("policy.yaml");
    let mut targets = String::from("targets:\n");
    for r in 0..rounds {
        targets.push_str(&format!("  bench{r}:\n    dir: published-{r}\n    limits: {{ total: 100GiB }}\n"));
    }
    std::fs::write(&policy, targets)?;
    let mut tokens = Vec::new();
    for r in 0..rounds {
        let t = Command::new(&airlock)
            .arg("--state-dir")
            .arg(&state)
            .args(["token", "create", "--ttl", "2h", "--scope", &format!("publish:bench{r}/")])
            .output()?;
        tokens.push(String::from_utf8(t.stdout)?.trim().to_owned());
    }
    let mut serve = Command::new(&airlock);
    serve.arg("--state-dir").arg(&state).arg("--policy").arg(&policy).args(["serve", "--listen", "127.0.0.1:0"]);
    let (_serve, server) = airlock_bench::start_serve(serve)?;
    // Wait for the rsync daemon to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", rsync_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let rsync = |round: usize| {
        let mut c = Command::new("rsync");
        c.arg("-a").arg(format!("{}/", tree.display())).arg(format!("rsync://127.0.0.1:{rsync_port}/bench/{round}/"));
        c
    };
    let client_state = work.path().join("client");
    let publish = |round: usize, build: &str| {
        let mut c = Command::new(&airlock);
        c.arg("--state-dir")
            .arg(&client_state)
            .env("AIRLOCK_TOKEN", &tokens[round])
            .args(["publish", "--server", &server, "--target", &format!("bench{round}"), "--strip", "1", build])
            .arg(&tree)
            .current_dir(work.path());
        c
    };
    let sync = || Command::new("sync").status().map(drop);
    // The stat cache trusts only files whose times are 2 s old.
    sync()?;
    std::thread::sleep(Duration::from_millis(2100));

    const SCENARIOS: [&str; 3] = ["initial publish", "unchanged re-publish", "two files changed"];
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); SCENARIOS.len()];
    for round in 0..rounds {
        for (s, _) in SCENARIOS.iter().enumerate() {
            if s == 2 {
                // Two files of the tree, whatever its size.
                for i in [(7 + round) % n, (4242 + round) % n] {
                    let f = tree.join(format!("d{:02}/e{:02}/f{i:05}.bin", i % 40, i / 40 % 25));
                    let mut bytes = std::fs::read(&f)?;
                    bytes[0] ^= 0xff;
                    std::fs::write(&f, bytes)?;
                }
            }
            let build = format!("r{round}s{s}");
            let mut one = |rsync_turn: bool| -> anyhow::Result<()> {
                sync()?;
                if rsync_turn {
                    times[s].0.push(run(&mut rsync(round))?);
                } else {
                    times[s].1.push(run(&mut publish(round, &build))?);
                }
                Ok(())
            };
            let rsync_first = round % 2 == 0;
            one(rsync_first)?;
            one(!rsync_first)?;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let rows: Vec<(&str, Duration, Duration)> =
        SCENARIOS.iter().zip(times.iter_mut()).map(|(what, (r, a))| (*what, median(r), median(a))).collect();

    println!(
        "{n} files, {:.0} MiB, loopback, each command a new process; medians of {rounds} rounds",
        bytes as f64 / (1 << 20) as f64
    );
    println!("{:<22} {:>10} {:>10} {:>8}", "", "rsync", "airlock", "ratio");
    for (what, r, a) in rows {
        println!(
            "{what:<22} {:>9.3}s {:>9.3}s {:>7.2}x   {}",
            r.as_secs_f64(),
            a.as_secs_f64(),
            a.as_secs_f64() / r.as_secs_f64(),
            if a <= r { "airlock no slower" } else { "airlock slower" }
        );
    }
    println!("ratio = airlock / rsync; below 1 means airlock is faster");
    Ok(())
}
