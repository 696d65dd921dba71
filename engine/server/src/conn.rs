//! What one client may hold of the server: connections (overall and per
//! address), time in each phase of a connection, and the bytes of request
//! bodies buffered at once.
//!
//! A client that stops reading, stops writing or just stays connected is
//! the normal case for a server on a network. Each phase has its own
//! bound: headers ([`Limits::header_timeout`], enforced by hyper), a
//! connection with no request going on ([`Limits::idle_timeout`]), a
//! request body that stops arriving ([`Limits::body_timeout`]) and a
//! response the client stops taking ([`Limits::write_timeout`]). Waiting
//! for a client never holds a thread: only reading or writing a disk
//! does, for one chunk at a time.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bounds on connections and on each phase of one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 client is
    /// counted by its /64, which one host usually has whole).
    pub max_per_address: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request going on and
    /// no byte moving.
    pub idle_timeout: Duration,
    /// How long a request body may pause between two pieces.
    pub body_timeout: Duration,
    /// How long the whole body of a JSON request may take.
    pub body_deadline: Duration,
    /// How long a response may wait for the client to take more of it.
    pub write_timeout: Duration,
    /// Bytes of request bodies held in memory at once, by every request
    /// together; a request that would go over is answered 503.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_address: 128,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            body_deadline: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            body_budget: 256 << 20,
        }
    }
}

/// The address a client is counted by.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The connections open now, overall and by client address.
#[derive(Default)]
pub(crate) struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was not taken.
pub(crate) enum Refused {
    /// The server has as many as it takes.
    Full,
    /// That address has as many as it may.
    Address,
}

impl Connections {
    /// Counts a new connection from `ip`, unless a limit says no; the
    /// slot is given back when the answer is dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, Refused> {
        let client = client_of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= limits.max_connections {
            return Err(Refused::Full);
        }
        let here = open.1.entry(client).or_insert(0);
        if *here >= limits.max_per_address {
            return Err(Refused::Address);
        }
        *here += 1;
        open.0 += 1;
        Ok(Slot { of: self.clone(), client })
    }
}

/// One admitted connection.
pub(crate) struct Slot {
    of: Arc<Connections>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

/// The answer to a connection over a limit: written without reading the
/// request, within a second, and the connection closed.
pub(crate) async fn refuse(mut stream: tokio::net::TcpStream, why: Refused) {
    use tokio::io::AsyncWriteExt;
    let message = match why {
        Refused::Full => "the server has as many connections as it takes; try again shortly",
        Refused::Address => "your address has as many connections open as one may; close some, or reuse them",
    };
    let body = format!("{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"{message}\"}}}}\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// How long a connection the server is done with keeps taking in what
/// the client still sends, and how much of it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// Closes a connection the server is done with without losing its last
/// answer. An answer can go out before the request's body is read (a
/// refusal before authentication never reads it); closing then, with
/// body bytes unread or still coming, makes the kernel reset the
/// connection, and a client still sending its body sees a broken pipe
/// instead of the answer. So: stop writing, take in and drop what
/// arrives until the client closes too, for at most [`LINGER`] and
/// [`LINGER_BYTES`], then close.
pub(crate) async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let drain = async {
        io.shutdown().await?;
        let mut sink = [0u8; 16 << 10];
        let mut taken = 0;
        while taken < LINGER_BYTES {
            match io.read(&mut sink).await? {
                0 => break,
                n => taken += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Requests of one connection that have begun and whose answers have
/// not been sent whole: while there is one, the connection is not idle.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Marks a request begun; the guard marks it done when dropped.
    pub(crate) fn begin(&self) -> Busy {
        self.0.fetch_add(1, Ordering::SeqCst);
        Busy(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// A request going on.
pub(crate) struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as going on until it
/// has been sent (or given up).
pub(crate) struct Tracked {
    pub(crate) body: crate::Body,
    pub(crate) _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream with the idle and write timeouts: a read that
/// waits while no request is going on ends the connection once it has
/// been quiet for the idle timeout, and a write the client does not take
/// for the write timeout ends it too.
pub(crate) struct Guarded<IO> {
    io: IO,
    in_flight: InFlight,
    idle_timeout: Duration,
    write_timeout: Duration,
    last_moved: Instant,
    idle: Pin<Box<Sleep>>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    pub(crate) fn new(io: IO, in_flight: InFlight, limits: &Limits) -> Self {
        Self {
            io,
            in_flight,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            last_moved: Instant::now(),
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            stalled: None,
        }
    }

    fn moved(&mut self) {
        self.last_moved = Instant::now();
    }

    /// Whether a write that cannot go on has waited too long; arms the
    /// timer on the first wait.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.write_timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }

    fn after_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending if self.write_stalled(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing of the answer for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.stalled = None;
                self.moved();
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                // Waiting for the next request (or for the first): idle.
                // Waiting while an answer is being made or sent is not.
                if this.in_flight.any() {
                    return Poll::Pending;
                }
                let deadline = tokio::time::Instant::from_std(this.last_moved + this.idle_timeout);
                if this.idle.deadline() != deadline {
                    this.idle.as_mut().reset(deadline);
                }
                ready!(this.idle.as_mut().poll(cx));
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection was idle for the idle timeout",
                )))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.after_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after_write(cx, polled)
    }
}

/// A request's body as the handlers get it: hyper's, keeping a mark of
/// whether it was taken to its end.
///
/// A handler that answers without reading the body (every refusal
/// before authentication) leaves bytes on the connection that hyper
/// cannot always drain: when they arrive after the headers, hyper
/// gives the connection up, but only after the answer went out saying
/// it stays open, and a client that sends its next request on it finds
/// it closed under that request. The mark lets the answer say
/// `connection: close` instead.
pub struct RequestBody {
    inner: Incoming,
    ended: Arc<AtomicBool>,
}

impl RequestBody {
    /// Wraps `inner`; the flag answered is set once it has been read to
    /// its end (at once for a request without a body).
    pub(crate) fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(hyper::body::Body::is_end_stream(&inner)));
        (Self { inner, ended: ended.clone() }, ended)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            self.ended.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Nothing arrived for the body timeout, or the whole took longer
    /// than its deadline.
    TimedOut,
    /// More than the call takes.
    TooLarge(usize),
    /// The connection broke.
    Broken(hyper::Error),
}

/// The next piece of a request body, waiting at most `timeout` for it;
/// `None` at its end.
pub(crate) async fn next_chunk(body: &mut RequestBody, timeout: Duration) -> Result<Option<Bytes>, BodyError> {
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e)),
            // Trailers carry nothing a call takes.
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A whole request body of at most `limit` bytes, arriving within the
/// limits' body timeout and deadline.
pub(crate) async fn read_all(body: RequestBody, limit: usize, limits: &Limits) -> Result<Bytes, BodyError> {
    let mut body = body;
    let read = async {
        let mut all = bytes::BytesMut::new();
        while let Some(chunk) = next_chunk(&mut body, limits.body_timeout).await? {
            if all.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    };
    tokio::time::timeout(limits.body_deadline, read).await.unwrap_or(Err(BodyError::TimedOut))
}
