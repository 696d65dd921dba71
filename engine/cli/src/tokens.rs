//! `airlock token create|list|revoke`: short-lived scoped tokens.

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

pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
    std::fs::create_dir_all(state_dir)?;
    Store::open(state_dir).map_err(|e| anyhow::anyhow!("cannot open the state in `{}`: {e}", state_dir.display()))
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
    let store = open(state_dir)?;
    let mut spec = TokenSpec::new(args.scope, args.ttl.as_millis() as u64);
    spec.not_before_ms = args.not_before;
    spec.max_calls = args.max_calls;
    spec.max_files = args.max_files;
    spec.max_bytes = args.max_bytes;
    spec.cidr = args.cidr;
    spec.note = Some("airlock token create".into());
    let (token, record) = store.create_token(&spec).map_err(anyhow::Error::msg)?;
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
    let store = open(state_dir)?;
    let tokens = store.tokens()?;
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
    let store = open(state_dir)?;
    let t = store.revoke_token(id)?;
    eprintln!("revoked {} ({})", t.id, t.scope);
    Ok(exit::OK)
}
