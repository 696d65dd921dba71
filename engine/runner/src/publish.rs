//! Publish steps: trusted host code, never a guest.
//!
//! A publish step takes the outputs of the upstream steps it names, as
//! the artifact store holds them, and publishes them to a target of the
//! admin policy under one build id. It works with a token minted for it
//! alone: scoped to that target and build id, for as many files as it
//! publishes, living no longer than the step's timeout. Every call is
//! checked and charged against the token exactly as the server checks an
//! outside client's, and the token is revoked when the step ends, however
//! it ends. The token is never written anywhere but as its digest in the
//! store; no guest, log or record sees it.

use crate::exec::{Shared, StepError};
use airlock_host::publish::{Committed, ManifestEntry, TargetStore, check_build_id};
use airlock_model::{ExprContext, Publish, Step, render};
use airlock_store::{MAX_TTL_MS, PublishedRecord, Scope, StepState, TokenSpec, TokenUse, now_ms};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use tokio_util::sync::CancellationToken;

/// Runs a publish step; returns what it published.
pub(crate) async fn run(
    shared: &Shared,
    name: &str,
    step: &Step,
    publish: &Publish,
    cancel: &CancellationToken,
) -> Result<PublishedRecord, StepError> {
    let failed = |reason: String| StepError::Failed(format!("step `{name}`: {reason}"));
    crate::exec::host_step_started(shared, name, "publishing")?;

    let ctx = ExprContext { params: &shared.params, run_id: &shared.run_id, step: name };
    let build = render(&publish.build, &ctx).map_err(&failed)?;
    check_build_id(&build).map_err(|e| failed(e.to_string()))?;
    let target = shared.targets.get(&publish.target).cloned().ok_or_else(|| {
        failed(format!(
            "the admin policy has no publish target `{}` (was it removed since validation?)",
            publish.target
        ))
    })?;
    let files = upstream_outputs(shared, &publish.from).map_err(&failed)?;
    // Signed before anything is published: a policy that signs never
    // publishes a tree without its provenance.
    let subjects: Vec<(String, String)> = files.iter().map(|f| (f.path.clone(), f.sha256.clone())).collect();
    let provenance = crate::provenance::envelope(shared, &subjects).await.map_err(&failed)?;

    let ttl_ms = (step.timeout.as_millis() as u64).clamp(1, MAX_TTL_MS);
    let mut spec = TokenSpec::new(
        Scope { action: "publish".into(), target: publish.target.clone(), prefix: build.clone() },
        ttl_ms,
    );
    spec.max_files = Some(files.len() as u64);
    spec.note = Some(format!("run {} step {name}", shared.run_id));
    spec.run = Some(shared.run_id.clone());
    let (token, record) = shared.store.create_token(&spec).map_err(|e| failed(format!("cannot mint a token: {e}")))?;

    let mut work = {
        let (store, artifacts) = (shared.store.clone(), shared.artifacts.clone());
        let (build, token_id) = (build.clone(), record.id.clone());
        tokio::task::spawn_blocking(move || {
            publish_blocking(&store, &artifacts, &target, &token, &build, files, provenance.as_deref(), token_id)
        })
    };
    let revoke = || {
        if let Err(e) = shared.store.revoke_token(&record.id) {
            tracing::error!("cannot revoke token {} of step `{name}`: {e}", record.id);
        }
    };
    let joined = tokio::select! {
        joined = &mut work => joined,
        () = cancel.cancelled() => {
            // Revoking the token stops the publish at its next call; a
            // commit already under way is all or nothing. Wait to learn
            // which, so the record says what happened.
            revoke();
            match work.await {
                Ok(Ok(published)) => return Ok(published),
                _ => return Err(StepError::Cancelled),
            }
        }
    };
    revoke();
    joined.map_err(|e| failed(format!("publishing stopped: {e}"))).and_then(|r| r.map_err(&failed))
}

/// The files of the upstream steps named in `from`, by path. The same
/// path from two steps is an error, not a silent choice.
pub(crate) fn upstream_outputs(shared: &Shared, from_steps: &[String]) -> Result<Vec<ManifestEntry>, String> {
    let mut by_path: BTreeMap<String, (ManifestEntry, &str)> = BTreeMap::new();
    for from in from_steps {
        let record = shared.store.step(&shared.run_id, from).map_err(|e| e.to_string())?;
        if record.state != StepState::Succeeded {
            return Err(format!("`{from}` did not succeed, so there is nothing of it to take"));
        }
        for o in record.outputs {
            let entry = ManifestEntry { path: o.path.clone(), sha256: o.sha256, size: o.size };
            if let Some((_, other)) = by_path.get(&o.path) {
                return Err(format!(
                    "`{}` is an output of both `{other}` and `{from}`; a release has one file per path",
                    o.path
                ));
            }
            by_path.insert(o.path, (entry, from));
        }
    }
    if by_path.is_empty() {
        let from = from_steps.join("`, `");
        return Err(format!("`{from}` produced no outputs, and there must be at least one file"));
    }
    Ok(by_path.into_values().map(|(e, _)| e).collect())
}

/// What the server does for a client, done in-process: ask what is
/// missing, copy it from the artifact store, commit (with the tree's
/// provenance). Each call is a use of the token.
#[allow(clippy::too_many_arguments)]
fn publish_blocking(
    store: &airlock_store::Store,
    artifacts: &airlock_host::ArtifactStore,
    target: &TargetStore,
    token: &str,
    build: &str,
    files: Vec<ManifestEntry>,
    provenance: Option<&[u8]>,
    token_id: String,
) -> Result<PublishedRecord, String> {
    let call = |files: u64, bytes: u64| {
        let use_ = TokenUse {
            action: "publish",
            target: target.name(),
            build_id: build,
            source: IpAddr::V4(Ipv4Addr::LOCALHOST),
            files,
            bytes,
            now_ms: now_ms(),
        };
        store.use_token(token, &use_).map(drop).map_err(|e| e.to_string())
    };
    call(0, 0)?;
    let digests: Vec<String> = files.iter().map(|f| f.sha256.clone()).collect();
    let missing = target.missing(&digests).map_err(|e| e.to_string())?;
    let sizes: BTreeMap<&str, u64> = files.iter().map(|f| (f.sha256.as_str(), f.size)).collect();
    let upload: u64 = missing.iter().filter_map(|d| sizes.get(d.as_str())).sum();
    if !missing.is_empty() {
        call(0, upload)?;
    }
    for digest in &missing {
        let path = artifacts.local(digest).map_err(|e| e.to_string())?;
        target.put_local(digest, &path).map_err(|e| e.to_string())?;
    }
    call(files.len() as u64, 0)?;
    let checked = target.check(files).map_err(|e| e.to_string())?;
    let (committed, published) = target.commit_attested(build, checked, provenance).map_err(|e| e.to_string())?;
    Ok(PublishedRecord {
        target: published.target,
        build: published.build,
        files: published.files,
        bytes: published.bytes,
        uploaded: missing.len() as u64,
        created: committed == Committed::Created,
        token: token_id,
        provenance: published.provenance,
    })
}
