//! The `airlock:step/deploy` capability: a step asks the host for a
//! deployment (an environment and some of its outputs); the host decides
//! what becomes of it after the step has succeeded.
//!
//! One capability, one module, in the shape of wasmtime's `wasi-config`:
//! the state a step's store holds (`Requests`), the generated `Host`
//! trait implemented on it with every value from the guest checked here
//! at the boundary, and `add_to_linker`, which the sandbox calls only
//! for a step whose environment grants
//! [`HostInterface::Deploy`](airlock_model::policy::HostInterface).

use crate::link::bindings::airlock::step::deploy;
use wasmtime::component::HasData;

/// Requests one step may make: one deployment, recorded on the step.
pub const MAX_DEPLOY_REQUESTS: usize = 1;
/// Paths one request may name.
pub const MAX_DEPLOY_PATHS: usize = 10_000;

/// A deployment a step asked for: the host decides what becomes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    /// The environment named.
    pub environment: String,
    /// Workspace paths of the files to deploy.
    pub paths: Vec<String>,
}

/// The deployments a step asked for, checked at the boundary.
#[derive(Debug, Default)]
pub(crate) struct Requests(pub(crate) Vec<DeployRequest>);

impl deploy::Host for Requests {
    fn request(&mut self, environment: String, paths: Vec<String>) -> Result<String, String> {
        if self.0.len() >= MAX_DEPLOY_REQUESTS {
            return Err(format!("a step may ask for {MAX_DEPLOY_REQUESTS} deployment; it asked already"));
        }
        let name_ok = !environment.is_empty()
            && environment.len() <= 64
            && environment.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err("an environment name is 1 to 64 letters, digits, `-` and `_`".into());
        }
        if paths.is_empty() || paths.len() > MAX_DEPLOY_PATHS {
            return Err(format!("a request names 1 to {MAX_DEPLOY_PATHS} paths"));
        }
        for p in &paths {
            let plain = !p.is_empty()
                && p.len() <= 1024
                && !p.starts_with('/')
                && !p.chars().any(airlock_model::text::is_hazard)
                && p.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
            if !plain {
                return Err(format!(
                    "`{}` is not a plain path relative to the workspace",
                    airlock_model::text::one_line(p, 200)
                ));
            }
        }
        self.0.push(DeployRequest { environment, paths });
        Ok(format!("deploy-request-{}", self.0.len()))
    }
}

struct HasRequests;

impl HasData for HasRequests {
    type Data<'a> = &'a mut Requests;
}

/// Links the capability for a store whose state holds its [`Requests`]
/// where `get` finds them.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut Requests,
) -> wasmtime::Result<()> {
    deploy::add_to_linker::<T, HasRequests>(linker, get)
}
