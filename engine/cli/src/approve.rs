//! `airlock approve`: decide on a deployment waiting for approval.

use crate::exit;
use std::path::Path;

/// What `airlock approve` asks for.
#[derive(clap::Args)]
pub struct ApproveArgs {
    /// The run: its id, a unique prefix, or `last`.
    run: String,
    /// The step that waits.
    step: String,
    /// The one-time code printed with the request.
    #[arg(long, value_name = "CODE")]
    code: String,
    /// Deny instead of approve.
    #[arg(long)]
    deny: bool,
    /// Why, for the audit record.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Your user API token. Prefer the environment variable: a flag shows
    /// in process lists and shell history.
    #[arg(long, env = "AIRLOCK_USER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: String,
    /// Print the request, as decided, as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Decide through this `airlock serve`'s run API (e.g.
    /// http://127.0.0.1:8480) instead of a state directory on this machine.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
}

/// Records a decision: through the admin socket of the `airlock run`
/// or `airlock serve` holding the state directory, or in the store when
/// none does.
pub fn approve(state_dir: &Path, policy: Option<&Path>, args: ApproveArgs) -> anyhow::Result<u8> {
    let socket = airlock_server::admin::socket_path(state_dir);
    let decided: Result<airlock_server::views::Approval, (u8, String)> = if let Some(server) = &args.server {
        let body = airlock_server::api::DecideBody {
            code: args.code.clone(),
            approve: !args.deny,
            reason: args.reason.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(crate::remote::decide(server, &args.token, &args.run, &args.step, &body))?
    } else if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        let body = airlock_server::admin::Decide {
            token: args.token.clone(),
            code: args.code.clone(),
            approve: !args.deny,
            reason: args.reason.clone(),
        };
        let path = format!("/admin/v1/approvals/{}/{}", args.run, args.step);
        let (status, bytes) = crate::tokens::admin_request(&socket, "POST", &path, Some(&body))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.is_success() {
            let record: airlock_store::ApprovalRecord = serde_json::from_value(v["record"].clone())?;
            Ok((&record).into())
        } else {
            let code = if status.is_server_error() { exit::ERROR } else { exit::FAILED };
            Err((code, v["error"]["message"].as_str().unwrap_or("refused").to_owned()))
        }
    } else {
        // Nobody holds the state directory: decide in the store, with
        // the user taken from the policy given here.
        let Some(policy) = policy else {
            eprintln!(
                "error: no run or server holds `{}`; deciding here needs the policy to know who you are",
                state_dir.display()
            );
            eprintln!("hint: pass `--policy FILE` or set AIRLOCK_POLICY");
            return Ok(exit::USAGE);
        };
        let Some(loaded) = crate::policy::load(policy)? else { return Ok(exit::FAILED) };
        let Some(user) = crate::policy::user_of(&loaded.policy, &args.token) else {
            eprintln!("error: that token is no user's in the policy");
            return Ok(exit::FAILED);
        };
        let store = crate::tokens::open(state_dir)?;
        let run = store.find_run(&args.run)?;
        store
            .decide(&run.id, &args.step, &user, &args.code, !args.deny, args.reason.as_deref())
            .map(|record| (&record).into())
            .map_err(|e| (exit::FAILED, e.to_string()))
    };
    match decided {
        Ok(record) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            }
            let approvals = record.decisions.iter().filter(|d| d.approve).count();
            eprintln!(
                "{} the deployment of run {} step `{}` to `{}`: {} ({approvals} of {} approvals)",
                if args.deny { "denied" } else { "approved" },
                record.run,
                record.step,
                record.environment,
                record.state.as_str(),
                record.required
            );
            Ok(exit::OK)
        }
        Err((code, message)) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            Ok(code)
        }
    }
}
