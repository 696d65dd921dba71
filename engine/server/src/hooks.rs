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

use crate::{App, Body, error, json, read_body};
use airlock_host::forge::{self, Event, HookError};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

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

pub(crate) async fn receive(app: &App, name: &str, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut r =
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "a webhook is delivered with POST".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(repository) = app.repositories.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            "no_repository",
            format!("no repository `{}` in this server's policy", crate::short(name)),
        );
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
    let value = serde_json::to_value(&event).unwrap_or_default();
    let (store, repository) = (app.store.clone(), name.to_owned());
    let recorded = crate::blocking(move || {
        let (record, new) = store.record_delivery(&repository, &id, value, ignored)?;
        store.flush()?;
        Ok::<_, airlock_store::StoreError>((record, new))
    })
    .await;
    let (record, new) = match recorded {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(repository = name, "cannot record a delivery: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store",
                "the server could not record the delivery".into(),
            );
        }
        Err(r) => return r,
    };
    if new {
        tracing::info!(repository = name, delivery = record.id, state = record.state.as_str(), "webhook recorded");
        app.deliveries.notify_one();
    }
    let answer = Accepted {
        delivery: record.id.clone(),
        state: record.state.as_str(),
        duplicate: !new,
        detail: record.detail.clone(),
    };
    json(StatusCode::ACCEPTED, &answer)
}
