//! The CLI's one HTTP client: every call `airlock` makes to `airlock
//! serve` (runs, approvals, logs, publishing) goes through a [`Server`].
//!
//! It speaks plain HTTP/1.1 over a pooled hyper client, sends the
//! caller's token on every request, and reads an answer into memory only
//! up to [`MAX_ANSWER`], so a hostile or broken server cannot make the
//! client hold more.

use airlock_server::protocol::ErrorDetail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

/// A request body: bytes in memory, or a stream (a blob upload).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest answer read into memory.
pub const MAX_ANSWER: usize = 64 << 20;

/// Why a call got no answer to look at.
#[derive(Debug)]
pub enum CallError {
    /// No connection, or it broke before the answer began.
    Unreachable(String),
    /// The answer began and broke off, or was over [`MAX_ANSWER`].
    BrokenAnswer(String),
    /// No request could be made of these parts (a path that is no URI).
    BadRequest(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "cannot reach the server: {e}"),
            Self::BrokenAnswer(e) => write!(f, "the server's answer broke off: {e}"),
            Self::BadRequest(e) => write!(f, "cannot make the request: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Why a server URL cannot be used, and what to write instead.
#[derive(Debug)]
pub struct BadUrl {
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: &'static str,
}

/// One server, as one user (or one publish token).
pub struct Server {
    client: Client<HttpConnector, Body>,
    base: String,
    auth: String,
}

impl Server {
    /// A client of `url` sending `token`, keeping up to `connections`
    /// idle connections for calls made in parallel.
    pub fn new(url: &str, token: &str, connections: usize) -> Result<Self, BadUrl> {
        let base: Uri = url.trim_end_matches('/').parse().map_err(|_| BadUrl {
            message: format!("`{url}` is not a URL"),
            hint: "write it like http://127.0.0.1:8480",
        })?;
        if base.scheme_str() != Some("http") || base.host().is_none() {
            return Err(BadUrl {
                message: format!("`{url}` is not an http:// URL"),
                hint: "the client speaks plain HTTP; put TLS in a proxy in front of `airlock serve`",
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(connections.max(1))
            .build(connector);
        Ok(Self {
            client,
            base: base.to_string().trim_end_matches('/').to_owned(),
            auth: format!("Bearer {}", token.trim()),
        })
    }

    /// The server's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (from `/`), with the token.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder().method(method).uri(format!("{}{path}", self.base)).header(AUTHORIZATION, &self.auth)
    }

    /// Sends `req` and returns the answer as it begins, its body unread.
    pub async fn open(&self, req: Request<Body>) -> Result<Response<Incoming>, CallError> {
        self.client.request(req).await.map_err(|e| CallError::Unreachable(crate::cause_chain(&e)))
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&self, req: Request<Body>) -> Result<(StatusCode, Bytes), CallError> {
        let resp = self.open(req).await?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError::BrokenAnswer(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// A call with `json` as its body (if any) and `headers` besides.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), CallError> {
        let mut req = self.request(method, path).header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(bytes_body(json.unwrap_or_default())).map_err(|e| CallError::BadRequest(e.to_string()))?;
        self.send(req).await
    }
}

/// A body of bytes in memory.
pub fn bytes_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// The error of an error answer (`{"error": {"code", "message"}}`), if
/// the body is one.
pub fn error_of(body: &[u8]) -> Option<ErrorDetail> {
    serde_json::from_slice::<airlock_server::protocol::ErrorBody>(body).ok().map(|b| b.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_servers() {
        assert!(Server::new("http://127.0.0.1:8480/", "t", 1).is_ok_and(|s| s.base() == "http://127.0.0.1:8480"));
        let https = Server::new("https://ci.example", "t", 1).err().expect("refused");
        assert!(https.message.contains("not an http:// URL"), "{}", https.message);
        assert!(Server::new("not a url", "t", 1).is_err());
        assert!(Server::new("/just/a/path", "t", 1).is_err());
    }
}
