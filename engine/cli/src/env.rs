//! `airlock env check`: which credentials are missing, expired, or expire
//! soon; `airlock env rollback`: point a directory environment's
//! `current` back at its previous release.

use crate::exit;
use std::path::Path;

/// What `airlock env check` asks for.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Report credentials that expire within this many days.
    #[arg(long, value_name = "N", default_value_t = 14)]
    days: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Exits 0 when every credential is present and not expiring within
/// `--days`, 1 otherwise.
pub fn check(policy: Option<&Path>, args: CheckArgs) -> anyhow::Result<u8> {
    let Some(path) = policy else {
        eprintln!("error: `airlock env check` reads the environments of the admin policy");
        eprintln!("hint: pass `--policy FILE` or set AIRLOCK_POLICY");
        return Ok(exit::USAGE);
    };
    let Some(loaded) = crate::policy::load(path)? else { return Ok(exit::FAILED) };
    let base = crate::diagnostics::base_dir(path);
    let report =
        airlock_host::deploy::check_all(&loaded.policy.environments, &base, airlock_store::now_ms(), args.days);
    let bad = report.iter().filter(|r| r.state != "ok").count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.is_empty() {
        eprintln!("the policy's environments name no credentials");
    } else {
        println!("{:<16} {:<20} {:<9} {:<21}  PROBLEM", "ENVIRONMENT", "CREDENTIAL", "STATE", "EXPIRES");
        for r in &report {
            let expires = match (&r.expires, r.days_left) {
                (Some(e), Some(d)) => format!("{} ({d}d)", &e[..10]),
                _ => "-".into(),
            };
            println!(
                "{:<16} {:<20} {:<9} {:<21}  {}",
                r.environment,
                r.name,
                r.state,
                expires,
                r.problem.as_deref().unwrap_or("")
            );
        }
        if bad > 0 {
            eprintln!(
                "{bad} of {} credentials need attention (missing, expired, or expiring within {} days)",
                report.len(),
                args.days
            );
        }
    }
    Ok(if bad > 0 { exit::FAILED } else { exit::OK })
}

/// `airlock env rollback ENV`.
pub fn rollback(policy: Option<&Path>, environment: &str) -> anyhow::Result<u8> {
    let Some(path) = policy else {
        eprintln!("error: `airlock env rollback` reads the environments of the admin policy");
        eprintln!("hint: pass `--policy FILE` or set AIRLOCK_POLICY");
        return Ok(exit::USAGE);
    };
    let Some(loaded) = crate::policy::load(path)? else { return Ok(exit::FAILED) };
    let Some(env) = loaded.policy.environments.get(environment) else {
        let names: Vec<&str> = loaded.policy.environments.keys().map(String::as_str).collect();
        eprintln!("error: no environment `{environment}` in the policy; it has: {}", names.join(", "));
        return Ok(exit::USAGE);
    };
    let airlock_model::policy::Provider::Directory { path: dir, .. } = &env.provider else {
        eprintln!(
            "error: `{environment}` does not deploy to a directory; only `directory` environments keep releases to roll back to"
        );
        return Ok(exit::USAGE);
    };
    let root = crate::diagnostics::base_dir(path).join(dir);
    match airlock_host::deploy::directory::rollback(&root) {
        Ok((from, to)) => {
            eprintln!("rolled `{environment}` back: `current` now points at {to} (was {from})");
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(exit::FAILED)
        }
    }
}
