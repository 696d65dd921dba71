//! A PostgreSQL server of a test's own, on loopback: made with Debian's
//! `initdb` in a temporary directory, started on a free port, stopped
//! when dropped. As root (CI), the server runs as the `postgres` user,
//! since PostgreSQL refuses to run as root.
//!
//! With `AIRLOCK_TEST_DATABASE_URL` set, tests use that server instead,
//! each in a database of its own.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server for tests.
pub struct TestPostgres {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    base: String,
    next: std::sync::atomic::AtomicU32,
    /// How to start it again.
    spawn: Option<Spawn>,
}

/// What starts a server: its programs, the user it runs as, its
/// directory (data, socket, log) and port.
type Spawn = (PathBuf, Option<(u32, u32)>, PathBuf, u16, bool);

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestPostgres {
    /// Stops the server (a fast shutdown: sessions are ended), as an
    /// operator's restart or a crash of the database would. A server of
    /// `AIRLOCK_TEST_DATABASE_URL` is not stopped, and
    /// [`start_again`](Self::start_again) then says so.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again, on the same port and data.
    pub fn start_again(&mut self) -> Result<(), String> {
        let Some((bin, user, dir, port, durable)) = self.spawn.clone() else {
            return Err("the server of AIRLOCK_TEST_DATABASE_URL is not the test's own: it was not stopped, \
                        and cannot be started again; unset the variable for this test"
                .into());
        };
        if self.child.is_none() {
            self.child = Some(spawn(&bin, user, &dir, port, durable)?);
            wait_ready(&bin, &dir, port)?;
        }
        Ok(())
    }
}

fn spawn(bin: &Path, user: Option<(u32, u32)>, dir: &Path, port: u16, durable: bool) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).map_err(|e| e.to_string())?;
    let mut cmd = command(&bin.join("postgres"), user);
    if !durable {
        cmd.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
    }
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))
}

fn wait_ready(bin: &Path, dir: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = command(&bin.join("pg_isready"), None)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!("postgres did not start: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's PostgreSQL programs, the newest version installed.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); `apt-get install postgresql`"))?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    found.pop().ok_or_else(|| "no PostgreSQL server under /usr/lib/postgresql; `apt-get install postgresql`".into())
}

/// The uid and gid of the `postgres` user, when this runs as root.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::current().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

impl TestPostgres {
    /// Starts a server (or takes `AIRLOCK_TEST_DATABASE_URL`'s) that
    /// does not sync its writes to disk: tests need no durability
    /// across a power cut, and run faster without.
    pub fn start() -> Result<Self, String> {
        Self::start_with(false)
    }

    /// Starts a server that syncs every commit, as a production one
    /// does: what a benchmark measures.
    pub fn start_durable() -> Result<Self, String> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self, String> {
        if let Ok(url) = std::env::var("AIRLOCK_TEST_DATABASE_URL") {
            return Ok(Self { child: None, _dir: None, base: url, next: 0.into(), spawn: None });
        }
        let bin = bin_dir()?;
        let user = run_as();
        let dir = tempfile::Builder::new().prefix("airlock-pg-").tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let out = command(&bin.join("initdb"), user)
            .args(["-A", "trust", "-U", "airlock", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = spawn(&bin, user, dir.path(), port, durable)?;
        let home = dir.path().to_owned();
        let pg = Self {
            child: Some(child),
            base: format!("postgres://airlock@127.0.0.1:{port}/postgres"),
            _dir: Some(dir),
            next: 0.into(),
            spawn: Some((bin.clone(), user, home.clone(), port, durable)),
        };
        wait_ready(&bin, &home, port)?;
        Ok(pg)
    }

    /// Every key and value in the database at `url`, one after the
    /// other: what a test searches for a secret that must not be there.
    pub fn dump(&self, url: &str) -> Result<Vec<u8>, String> {
        on_connection(url.to_owned(), |client| async move {
            let rows = client.query("SELECT key, value FROM airlock_kv", &[]).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for row in rows {
                out.extend_from_slice(row.get::<_, &[u8]>(0));
                out.extend_from_slice(row.get::<_, &[u8]>(1));
            }
            Ok(out)
        })
    }

    /// The URL of a new, empty database on the server.
    pub fn database(&self) -> Result<String, String> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("airlock_test_{}_{n}", std::process::id());
        let (head, _) = self.base.rsplit_once('/').ok_or("the database URL has no database name")?;
        let url = format!("{head}/{name}");
        on_connection(self.base.clone(), move |client| async move {
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.map_err(|e| e.to_string())?;
            Ok(url)
        })
    }
}

/// Connects to `url` and does `work` with the connection, on a thread and
/// runtime of its own: the caller may be inside an async runtime.
fn on_connection<T, F>(
    url: String,
    work: impl FnOnce(tokio_postgres::Client) -> F + Send + 'static,
) -> Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, String>>,
{
    std::thread::spawn(move || -> Result<T, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, conn) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            work(client).await
        })
    })
    .join()
    .map_err(|_| "a test's database work panicked".to_string())?
}
