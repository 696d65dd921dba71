//! `airlock serve`: the engine behind an HTTP API, web pages, published
//! trees and the publish API.

use crate::exit;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How long a partial upload in a publish target must have been left
/// untouched before a starting server deletes it: far longer than the
/// server lets an upload pause.
const PARTIAL_UNTOUCHED: std::time::Duration = std::time::Duration::from_secs(600);

/// What `airlock serve` asks for.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// The address users reach this server at (`https://ci.example.com`):
    /// commit statuses sent to forges link to run pages under it
    /// [default: `http://` and the address listened on].
    #[arg(long, value_name = "URL", value_parser = parse_public_url)]
    public_url: Option<String>,
    /// The address the other servers on the same database (`--database`)
    /// reach this one at, like `http://10.0.0.5:8480`: a server asked for
    /// the log of a step running here, or the one-time code of an
    /// approval waiting here, asks this server for it with the caller's
    /// credential [default: `http://` and the address listened on, unless
    /// that is `0.0.0.0` or `[::]`].
    #[arg(long, value_name = "URL", value_parser = parse_advertised_url)]
    advertise: Option<String>,
    /// The pipeline files the server runs: submissions name a file in
    /// this directory [default: `pipelines`, if there is one; without it
    /// the server only serves publish targets].
    #[arg(long, value_name = "DIR")]
    pipelines: Option<PathBuf>,
    /// Runs at once, at most; more wait in the queue.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_runs: u16,
    /// Steps at once within each run [default: number of cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Connections open at once, at most; more are answered 503 and
    /// closed.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Connections open at once from one client address (IPv6: one /64),
    /// at most.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: u32,
    /// How long a connection may stay open with no request going on.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    idle_timeout: std::time::Duration,
    /// How long a request body may pause before the request is refused.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    body_timeout: std::time::Duration,
    /// How long an answer may wait for the client to take more of it
    /// before the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    write_timeout: std::time::Duration,
    /// How long this server's hold on a run lasts without being renewed
    /// (it is renewed every third of it). When servers share a database
    /// (`--database`), another takes over the runs of one that stopped
    /// answering this long ago.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease)]
    lease: std::time::Duration,
    /// Where artifacts are kept [default: the state directory's
    /// `artifacts`]: a directory, or an S3-compatible bucket
    /// (`s3://BUCKET/PREFIX`, reached with the AWS_* environment:
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) with the state directory's
    /// `artifacts` as its local cache. Servers sharing a database share
    /// it, so that a run one began another can finish.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    artifacts: Option<String>,
}

/// Where `--artifacts` says artifacts are kept.
enum Artifacts {
    Dir(PathBuf),
    Bucket(airlock_host::ObjectTier),
}

/// Reads `--artifacts`; an object store is asked for a blob at once, so
/// a wrong endpoint, bucket or key stops the server before it starts.
fn artifacts(arg: &str) -> anyhow::Result<Artifacts> {
    // A URL of any scheme (or a mistyped `s3:`) is an object store; the
    // store refuses those it does not speak, rather than making a
    // directory of that name.
    if !arg.contains("://") && !arg.starts_with("s3:") {
        return Ok(Artifacts::Dir(PathBuf::from(arg)));
    }
    let tier = airlock_host::ObjectTier::s3(arg, std::env::vars())?;
    tier.check().map_err(|e| {
        anyhow::anyhow!("{e}\nhint: check the bucket and the AWS_* environment (keys, AWS_ENDPOINT_URL, AWS_REGION)")
    })?;
    Ok(Artifacts::Bucket(tier))
}

fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let d = airlock_model::parse_duration(text)?;
    if d < std::time::Duration::from_millis(300) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("`{text}` is not between 300ms and 1h"));
    }
    Ok(d)
}

fn parse_public_url(text: &str) -> Result<String, String> {
    let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('@') && !host.contains(char::is_whitespace) => {
            Ok(text.trim_end_matches('/').to_owned())
        }
        _ => Err(format!("`{text}` is not an http(s) URL without credentials, like `https://ci.example.com`")),
    }
}

fn parse_advertised_url(text: &str) -> Result<String, String> {
    match text.strip_prefix("http://") {
        Some(host)
            if !host.is_empty() && !host.contains(['@', '/', '?', '#']) && !host.contains(char::is_whitespace) =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "`{text}` is not a plain `http://HOST:PORT` address (servers reach each other without TLS, \
             on the network they share)"
        )),
    }
}

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = airlock_model::parse_duration(text)?;
    if d.is_zero() || d > std::time::Duration::from_secs(3600) {
        return Err(format!("`{text}` is not between 1ms and 1h"));
    }
    Ok(d)
}

/// Binds the admin socket, replacing one left by a process that died:
/// the caller holds the state directory's lock, so nothing else is
/// behind it.
pub(crate) fn admin_listener(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    tokio::net::UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot create the admin socket `{}`: {e}", socket.display()))
}

/// Cancels `stop` on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) fn cancel_on_stop_signals(stop: airlock_runner::CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        stop.cancel();
    });
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(state_dir: &Path, policy: Option<&Path>, args: ServeArgs) -> anyhow::Result<u8> {
    let Some(policy) = policy else {
        eprintln!("error: `airlock serve` needs the admin policy: its users, publish targets and environments");
        eprintln!("hint: pass `--policy FILE` or set AIRLOCK_POLICY; see the book's server guide");
        return Ok(exit::USAGE);
    };
    let Some(loaded) = crate::policy::load(policy)? else { return Ok(exit::FAILED) };
    let cache_limit = crate::artifact_cache_limit()?;
    let pipelines = match args.pipelines {
        Some(dir) if !dir.is_dir() => {
            eprintln!("error: the pipelines directory `{}` does not exist", dir.display());
            eprintln!("hint: pass `--pipelines DIR`: the directory whose pipeline files the server runs");
            return Ok(exit::USAGE);
        }
        Some(dir) => Some(dir),
        None => Some(PathBuf::from("pipelines")).filter(|d| d.is_dir()),
    };
    let names: Vec<String> = loaded.targets.iter().map(|t| t.name().to_owned()).collect();
    // Uploads cut off by a server that was killed leave partial blobs
    // (invisible, but on disk for ever). One nobody has written to for a
    // while is no upload going on (another process may publish to the
    // same target directory), so it goes.
    for target in &loaded.targets {
        match target.remove_partial(PARTIAL_UNTOUCHED) {
            Ok(0) => {}
            Ok(n) => tracing::info!("target {}: removed {n} partial uploads", target.name()),
            Err(e) => tracing::warn!("target {}: could not remove partial uploads: {e}", target.name()),
        }
    }
    let users = crate::policy::users(&loaded.policy);
    let repositories = loaded.policy.repositories.clone();
    let agents = loaded.policy.agents.clone();
    let has_repositories = !repositories.is_empty();
    let policy_dir = loaded.dir.clone();
    // Opening the engine resumes nothing yet; it takes back the runs this
    // state directory's last engine held. The queue then goes on with
    // them, and claims the runs waiting.
    let mut engine = crate::open_engine_leased(state_dir, args.lease)?
        .with_targets(loaded.targets.clone())
        .with_policy(loaded.policy, loaded.dir);
    match args.artifacts.as_deref().map(artifacts).transpose()? {
        Some(Artifacts::Dir(dir)) => engine = engine.with_artifacts(&dir),
        Some(Artifacts::Bucket(tier)) => engine = engine.with_shared_artifacts(tier),
        None => {}
    }
    let bucket = engine.artifacts().shared_url().map(str::to_owned);
    // In front of an object store, the artifacts directory is a cache.
    let cache = bucket.is_some().then(|| engine.artifacts().clone());
    let shutdown = airlock_runner::CancellationToken::new();
    let jobs = args.jobs.map(usize::from).unwrap_or_else(|| airlock_runner::RunOptions::default().jobs);
    let limits = airlock_server::conn::Limits {
        max_connections: args.max_connections as usize,
        max_per_address: args.max_connections_per_address as usize,
        idle_timeout: args.idle_timeout,
        body_timeout: args.body_timeout,
        write_timeout: args.write_timeout,
        ..Default::default()
    };
    let mut app = airlock_server::App::new(engine.store().clone(), loaded.targets)
        .with_agents(agents)
        .with_users(users)
        .with_limits(limits)
        .with_repositories(repositories, policy_dir);
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    // Where the other servers on the database reach this one.
    let advertised = args.advertise.clone().or_else(|| (!addr.ip().is_unspecified()).then(|| format!("http://{addr}")));
    match &advertised {
        Some(url) => engine.store().announce(url)?,
        None if engine.store().is_shared() => tracing::warn!(
            "listening on {addr}, the other servers on the database cannot tell where to reach this one: \
             they show a step's log only once it ended here, and no approval code of this server's runs; \
             pass `--advertise http://HOST:PORT`"
        ),
        None => {}
    }
    // Runs come from the pipelines directory, from the repositories'
    // webhooks, or both.
    let mut runs = None;
    if pipelines.is_some() || has_repositories {
        let queue = airlock_runner::queue::RunQueue::start(
            std::sync::Arc::new(engine),
            pipelines.as_deref(),
            usize::from(args.max_runs),
            jobs,
            shutdown.clone(),
        )?;
        queue.set_public_url(args.public_url.as_deref().unwrap_or(&format!("http://{addr}")));
        if has_repositories {
            let intake = std::sync::Arc::new(airlock_runner::intake::Intake::new(queue.clone()));
            tokio::spawn(intake.serve(app.deliveries_recorded(), shutdown.clone()));
        }
        runs = Some(queue.clone());
        app = app.with_runs(queue);
    }
    let app = std::sync::Arc::new(app);
    // Token management while the server holds the state: a socket in a
    // directory only this user may enter (see airlock_server::admin).
    let socket = airlock_server::admin::socket_path(state_dir);
    let admin = admin_listener(&socket)?;
    // From here on stderr may be closed by whoever reads it (a parent
    // that waits for this first line only): writes may fail, quietly.
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "serving on http://{addr}/ (runs at /ui; publish targets: {}) (Ctrl-C stops)",
        if names.is_empty() { "none".into() } else { names.join(", ") }
    );
    if let Some(url) = &bucket {
        let _ = writeln!(err, "artifacts in {url}, cached in {}", state_dir.join("artifacts").display());
    }
    if pipelines.is_none() && !has_repositories {
        let _ =
            writeln!(err, "no pipelines directory: serving publish targets only (`--pipelines DIR` runs pipelines)");
    }
    cancel_on_stop_signals(shutdown.clone());
    if let Some(cache) = cache {
        crate::cache::keep_trimmed(cache, cache_limit, shutdown.clone());
    }
    let admin = tokio::spawn(airlock_server::serve_admin(admin, app.clone(), shutdown.clone()));
    // The HTTP server on threads of its own, so a read never queues
    // behind the engine's steps on this runtime's workers.
    let http = airlock_server::serve_apart(listener, app, shutdown.clone())?;
    let mut joined = tokio::task::spawn_blocking(move || http.join());
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = &mut joined => {}
    }
    shutdown.cancel();
    let served = joined.await?.map_err(|_| anyhow::anyhow!("the HTTP server's thread panicked"))?;
    let _ = admin.await;
    let _ = std::fs::remove_file(&socket);
    if let Some(queue) = runs {
        tokio::task::spawn_blocking(move || queue.let_go_all()).await?;
    }
    served?;
    // Runs under way stay `running` in the store, let go of: another
    // server on the database takes them over, or the next start here
    // resumes them. Nobody may be reading stderr any more: a failed
    // write is not a failed stop.
    let _ = writeln!(std::io::stderr(), "stopped");
    Ok(exit::OK)
}
