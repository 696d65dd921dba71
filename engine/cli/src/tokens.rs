//! `airlock token create|list|revoke`: short-lived scoped tokens, kept
//! in the state store, or made by the `airlock serve` that holds it.

use crate::exit;
use crate::output::time;
use airlock_store::{Scope, Store, TokenRecord, TokenSpec, now_ms};
use std::path::Path;
use std::time::Duration;

/// What `airlock token create` asks for.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// What the token allows: ACTION:TARGET/BUILD-ID-PREFIX, e.g.
    /// `publish:snapshots/pr-481-`.
    #[arg(long, value_name = "SCOPE", value_parser = Scope::parse)]
    scope: Scope,
    /// How long it lives, e.g. `30m`; at most 30 days.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Not usable before this time (RFC 3339, e.g. 2026-11-23T09:00:00Z);
    /// the TTL counts from then.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    not_before: Option<u64>,
    /// Uses at most.
    #[arg(long, value_name = "N")]
    max_calls: Option<u64>,
    /// Files it may publish, all uses together.
    #[arg(long, value_name = "N")]
    max_files: Option<u64>,
    /// Bytes it may upload, all uses together, e.g. `500MiB`.
    #[arg(long, value_name = "SIZE", value_parser = airlock_model::parse_size)]
    max_bytes: Option<u64>,
    /// Addresses it may be used from, e.g. `127.0.0.1/32`.
    #[arg(long, value_name = "NET")]
    cidr: Option<ipnet::IpNet>,
    /// Print JSON on stdout (the token among its fields).
    #[arg(long)]
    json: bool,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = airlock_model::parse_duration(text)?;
    if ttl.as_millis() > u128::from(airlock_store::MAX_TTL_MS) {
        return Err(format!("`{text}` is longer than 30 days; tokens are for one job"));
    }
    Ok(ttl)
}

fn parse_time(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is not a time; write it like 2026-11-23T09:00:00Z"))?;
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).map_err(|e| e.to_string())
}

/// Where tokens are managed: the state store itself, or, while an
/// `airlock serve` holds it, that server's admin socket.
enum Tokens {
    Store(Store),
    Server(std::path::PathBuf),
}

impl Tokens {
    fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let socket = airlock_server::admin::socket_path(state_dir);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Self::Server(socket));
        }
        Ok(Self::Store(open(state_dir)?))
    }

    fn create(&self, spec: &TokenSpec) -> anyhow::Result<(String, TokenRecord)> {
        match self {
            Self::Store(store) => store.create_token(spec).map_err(anyhow::Error::msg),
            Self::Server(socket) => {
                let body = airlock_server::admin::CreateToken {
                    scope: spec.scope.to_string(),
                    ttl_ms: spec.ttl_ms,
                    not_before_ms: spec.not_before_ms,
                    max_calls: spec.max_calls,
                    max_files: spec.max_files,
                    max_bytes: spec.max_bytes,
                    cidr: spec.cidr.map(|c| c.to_string()),
                    note: spec.note.clone(),
                };
                #[derive(serde::Deserialize)]
                struct Created {
                    token: String,
                    record: TokenRecord,
                }
                let created: Created = admin_call(socket, "POST", "/admin/v1/tokens", Some(&body))?;
                Ok((created.token, created.record))
            }
        }
    }

    fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        match self {
            Self::Store(store) => Ok(store.tokens()?),
            Self::Server(socket) => {
                #[derive(serde::Deserialize)]
                struct Listed {
                    tokens: Vec<TokenRecord>,
                }
                Ok(admin_call::<Listed>(socket, "GET", "/admin/v1/tokens", None::<&()>)?.tokens)
            }
        }
    }

    fn revoke(&self, id: &str) -> anyhow::Result<TokenRecord> {
        match self {
            Self::Store(store) => Ok(store.revoke_token(id)?),
            Self::Server(socket) => {
                #[derive(serde::Deserialize)]
                struct Revoked {
                    record: TokenRecord,
                }
                let path = format!("/admin/v1/tokens/{id}/revoke");
                Ok(admin_call::<Revoked>(socket, "POST", &path, None::<&()>)?.record)
            }
        }
    }
}

/// One call to a running server's admin socket; a refusal becomes an
/// error with the server's message.
fn admin_call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<T> {
    let (status, bytes) = admin_request(socket, method, path, body)?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or("the server refused");
        anyhow::bail!("{message}");
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// One request to the admin socket of the process holding a state
/// directory: (status, body).
pub fn admin_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let body = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "airlock")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, bytes))
    })
}

/// Opens the state store of `state_dir`, creating the directory.
pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(state_dir)?;
    crate::open_store(state_dir)
}

/// `airlock token create`: prints the token once, on stdout.
pub fn create(state_dir: &Path, policy: Option<&Path>, args: CreateArgs) -> anyhow::Result<u8> {
    // With the policy at hand, a token for a target it does not have is
    // a mistake worth catching now rather than at the first upload.
    if let Some(path) = policy {
        let Some(loaded) = crate::policy::load(path)? else { return Ok(exit::FAILED) };
        if let Err(e) = loaded.policy.target(&args.scope.target) {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    }
    let tokens = Tokens::open(state_dir)?;
    let mut spec = TokenSpec::new(args.scope, args.ttl.as_millis() as u64);
    spec.not_before_ms = args.not_before;
    spec.max_calls = args.max_calls;
    spec.max_files = args.max_files;
    spec.max_bytes = args.max_bytes;
    spec.cidr = args.cidr;
    spec.note = Some("airlock token create".into());
    let (token, record) = tokens.create(&spec)?;
    if args.json {
        let mut value = serde_json::to_value(&record)?;
        value["token"] = token.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{token}");
    }
    eprintln!(
        "created {}: {}, valid until {}; it is shown only now (airlock keeps its digest)",
        record.id,
        record.scope,
        time(record.expires_ms)
    );
    Ok(exit::OK)
}

fn limits(t: &TokenRecord) -> String {
    let mut parts = Vec::new();
    let mut quota = |what: &str, used: u64, max: Option<u64>| {
        if let Some(max) = max {
            parts.push(format!("{what} {used}/{max}"));
        }
    };
    quota("calls", t.used.calls, t.max_calls);
    quota("files", t.used.files, t.max_files);
    quota("bytes", t.used.bytes, t.max_bytes);
    if let Some(cidr) = &t.cidr {
        parts.push(format!("from {cidr}"));
    }
    parts.join(", ")
}

/// `airlock token list`: every token, never the tokens themselves.
pub fn list(state_dir: &Path, json: bool) -> anyhow::Result<u8> {
    let tokens = Tokens::open(state_dir)?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(exit::OK);
    }
    if tokens.is_empty() {
        eprintln!("no tokens");
        return Ok(exit::OK);
    }
    let now = now_ms();
    println!("{:<12} {:<14} {:<24} {:<23}  SCOPE / LIMITS", "ID", "STATE", "VALID FROM", "UNTIL");
    for t in tokens {
        let limits = limits(&t);
        println!(
            "{:<12} {:<14} {:<24} {:<23}  {}{}",
            t.id,
            t.state(now),
            time(t.not_before_ms),
            time(t.expires_ms),
            t.scope,
            if limits.is_empty() { String::new() } else { format!(" ({limits})") }
        );
    }
    Ok(exit::OK)
}

/// `airlock token revoke ID`.
pub fn revoke(state_dir: &Path, id: &str) -> anyhow::Result<u8> {
    let t = Tokens::open(state_dir)?.revoke(id)?;
    eprintln!("revoked {} ({})", t.id, t.scope);
    Ok(exit::OK)
}
