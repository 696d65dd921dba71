//! A step that writes a release note and asks the host to deploy it: the
//! example of `airlock:step/deploy`. The step cannot deploy anything
//! itself; it names an environment and a file of its workspace, and the
//! host does the rest after the step succeeds.
//!
//! Parameters: `environment` (required), `file` (default `release.txt`),
//! `text` (what the file says).

use airlock_plugin::{Context, Describe, Step};

struct DeployRequest;

impl Step for DeployRequest {
    fn run(ctx: Context) -> Result<(), String> {
        let environment = ctx.require("environment")?;
        let file = ctx.param("file").unwrap_or("release.txt");
        let text = ctx.param("text").unwrap_or("released by airlock\n");
        std::fs::write(ctx.workspace().join(file), text).describe(|| format!("cannot write {file}"))?;
        let id = airlock_plugin::request_deploy(environment, &[file])?;
        println!("asked for {id}: `{file}` to `{environment}`");
        Ok(())
    }
}

airlock_plugin::export!(DeployRequest);
