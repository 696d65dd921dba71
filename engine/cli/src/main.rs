//! `airlock`: run YAML pipelines of sandboxed WebAssembly steps.
//!
//! The binary is thin: argument parsing, rendering and exit codes. The
//! work happens in the library crates (model, runner, store).

mod agent;
mod approve;
mod attest;
mod cache;
mod diagnostics;
mod env;
mod fetch;
mod http;
mod output;
mod policy;
mod progress;
mod publish;
mod remote;
mod serve;
mod tokens;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes; documented in `airlock --help` and the book.
mod exit {
    /// Everything succeeded.
    pub const OK: u8 = 0;
    /// The run failed, or a pipeline is invalid.
    pub const FAILED: u8 = 1;
    /// Bad usage: an unknown flag, a missing argument, a bad `--param`.
    pub const USAGE: u8 = 2;
    /// airlock itself could not work: the state directory is unusable,
    /// a file cannot be read.
    pub const ERROR: u8 = 3;
    /// The run was cancelled (Ctrl-C).
    pub const CANCELLED: u8 = 130;
}

/// An error and every cause under it, on one line: `a: b: c`.
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

const AFTER_HELP: &str = "\
Exit codes:
  0    success
  1    the run failed, or a pipeline is invalid
  2    usage error (bad flag, bad --param)
  3    airlock could not work (unreadable file, unusable state directory)
  130  the run was cancelled (Ctrl-C)

Environment:
  AIRLOCK_STATE_DIR  where runs, logs and artifacts are kept (default .airlock)
  AIRLOCK_DATABASE_URL  keep runs, logs, tokens and approvals in PostgreSQL instead
  AIRLOCK_POLICY     the admin policy file (users, targets, environments)
  AIRLOCK_TOKEN      the token `airlock publish` sends
  AIRLOCK_USER_TOKEN your user API token (`airlock run [--server]`, `airlock approve`)
  AIRLOCK_TOOL_CACHE where fetched tools are kept [default: the state directory's tools/]
  AIRLOCK_TOOL_CACHE_LIMIT  fetched tools kept, least recently used dropped first [default: 16GiB]
  AIRLOCK_COMPILE_CACHE_LIMIT  compiled plugins kept, least recently used dropped first [default: 4GiB]
  AIRLOCK_ARTIFACT_CACHE_LIMIT  blobs a server keeps in front of its bucket, or an agent of its server's [default: 16GiB]
  AIRLOCK_STEP_PROCESS_MIN_SIZE  core modules this big run each in a process of their own, or `off`
  [default: 256KiB]
  NO_COLOR           disables colour
  RUST_LOG           engine diagnostics on stderr, e.g. RUST_LOG=airlock=debug";

/// Run CI pipelines whose every step is a sandboxed WebAssembly program.
#[derive(Parser)]
#[command(name = "airlock", version, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// Where runs, logs, artifacts and compiled plugins are kept.
    #[arg(
        long,
        global = true,
        env = "AIRLOCK_STATE_DIR",
        hide_env_values = true,
        default_value = ".airlock",
        value_name = "DIR"
    )]
    state_dir: PathBuf,

    /// The admin policy file: users, publish targets, environments. Needed
    /// by `serve` and by pipelines that publish or deploy.
    #[arg(long, global = true, env = "AIRLOCK_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Keep runs, steps, logs, tokens and approvals in this PostgreSQL
    /// database (`postgres://USER:PASSWORD@HOST:PORT/DB`) instead of the
    /// state directory's sled. Artifacts and caches stay in the state
    /// directory. Prefer the environment variable: a flag shows in
    /// process lists.
    #[arg(long, global = true, env = "AIRLOCK_DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// The `--database` of this process, set once at start.
static DATABASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Opens the store: the `--database` one if given, else the state
/// directory's.
pub(crate) fn open_store(state_dir: &std::path::Path) -> anyhow::Result<airlock_store::Store> {
    match DATABASE.get().and_then(Option::as_deref) {
        Some(url) => {
            airlock_store::Store::open_postgres(url).map_err(|e| anyhow::anyhow!("cannot open the database: {e}"))
        }
        None => airlock_store::Store::open(state_dir)
            .map_err(|e| anyhow::anyhow!("cannot open the state in `{}`: {e}", state_dir.display())),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline (here, or on a server with `--server`) and wait for it to end.
    Run(RunArgs),
    /// Check pipeline files and report every problem found.
    Validate {
        /// Pipeline files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print diagnostics as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List runs, newest first.
    Runs {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Show at most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run a run's plugin steps again from the same inputs and say, for
    /// each, whether it made the same bytes; exits 1 if any did not.
    Verify(verify::VerifyArgs),
    /// Show a run: its steps, their state, reasons and outputs.
    Show {
        /// Run id, a unique prefix of one, or `last`.
        run: String,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the logs of a run's steps.
    Logs {
        /// Run id, a unique prefix of one, or `last`.
        run: String,
        /// Only this step.
        step: Option<String>,
        /// Read them from this `airlock serve` (e.g. http://127.0.0.1:8480),
        /// as the user of AIRLOCK_USER_TOKEN.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// With `--server` and a STEP: print what the step writes as it
        /// writes it, until it ends.
        #[arg(long, short, requires_all = ["server", "step"])]
        follow: bool,
    },
    /// Fetch (and compile) the tools of pipelines ahead of their first run.
    Fetch(fetch::FetchArgs),
    /// List the tools fetched to this machine or the step cache, or keep either to a size.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Print the JSON Schema of the pipeline format.
    Schema,
    /// Run pipelines for a team: the run API, web pages, publish targets.
    Serve(serve::ServeArgs),
    /// Run sandboxed steps for an `airlock serve` on this machine (steps
    /// with `runs_on:`), as an agent of one of its policy's pools.
    Agent(agent::AgentArgs),
    /// Run a repository's `manual` pipelines at a branch or tag, on a server.
    Trigger {
        /// The repository, by the server policy's name for it.
        repository: String,
        /// The branch (`main`) or tag (`refs/tags/v1.2`) whose commit runs.
        #[arg(value_name = "REF", default_value = "main")]
        git_ref: String,
        /// The `airlock serve` to ask (e.g. http://127.0.0.1:8480), as the
        /// user of AIRLOCK_USER_TOKEN (who needs the `runner` role).
        #[arg(long, value_name = "URL")]
        server: String,
        /// Return once the server has recorded the request, without waiting
        /// for it to fetch the commit and start the runs.
        #[arg(long)]
        no_wait: bool,
        /// Print the delivery (state, runs, or why none started) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List a repository's deliveries on a server, or approve one held for approval.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Publish files to an `airlock serve`, uploading only what it lacks.
    Publish(publish::PublishArgs),
    /// Approve (or deny) a deployment waiting for approval.
    Approve(approve::ApproveArgs),
    /// Signed provenance: the key that checks it, and checking a file.
    Attest {
        #[command(subcommand)]
        command: AttestCommand,
    },
    /// Check the environments of the admin policy.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Make API tokens for the users of the admin policy.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Create, list and revoke short-lived scoped tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// List every credential: missing, expired, or expiring within
    /// `--days`; exits 1 if any is.
    Check(env::CheckArgs),
    /// Point a `directory` environment's `current` back at the release
    /// before it.
    Rollback {
        /// The environment.
        environment: String,
    },
}

#[derive(Subcommand)]
enum AttestCommand {
    /// Print the public key (PEM) of the policy's provenance signing key,
    /// for those who verify what this airlock publishes.
    Key,
    /// Check a provenance file (a DSSE envelope of an in-toto statement)
    /// against a public key, and optionally the files it names; exits 1
    /// if anything does not match.
    Verify(attest::VerifyArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Print a new user API token on stdout, and on stderr the
    /// `token_sha256:` line for the user's entry in the policy.
    Token {
        /// Print both as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Every fetched tool (by the sha256 it is pinned by), its size with
    /// its unpacked files, and when a run last used it; least recent first.
    /// With `--steps`, the step cache's entries instead.
    Ls {
        /// List the step cache: each entry's key, scope, the step that
        /// made it, the bytes of its outputs and how often runs took it.
        #[arg(long)]
        steps: bool,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove the tools least recently used until the cache fits a size;
    /// a tool used within the last hour stays (a run may be using it).
    /// With `--steps`, the step cache's entries instead.
    Gc {
        /// Trim the step cache: drop the entries least recently used until
        /// the outputs of the rest come to SIZE (their files stay in the
        /// artifact store, where runs list them).
        #[arg(long, requires = "max_size")]
        steps: bool,
        /// The size to keep to [default for tools: AIRLOCK_TOOL_CACHE_LIMIT,
        /// or 16GiB].
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        /// Print what was removed as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// The repository's webhook deliveries and runs asked for by hand,
    /// newest first, with what each became.
    List {
        /// The repository, by the server policy's name for it.
        repository: String,
        /// The `airlock serve` to ask, as the user of AIRLOCK_USER_TOKEN.
        #[arg(long, value_name = "URL")]
        server: String,
        /// Only those in this state (`waiting` lists the pull requests held
        /// for approval).
        #[arg(long, value_parser = ["received", "started", "ignored", "failed", "waiting"])]
        state: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Let a delivery held for approval (a first-time contributor's pull
    /// request) start its runs, as the user of AIRLOCK_USER_TOKEN (who
    /// needs the `runner` role).
    Approve {
        /// The repository, by the server policy's name for it.
        repository: String,
        /// The delivery's id, as `airlock deliveries list` shows it.
        delivery: String,
        /// The `airlock serve` to ask.
        #[arg(long, value_name = "URL")]
        server: String,
        /// Print the delivery as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it, once.
    Create(tokens::CreateArgs),
    /// List tokens: their ids, scopes, validity and use (never the tokens).
    List {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; it stops working at once.
    Revoke {
        /// The token's id, as `airlock token list` shows it (`tok-...`).
        id: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The pipeline file; with `--server`, its path within the server's
    /// pipelines directory.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Submit the run to this `airlock serve` (e.g. http://127.0.0.1:8480)
    /// and follow it there, as the user of AIRLOCK_USER_TOKEN.
    #[arg(long, value_name = "URL", conflicts_with_all = ["jobs", "keep_workspaces"])]
    server: Option<String>,
    /// Set a pipeline parameter (repeatable).
    #[arg(short, long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Steps running at once, from 1 to 256 [default: number of cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Print progress as JSON lines on stdout, one event per line.
    #[arg(long)]
    json: bool,
    /// Keep step workspaces under the state directory after the run.
    #[arg(long)]
    keep_workspaces: bool,
    /// Run every step, taking nothing from the step cache; what the steps
    /// make is still recorded for later runs.
    #[arg(long, conflicts_with = "server")]
    no_cache: bool,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// Log lines of a server waiting to be written at most; more are dropped.
const LOG_QUEUE: usize = 10_000;

/// The first argument that makes `airlock` a step process (see
/// `airlock_sandbox::worker`): started by the engine, never by hand.
const STEP_PROCESS_ARG: &str = "__airlock-step-process";

fn main() -> ExitCode {
    // Before anything else: a step process's stderr is the step's log,
    // and it has nothing to parse.
    if std::env::args_os().nth(1).is_some_and(|a| a == STEP_PROCESS_ARG) {
        return ExitCode::from(u8::try_from(airlock_sandbox::worker::main()).unwrap_or(2));
    }
    let cli = Cli::parse();
    let _ = DATABASE.set(cli.database.clone());
    // The server logs each request (never a token) unless RUST_LOG says otherwise.
    let quiet = match cli.command {
        Command::Serve(_) => "warn,airlock_server=info,airlock_runner=info,airlock::cache=info",
        Command::Agent(_) => "warn,airlock::cache=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet.into());
    // A server's stderr may be a pipe nobody reads any more, or one that
    // is full: its log lines then go through a bounded queue to a thread
    // of their own and are dropped when they cannot be written, so a
    // request never waits for (or fails on) the log. Errors writing the
    // log are not reported on the same stderr (that would panic).
    let _log_guard = if matches!(cli.command, Command::Serve(_)) {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_QUEUE)
            .finish(std::io::stderr());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(output::color())
            .log_internal_errors(false)
            .init();
        Some(guard)
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(output::color())
            .log_internal_errors(false)
            .init();
        None
    };
    let code = match cli.command {
        Command::Validate { files, json } => diagnostics::validate(&files, json, cli.policy.as_deref(), &cli.state_dir),
        Command::Run(args) if args.server.is_some() => runtime().and_then(|rt| {
            let server = args.server.clone().unwrap_or_default();
            rt.block_on(remote::run(&server, &args.file.to_string_lossy(), &args.params, args.json))
        }),
        Command::Run(args) => runtime().and_then(|rt| {
            // The scheduler runs as a task on a worker, beside the steps it
            // starts, so handing over to the next step stays on one thread.
            let (state_dir, policy) = (cli.state_dir.clone(), cli.policy.clone());
            let code = rt.block_on(async move {
                tokio::spawn(async move { progress::run(&state_dir, policy.as_deref(), args).await }).await?
            });
            // The run is recorded whole by now. A tool fetch or compile a
            // cancelled run left behind only fills a cache (each lands by
            // an atomic rename): exit without waiting for it.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            code
        }),
        Command::Serve(args) => {
            runtime().and_then(|rt| rt.block_on(serve::serve(&cli.state_dir, cli.policy.as_deref(), args)))
        }
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent::agent(&cli.state_dir, args))),
        Command::Trigger { repository, git_ref, server, no_wait, json } => {
            runtime().and_then(|rt| rt.block_on(remote::trigger(&server, &repository, &git_ref, no_wait, json)))
        }
        Command::Deliveries { command: DeliveriesCommand::List { repository, server, state, limit, json } } => {
            runtime()
                .and_then(|rt| rt.block_on(remote::deliveries(&server, &repository, state.as_deref(), limit, json)))
        }
        Command::Deliveries { command: DeliveriesCommand::Approve { repository, delivery, server, json } } => {
            runtime().and_then(|rt| rt.block_on(remote::approve_delivery(&server, &repository, &delivery, json)))
        }
        Command::Publish(args) => runtime().and_then(|rt| rt.block_on(publish::publish(&cli.state_dir, args))),
        Command::Runs { json, limit } => output::runs(&cli.state_dir, json, limit),
        Command::Show { run, json } => output::show(&cli.state_dir, &run, json),
        Command::Verify(args) => runtime().and_then(|rt| {
            let (state_dir, policy) = (cli.state_dir.clone(), cli.policy.clone());
            rt.block_on(async move {
                tokio::spawn(async move { verify::verify(&state_dir, policy.as_deref(), args).await }).await?
            })
        }),
        Command::Logs { run, step, server: Some(server), follow } => {
            runtime().and_then(|rt| rt.block_on(remote::logs(&server, &run, step.as_deref(), follow)))
        }
        Command::Logs { run, step, server: None, .. } => output::logs(&cli.state_dir, &run, step.as_deref()),
        Command::Fetch(args) => fetch::fetch(&cli.state_dir, cli.policy.as_deref(), args),
        Command::Cache { command: CacheCommand::Ls { steps: false, json } } => cache::ls(&cli.state_dir, json),
        Command::Cache { command: CacheCommand::Ls { steps: true, json } } => cache::ls_steps(&cli.state_dir, json),
        Command::Cache { command: CacheCommand::Gc { steps: false, max_size, json } } => {
            cache::gc(&cli.state_dir, max_size.as_deref(), json)
        }
        Command::Cache { command: CacheCommand::Gc { steps: true, max_size, json } } => {
            cache::gc_steps(&cli.state_dir, max_size.as_deref().unwrap_or_default(), json)
        }
        Command::Schema => {
            print!("{}", airlock_model::schema::pipeline_schema_json());
            Ok(exit::OK)
        }
        Command::Token { command: TokenCommand::Create(args) } => {
            tokens::create(&cli.state_dir, cli.policy.as_deref(), args)
        }
        Command::Approve(args) => approve::approve(&cli.state_dir, cli.policy.as_deref(), args),
        Command::Attest { command: AttestCommand::Key } => attest::key(cli.policy.as_deref()),
        Command::Attest { command: AttestCommand::Verify(args) } => attest::verify_file(&args),
        Command::Env { command: EnvCommand::Check(args) } => env::check(cli.policy.as_deref(), args),
        Command::Env { command: EnvCommand::Rollback { environment } } => {
            env::rollback(cli.policy.as_deref(), &environment)
        }
        Command::User { command: UserCommand::Token { json } } => {
            let (token, digest) = airlock_store::new_user_token();
            if json {
                println!("{}", serde_json::json!({ "token": token, "token_sha256": digest }));
            } else {
                println!("{token}");
                eprintln!("token_sha256: {digest}");
                eprintln!(
                    "put that line in the user's entry of the policy; give the token to the user; it is shown only now"
                );
            }
            Ok(exit::OK)
        }
        Command::Token { command: TokenCommand::List { json } } => tokens::list(&cli.state_dir, json),
        Command::Token { command: TokenCommand::Revoke { id } } => tokens::revoke(&cli.state_dir, &id),
    };
    match code {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            output::error(&e);
            ExitCode::from(exit::ERROR)
        }
    }
}

/// What AIRLOCK_TOOL_CACHE_LIMIT says, or the default.
pub(crate) fn tool_cache_limit() -> anyhow::Result<u64> {
    match std::env::var("AIRLOCK_TOOL_CACHE_LIMIT").ok().filter(|v| !v.is_empty()) {
        Some(text) => airlock_model::parse_size(&text).map_err(|e| anyhow::anyhow!("AIRLOCK_TOOL_CACHE_LIMIT: {e}")),
        None => Ok(airlock_host::tools::DEFAULT_TOOL_CACHE_LIMIT),
    }
}

/// What AIRLOCK_ARTIFACT_CACHE_LIMIT says, or the default: the bytes of
/// blobs a server keeps in front of its object store, and an agent keeps
/// of its server's.
pub(crate) fn artifact_cache_limit() -> anyhow::Result<u64> {
    match std::env::var("AIRLOCK_ARTIFACT_CACHE_LIMIT").ok().filter(|v| !v.is_empty()) {
        Some(text) => {
            airlock_model::parse_size(&text).map_err(|e| anyhow::anyhow!("AIRLOCK_ARTIFACT_CACHE_LIMIT: {e}"))
        }
        None => Ok(airlock_host::artifacts::DEFAULT_CACHE_LIMIT),
    }
}

/// Where fetched tools are kept: AIRLOCK_TOOL_CACHE, or the state
/// directory's `tools`.
pub(crate) fn tool_cache_dir(state_dir: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("AIRLOCK_TOOL_CACHE")
        .filter(|d| !d.is_empty())
        .map_or_else(|| state_dir.join("tools"), std::path::PathBuf::from)
}

/// The engine on a state directory, fetching tools into the cache that
/// AIRLOCK_TOOL_CACHE names, if it names one, and keeping as much compiled
/// code as AIRLOCK_COMPILE_CACHE_LIMIT says.
pub(crate) fn open_engine(state_dir: &std::path::Path) -> anyhow::Result<airlock_runner::Engine> {
    open_engine_leased(state_dir, airlock_store::DEFAULT_LEASE)
}

/// [`open_engine`], holding runs with leases of `lease`.
pub(crate) fn open_engine_leased(
    state_dir: &std::path::Path,
    lease: std::time::Duration,
) -> anyhow::Result<airlock_runner::Engine> {
    // A bad limit is refused before the state directory is touched.
    let limit = match std::env::var("AIRLOCK_COMPILE_CACHE_LIMIT").ok().filter(|v| !v.is_empty()) {
        Some(text) => {
            Some(airlock_model::parse_size(&text).map_err(|e| anyhow::anyhow!("AIRLOCK_COMPILE_CACHE_LIMIT: {e}"))?)
        }
        None => None,
    };
    let tool_limit = tool_cache_limit()?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| anyhow::anyhow!("cannot make the state directory `{}`: {e}", state_dir.display()))?;
    let mut engine = airlock_runner::Engine::open_leased(state_dir, open_store(state_dir)?, lease)?;
    engine = engine.with_tool_cache(&tool_cache_dir(state_dir))?.with_tool_cache_limit(tool_limit);
    if let Some(bytes) = limit {
        engine = engine.with_compile_cache_limit(bytes);
    }
    // Big tools run in a process of their own, without deadline checks
    // compiled in; `AIRLOCK_STEP_PROCESS_MIN_SIZE` moves the bound ("off"
    // keeps every step in this process).
    let min_bytes =
        match std::env::var("AIRLOCK_STEP_PROCESS_MIN_SIZE").ok().filter(|v| !v.is_empty()) {
            Some(off) if off == "off" => None,
            Some(text) => Some(airlock_model::parse_size(&text).map_err(|e| {
                anyhow::anyhow!("AIRLOCK_STEP_PROCESS_MIN_SIZE: {e}; write a size such as 256KiB, or off")
            })?),
            None => Some(airlock_sandbox::worker::DEFAULT_MIN_BYTES),
        };
    if let Some(min_bytes) = min_bytes {
        match std::env::current_exe() {
            Ok(program) => {
                engine = engine.with_step_process(airlock_sandbox::worker::StepProcess {
                    program,
                    args: vec![STEP_PROCESS_ARG.to_owned()],
                    min_bytes,
                });
            }
            Err(e) => tracing::warn!("cannot find the airlock program ({e}); every step runs in this process"),
        }
    }
    Ok(engine)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
