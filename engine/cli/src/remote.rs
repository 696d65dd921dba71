//! `airlock run --server URL PIPELINE`: submits a run to an `airlock
//! serve` and follows it until it ends.
//!
//! The submission carries an idempotency key made here, so a submission
//! whose answer is lost (the connection broke, the server restarted) is
//! sent again without making a second run. Following polls the run: each
//! step's change of state is printed as it is seen, and the one-time code
//! of an approval the run waits for is shown to its submitter. Ctrl-C
//! stops following; the run goes on on the server.

use crate::exit;
use crate::http::{self, Server};
use airlock_server::api::{RunDetail, Submitted};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often a followed run is looked at.
const POLL: Duration = Duration::from_millis(500);
/// Tries of a submission whose answer did not arrive.
const SUBMIT_TRIES: u32 = 5;
/// Lines of a failed step's log shown at the end.
const LOG_TAIL: usize = 20;
/// Largest answer read.
/// A client of `server` as the user of `token`; or the exit code, once
/// what is wrong is said.
fn connect(server: &str, token: Option<&str>) -> Result<Server, u8> {
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        eprintln!("error: the server needs your API token in AIRLOCK_USER_TOKEN");
        eprintln!("hint: the admin makes one with `airlock user token` and adds its digest to the policy");
        return Err(exit::USAGE);
    };
    Server::new(server, token, 1).map_err(|bad| {
        eprintln!("error: {}", bad.message);
        eprintln!("hint: {}", bad.hint);
        exit::USAGE
    })
}

/// The message of an API error answer.
fn api_error(status: StatusCode, body: &[u8]) -> String {
    http::error_of(body)
        .map(|e| format!("{} ({})", e.message, e.code))
        .unwrap_or_else(|| format!("the server answered {status}"))
}

/// The exit code for a refusal.
fn refused(status: StatusCode) -> u8 {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => exit::USAGE,
        s if s.is_server_error() => exit::ERROR,
        _ => exit::FAILED,
    }
}

/// Sends a POST that makes something with an idempotency key made
/// here, again with the same key when its answer is lost, so what the
/// lost answer was about is answered instead of made twice. The answer,
/// or the exit code once the refusal is said.
async fn post_once<T: serde::de::DeserializeOwned>(
    remote: &Server,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Result<T, u8>> {
    let key = hex::encode(rand::random::<[u8; 16]>());
    let mut tries = 0;
    loop {
        tries += 1;
        match remote.call(Method::POST, path, Some(body.clone()), &[("idempotency-key", &key)]).await {
            Ok((status, bytes)) if status.is_success() => return Ok(Ok(serde_json::from_slice(&bytes)?)),
            Ok((status, bytes)) => {
                eprintln!("error: {}", api_error(status, &bytes));
                return Ok(Err(refused(status)));
            }
            Err(e) if tries < SUBMIT_TRIES => {
                eprintln!("warning: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Err(exit::ERROR));
            }
        }
    }
}

/// `airlock trigger`: asks the server to run a repository's `manual`
/// pipelines at a branch or tag, waits until it has fetched the commit
/// and started them (unless `no_wait`), and lists the runs.
pub async fn trigger(server: &str, repository: &str, git_ref: &str, no_wait: bool, json: bool) -> anyhow::Result<u8> {
    let token = std::env::var("AIRLOCK_USER_TOKEN").ok();
    let remote = match connect(server, token.as_deref()) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let body = serde_json::to_vec(&airlock_server::api::TriggerBody { git_ref: git_ref.to_owned() })?;
    let path = format!("/api/v1/repositories/{repository}/runs");
    let triggered: airlock_server::api::Triggered = match post_once(&remote, &path, body).await? {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let mut delivery = triggered.delivery;
    let delivery_path = format!("/api/v1/repositories/{repository}/deliveries/{}", delivery.id);
    if !json {
        eprintln!("asked for the `manual` pipelines of {repository} at {git_ref} (delivery {})", delivery.id);
    }
    let mut failures = 0;
    while !no_wait && delivery.state == "received" {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped waiting; the server goes on with delivery {}", delivery.id);
                return Ok(exit::CANCELLED);
            }
        }
        match remote.call(Method::GET, &delivery_path, None, &[]).await {
            Ok((status, bytes)) if status.is_success() => delivery = serde_json::from_slice(&bytes)?,
            Ok((status, bytes)) => {
                eprintln!("error: {}", api_error(status, &bytes));
                return Ok(refused(status));
            }
            Err(e) if failures < 60 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("warning: {e}; waiting for the server");
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::ERROR);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&delivery)?);
    } else {
        for run in &delivery.runs {
            eprintln!("  started run {run}: {}/ui/runs/{run}", remote.base());
        }
        let detail = delivery.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        eprintln!("delivery {} {}{detail}", delivery.id, delivery.state);
    }
    Ok(match delivery.state.as_str() {
        "started" | "received" => exit::OK,
        _ => exit::FAILED,
    })
}

/// `airlock deliveries list`: a repository's deliveries as the server
/// has them, newest first.
pub async fn deliveries(
    server: &str,
    repository: &str,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<u8> {
    let token = std::env::var("AIRLOCK_USER_TOKEN").ok();
    let remote = match connect(server, token.as_deref()) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let state = state.map(|s| format!("&state={s}")).unwrap_or_default();
    let path = format!("/api/v1/repositories/{repository}/deliveries?limit={limit}{state}");
    let (status, bytes) = remote.call(Method::GET, &path, None, &[]).await?;
    if !status.is_success() {
        eprintln!("error: {}", api_error(status, &bytes));
        return Ok(refused(status));
    }
    let list: airlock_server::api::DeliveryList = serde_json::from_slice(&bytes)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list.deliveries)?);
        return Ok(exit::OK);
    }
    if list.deliveries.is_empty() {
        eprintln!("no deliveries");
        return Ok(exit::OK);
    }
    println!("{:<40} {:<13} {:<9} {:<24} RUNS / WHY", "DELIVERY", "EVENT", "STATE", "REF");
    for d in &list.deliveries {
        let what = if d.runs.is_empty() { d.detail.clone().unwrap_or_default() } else { d.runs.join(" ") };
        let shown = airlock_model::text::one_line(&what, 120);
        let git_ref = d.git_ref.as_deref().unwrap_or("-");
        println!(
            "{:<40} {:<13} {:<9} {:<24} {shown}",
            d.id,
            d.event,
            d.state,
            airlock_model::text::one_line(git_ref, 24)
        );
    }
    Ok(exit::OK)
}

/// `airlock deliveries approve`: lets a held delivery start its runs.
pub async fn approve_delivery(server: &str, repository: &str, delivery: &str, json: bool) -> anyhow::Result<u8> {
    let token = std::env::var("AIRLOCK_USER_TOKEN").ok();
    let remote = match connect(server, token.as_deref()) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let path = format!("/api/v1/repositories/{repository}/deliveries/{delivery}/approve");
    let (status, bytes) = remote.call(Method::POST, &path, Some(Vec::new()), &[]).await?;
    if !status.is_success() {
        eprintln!("error: {}", api_error(status, &bytes));
        return Ok(refused(status));
    }
    let approved: airlock_server::views::Delivery = serde_json::from_slice(&bytes)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&approved)?);
    } else {
        eprintln!("approved delivery {} of {repository}: its runs start once the commit is fetched", approved.id);
    }
    Ok(exit::OK)
}

/// Submits and follows; the exit code follows the run's end.
pub async fn run(server: &str, pipeline: &str, params: &[(String, String)], json: bool) -> anyhow::Result<u8> {
    let token = std::env::var("AIRLOCK_USER_TOKEN").ok();
    let remote = match connect(server, token.as_deref()) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let body = serde_json::to_vec(&serde_json::json!({
        "pipeline": pipeline,
        "params": params.iter().cloned().collect::<BTreeMap<String, String>>(),
    }))?;
    let submitted: Submitted = match post_once(&remote, "/api/v1/runs", body).await? {
        Ok(submitted) => submitted,
        Err(code) => return Ok(code),
    };
    let id = submitted.run.id.clone();
    if !json {
        eprintln!("submitted run {id} ({}); following it (Ctrl-C stops following, the run goes on)", pipeline);
        eprintln!("  {}/ui/runs/{id}", remote.base());
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut codes_shown: BTreeSet<String> = BTreeSet::new();
    let mut failures = 0;
    let run_path = format!("/api/v1/runs/{id}");
    let detail = loop {
        let polled = tokio::select! {
            r = remote.call(Method::GET, &run_path, None, &[]) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped following; run {id} goes on on the server");
                return Ok(exit::CANCELLED);
            }
        };
        let detail: RunDetail = match polled {
            Ok((status, bytes)) if status.is_success() => {
                failures = 0;
                serde_json::from_slice(&bytes)?
            }
            Ok((status, bytes)) => {
                eprintln!("error: {}", api_error(status, &bytes));
                return Ok(exit::ERROR);
            }
            // A server restarting: it resumes the run; keep asking.
            Err(e) if failures < 60 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("warning: {e}; waiting for the server");
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::ERROR);
            }
        };
        if !json {
            for step in &detail.steps {
                let state = step.state.as_str();
                if seen.get(&step.name).map(String::as_str) != Some(state) {
                    seen.insert(step.name.clone(), state.to_owned());
                    if state != "pending" {
                        let reason = step.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                        eprintln!("  {:<10} {}{reason}", state, step.name);
                    }
                }
            }
        }
        for (step, code) in &detail.codes {
            if codes_shown.insert(step.clone()) {
                eprintln!("step `{step}` waits for approval; one-time code: {code}");
                eprintln!("  an approver decides at {}/ui/runs/{id}/approvals/{step}", remote.base());
            }
        }
        if detail.run.state.is_final() {
            break detail;
        }
        tokio::time::sleep(POLL).await;
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        // What a failed step said last, so the reason is on screen.
        for step in detail.steps.iter().filter(|s| s.state == airlock_server::views::StepState::Failed) {
            let path = format!("/api/v1/runs/{id}/steps/{}/log", step.name);
            if let Ok((status, bytes)) = remote.call(Method::GET, &path, None, &[]).await
                && status.is_success()
                && !bytes.is_empty()
            {
                let text = airlock_model::text::neutralize(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("── last lines of `{}`'s log ──", step.name);
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    eprintln!("{line}");
                }
            }
        }
        eprintln!(
            "run {id} {}{}",
            detail.run.state.as_str(),
            detail.run.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(match detail.run.state {
        airlock_server::views::RunState::Succeeded => exit::OK,
        airlock_server::views::RunState::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    })
}

/// `airlock approve --server`: decides as the user of `token`; answers
/// the request as decided, or the exit code and the server's reason.
pub async fn decide(
    server: &str,
    token: &str,
    run: &str,
    step: &str,
    body: &airlock_server::api::DecideBody,
) -> anyhow::Result<Result<airlock_server::views::Approval, (u8, String)>> {
    let remote = match connect(server, Some(token)) {
        Ok(r) => r,
        // Already said why.
        Err(code) => return Ok(Err((code, String::new()))),
    };
    let path = format!("/api/v1/runs/{run}/approvals/{step}");
    let (status, bytes) = remote.call(Method::POST, &path, Some(serde_json::to_vec(body)?), &[]).await?;
    if status.is_success() {
        let decided: airlock_server::api::Decided = serde_json::from_slice(&bytes)?;
        Ok(Ok(decided.record))
    } else {
        Ok(Err((refused(status), api_error(status, &bytes))))
    }
}

/// `airlock logs --server`: a run's logs from the server; with `follow`,
/// one step's log as it is written, until the step ends.
pub async fn logs(server: &str, run: &str, step: Option<&str>, follow: bool) -> anyhow::Result<u8> {
    let token = std::env::var("AIRLOCK_USER_TOKEN").ok();
    let remote = match connect(server, token.as_deref()) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let (status, bytes) = remote.call(Method::GET, &format!("/api/v1/runs/{run}"), None, &[]).await?;
    if !status.is_success() {
        eprintln!("error: {}", api_error(status, &bytes));
        return Ok(refused(status));
    }
    let detail: RunDetail = serde_json::from_slice(&bytes)?;
    let names: Vec<&str> = detail.steps.iter().map(|s| s.name.as_str()).collect();
    if let Some(step) = step
        && !names.contains(&step)
    {
        eprintln!("error: run `{}` has no step `{step}`; its steps are: {}", detail.run.id, names.join(", "));
        return Ok(exit::USAGE);
    }
    let id = &detail.run.id;
    for name in names.iter().filter(|n| step.is_none_or(|s| s == **n)) {
        let path = format!("/api/v1/runs/{id}/steps/{name}/log{}", if follow { "?follow=true" } else { "" });
        if step.is_none() {
            println!("── {name} ──");
        }
        if !follow {
            let (status, bytes) = remote.call(Method::GET, &path, None, &[]).await?;
            if !status.is_success() {
                eprintln!("error: {}", api_error(status, &bytes));
                return Ok(refused(status));
            }
            print_log(&bytes);
            continue;
        }
        let req = remote.request(Method::GET, &path).body(http::bytes_body(Bytes::new()))?;
        let resp = remote.open(req).await?;
        let mut body = resp.into_body();
        // Whole lines are printed as they come, so a character cut
        // between two chunks is never shown broken.
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| anyhow::anyhow!("the log broke off: {e}"))?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    print_log(&pending);
                    pending = rest;
                }
            }
        }
        print_log(&pending);
    }
    Ok(exit::OK)
}

/// A log on stdout, terminal control characters made visible.
fn print_log(bytes: &[u8]) {
    use std::io::Write;
    let text = airlock_model::text::neutralize(bytes);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
