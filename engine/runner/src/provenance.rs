//! Signed provenance of what a run publishes: an in-toto statement with
//! a SLSA provenance predicate, signed with the admin policy's key (see
//! [`airlock_host::provenance`]).
//!
//! The predicate's `buildType` is [`airlock_host::provenance::BUILD_TYPE`]:
//! its external parameters are the pipeline (name, path, sha256 of its
//! text), the run's parameters and what started the run (a repository's
//! event with its ref, commit and sender; or who ran it by hand); its
//! internal parameters the sandbox version and whether the run was
//! untrusted; its resolved dependencies the commit, every plugin file
//! and tool by sha256, and every source tree by airlock's tree digest.

use crate::exec::Shared;
use airlock_host::provenance::{BUILD_TYPE, Signer, rfc3339, statement};
use airlock_store::now_ms;
use sha2::{Digest as _, Sha256};

/// The signed statement of `subjects` (`(name, sha256)`), as the JSON
/// text of its DSSE envelope; `None` when the policy signs nothing.
pub(crate) async fn envelope(shared: &Shared, subjects: &[(String, String)]) -> Result<Option<Vec<u8>>, String> {
    let Some(policy) = &shared.policy else { return Ok(None) };
    let Some(provenance) = &policy.0.provenance else { return Ok(None) };
    let pem = airlock_host::deploy::read_credential(&provenance.key.source, &policy.1)
        .map_err(|e| format!("cannot sign provenance: the policy's `provenance.key` {e}"))?;
    let signer = Signer::from_pem(pem.expose().as_bytes()).map_err(|e| format!("`provenance.key`: {e}"))?;
    let predicate = predicate(shared, &provenance.builder_id).await?;
    let mut text = serde_json::to_vec(&signer.sign(&statement(subjects, predicate))).map_err(|e| e.to_string())?;
    text.push(b'\n');
    Ok(Some(text))
}

async fn predicate(shared: &Shared, builder_id: &str) -> Result<serde_json::Value, String> {
    let run = shared.store.run(&shared.run_id).map_err(|e| e.to_string())?.ok_or("the run is not recorded")?;
    let origin = run.submission.as_ref().and_then(|s| s.origin.as_ref());
    let source = match &run.submission {
        Some(s) => Some(s.source.as_bytes().to_vec()),
        None => std::fs::read(&run.file).ok(),
    };
    let trigger = match origin {
        Some(o) => serde_json::to_value(o).map_err(|e| e.to_string())?,
        None => serde_json::json!({ "event": if run.submission.is_some() { "api" } else { "local" } }),
    };
    let mut dependencies = Vec::new();
    if let Some(o) = origin {
        let url = shared.policy.as_ref().and_then(|p| p.0.repositories.get(&o.repository)).map(|r| r.url.clone());
        dependencies.push(serde_json::json!({
            "name": format!("repository:{}", o.repository),
            "uri": url.map(|u| format!("git+{u}@{}", o.git_ref)),
            "digest": { "gitCommit": o.commit },
        }));
    }
    for (step, uses) in &shared.plugins_used {
        let dependency = match uses.strip_prefix(airlock_model::TOOL_PREFIX) {
            Some(tool) => {
                let def = &shared.tools[tool];
                serde_json::json!({ "name": format!("tool:{tool}"), "uri": def.url, "digest": { "sha256": def.sha256 } })
            }
            None => {
                let digest = crate::exec::file_digest(shared, &shared.base_dir.join(uses)).await?;
                serde_json::json!({ "name": format!("plugin of step {step}"), "uri": uses, "digest": { "sha256": digest } })
            }
        };
        dependencies.push(dependency);
    }
    let mut sources: Vec<&String> = shared.sources.keys().collect();
    sources.sort();
    for name in sources {
        let digest = crate::exec::tree_digest(shared, name, "").await?;
        dependencies
            .push(serde_json::json!({ "name": format!("source:{name}"), "digest": { "airlockTreeSha256": digest } }));
    }
    Ok(serde_json::json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "pipeline": {
                    "name": run.pipeline,
                    "path": run.file,
                    "sha256": source.map(|s| hex::encode(Sha256::digest(s))),
                },
                "params": run.params,
                "trigger": trigger,
                "requester": shared.requester,
            },
            "internalParameters": {
                "sandbox": airlock_sandbox::SANDBOX_VERSION,
                "untrusted": shared.untrusted,
            },
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": { "id": builder_id, "version": { "airlock": env!("CARGO_PKG_VERSION") } },
            "metadata": {
                "invocationId": run.id,
                "startedOn": rfc3339(run.created_ms),
                "finishedOn": rfc3339(now_ms()),
            },
        },
    }))
}
