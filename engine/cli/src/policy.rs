//! Loading the admin policy file (`--policy FILE`).

use crate::diagnostics;
use airlock_host::publish::TargetStore;
use airlock_model::policy::Policy;
use std::path::Path;

/// A policy and its publish targets, with their directories resolved.
pub struct Loaded {
    /// The policy as written.
    pub policy: Policy,
    /// The directory its relative paths start from.
    pub dir: std::path::PathBuf,
    /// Its targets, with directories relative to the policy file resolved.
    pub targets: Vec<TargetStore>,
}

/// Reads and checks the policy at `path`, rendering every mistake to
/// stderr. `Ok(None)` means it was invalid (already reported).
pub fn load(path: &Path) -> anyhow::Result<Option<Loaded>> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the policy file `{}`: {e}", path.display()))?;
    let policy = match airlock_model::policy::load_policy(&path.display().to_string(), &src) {
        Ok(p) => p,
        Err(diags) => {
            eprint!("{}", diagnostics::render(path, &src, &diags));
            return Ok(None);
        }
    };
    let base = diagnostics::base_dir(path);
    let targets = policy.targets.iter().map(|(name, t)| TargetStore::new(name, base.join(&t.dir), t.clone())).collect();
    Ok(Some(Loaded { policy, targets, dir: base }))
}

/// The users of a policy as the server takes them.
pub fn users(policy: &Policy) -> Vec<airlock_server::api::ApiUser> {
    policy
        .users
        .iter()
        .map(|(n, u)| airlock_server::api::ApiUser {
            name: n.clone(),
            token_sha256: u.token_sha256.clone(),
            roles: u.roles.clone(),
        })
        .collect()
}

/// Who a user API token belongs to in `policy`.
pub fn user_of(policy: &Policy, token: &str) -> Option<String> {
    let digest = airlock_store::user_token_digest(token.trim());
    policy.users.iter().find(|(_, u)| u.token_sha256 == digest).map(|(n, _)| n.clone())
}

/// The policy if `--policy` was given; `Err(code)` when it is invalid.
pub fn optional(path: Option<&Path>) -> anyhow::Result<Result<Option<Loaded>, u8>> {
    match path {
        None => Ok(Ok(None)),
        Some(p) => Ok(load(p)?.map(Some).ok_or(crate::exit::FAILED)),
    }
}
