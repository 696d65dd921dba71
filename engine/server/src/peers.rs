//! Asking the server that holds a run for what only it has.
//!
//! Servers sharing a database share every record, but two things live
//! only in the memory of the server working on a run: the log of a step
//! attempt while it runs there, and the one-time code of an approval it
//! waits for (the store keeps only a digest of the code). A server asked
//! for either about a run another server holds asks that server, at the
//! address it announced ([`airlock_store::Store::announce`]), with the
//! caller's own credential: the holder authenticates and authorizes the
//! caller as if the caller had come to it, so nothing is shown through a
//! server that the caller could not see at the holder. A forwarded
//! request is marked, and a server never forwards a marked request
//! again, so two servers that each think the other holds a run cannot
//! bounce a request between them.
//!
//! Forwarding is a courtesy: a holder that does not answer in
//! [`TIMEOUT`], answers anything but 200, or answers more than the
//! caller's limit leaves the caller with what this server has.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use std::time::Duration;

/// The mark of a forwarded request.
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("x-airlock-forwarded");

/// The longest a forwarded request may take, connection included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// What a path segment of a forwarded request keeps as it is: the
/// characters URIs leave unreserved, which are all a run id or a step
/// name has (the API does not decode its paths).
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` as a path segment of a forwarded request.
pub(crate) fn segment(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, SEGMENT)
}

/// How long a server that could not be reached is not asked again: a
/// followed log asks five times a second, and a wrong `--advertise`
/// would otherwise fill the log with the same warning.
const QUIET: Duration = Duration::from_secs(30);

/// Servers remembered as out of reach, at most (the map is emptied when
/// full: there are only as many as there are servers).
const MAX_QUIET: usize = 64;

/// The client servers ask each other with.
#[derive(Clone)]
pub(crate) struct Peers {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Addresses that failed, and when.
    failed: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

impl Default for Peers {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Self { client, failed: Default::default() }
    }
}

/// A caller's credential, to ask the holder of a run with; none for a
/// request that was itself forwarded.
#[derive(Clone, Default)]
pub(crate) struct Credential(Option<Vec<(HeaderName, HeaderValue)>>);

impl Credential {
    /// The credential of a request with these headers.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key(FORWARDED) {
            return Self(None);
        }
        let kept = [AUTHORIZATION, COOKIE]
            .into_iter()
            .flat_map(|name| headers.get_all(&name).iter().map(move |v| (name.clone(), v.clone())))
            .collect();
        Self(Some(kept))
    }
}

impl Peers {
    /// `GET path_and_query` from the server holding `run`, if another
    /// server holds it and answers 200 with at most `limit` bytes.
    pub(crate) async fn ask_holder(
        &self,
        store: &airlock_store::Store,
        run: &str,
        path_and_query: &str,
        credential: &Credential,
        limit: usize,
    ) -> Option<Bytes> {
        let headers = credential.0.as_ref()?;
        let address = match store.holder_elsewhere(run) {
            Ok(address) => address?,
            Err(e) => {
                tracing::warn!(run, "cannot read which server holds the run: {e}");
                return None;
            }
        };
        self.ask(run, address, path_and_query, headers, limit).await
    }

    /// `GET path_and_query` from the server at `address`, about `run`,
    /// with `headers`; unless it failed lately.
    async fn ask(
        &self,
        run: &str,
        address: String,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        limit: usize,
    ) -> Option<Bytes> {
        if self.failed_lately(&address) {
            return None;
        }
        let uri = format!("{}{path_and_query}", address.trim_end_matches('/'));
        let mut request = Request::get(&uri).header(FORWARDED, "1");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = match request.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(run, address, "cannot ask the server holding the run: {e}");
                return None;
            }
        };
        let asked = async {
            let answer = self.client.request(request).await.map_err(|e| e.to_string())?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), limit).collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok((StatusCode::OK, body))) => Some(body),
            Ok(Ok((status, _))) => {
                tracing::info!(run, address, %status, "the server holding the run did not answer a forwarded request");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(run, address, "cannot ask the server holding the run (not again for {QUIET:?}): {e}");
                self.failed(address);
                None
            }
            Err(_) => {
                tracing::warn!(run, address, "the server holding the run did not answer in {TIMEOUT:?}");
                self.failed(address);
                None
            }
        }
    }

    fn failed_lately(&self, address: &str) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get(address).is_some_and(|at| at.elapsed() < QUIET)
    }

    fn failed(&self, address: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() >= MAX_QUIET {
            failed.clear();
        }
        failed.insert(address, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder that cannot be reached is asked once, not at every poll
    /// of a followed log.
    #[tokio::test]
    async fn a_holder_out_of_reach_is_not_asked_again_at_once() {
        let peers = Peers::default();
        // Nothing listens on a port just let go of.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let address = format!("http://127.0.0.1:{port}");
        assert!(!peers.failed_lately(&address));
        assert_eq!(peers.ask("r", address.clone(), "/", &[], 1).await, None);
        assert!(peers.failed_lately(&address), "the failure was not remembered");
        assert!(!peers.failed_lately("http://127.0.0.1:1"), "another address is asked");
    }
}
