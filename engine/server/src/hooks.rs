//! `POST /hooks/REPOSITORY`: webhooks from the repository's forge.
//!
//! Before anything of the body is read, the repository must be one of the
//! policy's and the declared length within [`MAX_HOOK_BODY`]; the body
//! is then read within the server's body budget and time limits, its
//! signature checked against the repository's webhook secret in constant
//! time (401 and nothing recorded when it does not match), and only then
//! parsed. The delivery is recorded by the forge's delivery id (a replay
//! is answered as a duplicate and starts nothing) and flushed to disk
//! before the forge gets its 202: no git work happens on the way, so the
//! answer comes in milliseconds. Events airlock does not run on are
//! recorded as ignored and answered 202 too, so the forge does not retry
//! them.
//!
//! A run asked for by hand (`POST /api/v1/repositories/REPO/runs`) is a
//! delivery of the same kind, recorded here the same way: the intake
//! finds the commit the ref points at and starts the pipelines whose
//! `on:` has `manual`. `GET …/deliveries/ID` tells what any delivery
//! became.

use crate::conn::RequestBody;
use crate::{App, Body, error, json, read_body};
use airlock_host::forge::{self, Event, HookError};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sha2::Digest as _;

/// The largest payload taken. GitHub sends at most 25 MB, but only for
/// pushes of thousands of commits; a push or pull request of a normal
/// size is a few KiB to a few hundred.
pub const MAX_HOOK_BODY: usize = 4 << 20;

/// A request's headers as the forge code reads them.
struct Headers<'a>(&'a hyper::HeaderMap);

impl forge::Headers for Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the forge is answered.
#[derive(Serialize)]
struct Accepted {
    /// The delivery's id.
    delivery: String,
    /// `received` (runs will start), or `ignored`.
    state: &'static str,
    /// Whether this delivery was recorded before: a replay starts nothing.
    duplicate: bool,
    /// Why it starts nothing, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The answer for a repository the policy does not have.
fn no_repository(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "no_repository",
        format!("no repository `{}` in this server's policy", crate::short(name)),
    )
}

pub(crate) async fn receive(app: &App, name: &str, req: Request<RequestBody>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r =
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "a webhook is delivered with POST".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(repository) = app.repositories.get(name) else {
        return no_repository(name);
    };
    let secret = match forge::read_secret(&repository.webhook_secret, "the webhook secret", &app.policy_dir) {
        Ok(s) => s,
        Err(why) => {
            tracing::error!(repository = name, "cannot check a webhook: {why}");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_unavailable",
                "the server cannot read this repository's webhook secret; its log says why".into(),
            );
        }
    };
    let headers = req.headers().clone();
    let body = match read_body(app, req, MAX_HOOK_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let headers = Headers(&headers);
    let forge = repository.forge;
    if let Err(HookError::Unauthenticated(why) | HookError::Malformed(why)) =
        forge::verify(forge, secret.expose().as_bytes(), &headers, &body)
    {
        tracing::warn!(repository = name, "webhook refused: {why}");
        return error(StatusCode::UNAUTHORIZED, "bad_signature", why);
    }
    let parsed = forge::delivery_id(forge, &headers).and_then(|id| Ok((id, forge::parse(forge, &headers, &body)?)));
    let (id, event) = match parsed {
        Ok(p) => p,
        Err(HookError::Unauthenticated(why) | HookError::Malformed(why)) => {
            return error(StatusCode::BAD_REQUEST, "bad_delivery", why);
        }
    };
    let ignored = match &event {
        Event::Ignored { what } => Some(format!("{what}: airlock starts runs on pushes and pull requests")),
        _ => None,
    };
    let (record, new) = match record(app, name, &id, &event, ignored).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let answer = Accepted {
        delivery: record.id.clone(),
        state: record.state.as_str(),
        duplicate: !new,
        detail: record.detail.clone(),
    };
    json(StatusCode::ACCEPTED, &answer)
}

/// Records a delivery on disk and wakes the intake if it is new.
async fn record(
    app: &App,
    name: &str,
    id: &str,
    event: &Event,
    ignored: Option<String>,
) -> Result<(airlock_store::DeliveryRecord, bool), Response<Body>> {
    let value = serde_json::to_value(event).unwrap_or_default();
    let (store, repository, id) = (app.store.clone(), name.to_owned(), id.to_owned());
    let recorded = crate::blocking(move || {
        let (record, new) = store.record_delivery(&repository, &id, value, ignored)?;
        store.flush()?;
        Ok::<_, airlock_store::StoreError>((record, new))
    })
    .await?;
    let (record, new) = recorded.map_err(|e| {
        tracing::error!(repository = name, "cannot record a delivery: {e}");
        error(StatusCode::INTERNAL_SERVER_ERROR, "store", "the server could not record the delivery".into())
    })?;
    if new {
        tracing::info!(repository = name, delivery = record.id, state = record.state.as_str(), "delivery recorded");
        app.deliveries.notify_one();
    }
    Ok((record, new))
}

/// The full ref a person means: a bare name is a branch.
fn full_ref(name: &str) -> Result<String, HookError> {
    if name.starts_with("refs/") {
        return forge::checked_ref(name);
    }
    forge::checked_branch(name).map(|b| format!("refs/heads/{b}"))
}

pub(crate) async fn trigger(app: &App, name: &str, user: &str, req: Request<RequestBody>) -> Response<Body> {
    if app.runs.is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_runs", "this server runs no pipelines".into());
    }
    if !app.repositories.contains_key(name) {
        return no_repository(name);
    }
    let key = match crate::api::idempotency_key(&req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let body: crate::api::TriggerBody = match crate::read_json(app, req, 4 << 10).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let git_ref = match full_ref(&body.git_ref) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_ref", e.to_string()),
    };
    // The same key from the same user names the same delivery; without
    // one, each call is a delivery of its own.
    let id = match key {
        Some(key) => {
            let digest = sha2::Sha256::digest(format!("{user}\0{key}"));
            format!("manual-{}", &hex::encode(digest)[..32])
        }
        None => format!("manual-{}", hex::encode(rand::random::<[u8; 16]>())),
    };
    let event = Event::Manual { git_ref, sender: user.to_owned() };
    match record(app, name, &id, &event, None).await {
        Ok((record, new)) => json(
            StatusCode::ACCEPTED,
            &crate::api::Triggered { delivery: crate::views::Delivery::from(&record), duplicate: !new },
        ),
        Err(r) => r,
    }
}

pub(crate) fn list_deliveries(app: &App, name: &str, query: Option<&str>) -> Response<Body> {
    if !app.repositories.contains_key(name) {
        return no_repository(name);
    }
    let limit =
        crate::api::query_value(query, "limit").and_then(|v| v.parse().ok()).unwrap_or(100).min(crate::api::MAX_LIST);
    let state = crate::api::query_value(query, "state");
    match app.store.deliveries_of(name) {
        Ok(all) => {
            let deliveries = all
                .iter()
                .rev()
                .filter(|d| state.is_none_or(|s| d.state.as_str() == s))
                .take(limit)
                .map(crate::views::Delivery::from)
                .collect();
            json(StatusCode::OK, &crate::api::DeliveryList { deliveries })
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}

pub(crate) async fn approve_delivery(app: &App, name: &str, id: &str, user: &str) -> Response<Body> {
    let (store, repository, id_owned, user_owned) =
        (app.store.clone(), name.to_owned(), id.to_owned(), user.to_owned());
    let approved = crate::blocking(move || {
        let record = store.approve_delivery(&repository, &id_owned, &user_owned)?;
        store.flush()?;
        Ok::<_, airlock_store::StoreError>(record)
    })
    .await;
    match approved {
        Ok(Ok(record)) => {
            tracing::info!(repository = name, delivery = id, user, "delivery approved");
            app.deliveries.notify_one();
            json(StatusCode::OK, &crate::views::Delivery::from(&record))
        }
        Ok(Err(e @ airlock_store::StoreError::NoDelivery { .. })) => {
            error(StatusCode::NOT_FOUND, "no_delivery", e.to_string())
        }
        Ok(Err(e @ airlock_store::StoreError::NotWaiting { .. })) => {
            error(StatusCode::CONFLICT, "not_waiting", e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        Err(r) => r,
    }
}

pub(crate) fn get_delivery(app: &App, name: &str, id: &str) -> Response<Body> {
    match app.store.delivery(name, id) {
        Ok(Some(record)) => json(StatusCode::OK, &crate::views::Delivery::from(&record)),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no_delivery",
            format!("repository `{}` has no delivery `{}`", crate::short(name), crate::short(id)),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    }
}
