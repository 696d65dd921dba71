//! A step's stdout and stderr, captured into one bounded log.

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The captured output of one step: the first `cap` bytes, and how many
/// bytes the guest wrote in all. Writes past the cap succeed from the
/// guest's point of view (it cannot tell, and cannot use the log to push
/// the host's memory) but are dropped and counted.
#[derive(Debug, Default)]
struct Buffer {
    kept: Vec<u8>,
    cap: usize,
    written: u64,
    /// Where every byte also goes as it is written: a step process's
    /// pipe to the host, which keeps the log.
    forward: Option<Forward>,
}

struct Forward(Box<dyn io::Write + Send>);

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forward")
    }
}

/// A handle on a step's log, shared by its stdout and stderr.
#[derive(Debug, Clone)]
pub struct LogSink(Arc<Mutex<Buffer>>);

impl LogSink {
    /// A log that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self(Arc::new(Mutex::new(Buffer { kept: Vec::new(), cap, written: 0, forward: None })))
    }

    /// A log that keeps nothing and hands every byte to `to` as it comes.
    pub(crate) fn forwarding(to: impl io::Write + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Buffer {
            kept: Vec::new(),
            cap: 0,
            written: 0,
            forward: Some(Forward(Box::new(to))),
        })))
    }

    pub(crate) fn append(&self, bytes: &[u8]) {
        // A poisoned lock only means another writer panicked mid-append;
        // the bytes already kept are still a valid log.
        let mut b = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        b.written += bytes.len() as u64;
        if let Some(Forward(to)) = &mut b.forward {
            // A host that stopped reading has killed this process, or
            // is about to.
            let _ = to.write_all(bytes);
        }
        let room = b.cap.saturating_sub(b.kept.len());
        let take = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..take]);
    }

    /// A copy of the bytes kept from `offset` on, and the total written
    /// so far: for following a step's log while it runs.
    pub fn read_from(&self, offset: usize) -> (Vec<u8>, u64) {
        let b = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (b.kept.get(offset..).unwrap_or_default().to_vec(), b.written)
    }

    /// The bytes kept and the total the guest wrote.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut b = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut b.kept), b.written)
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Most a guest may hand over in one write; it then asks again.
const WRITE_BUDGET: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_counts_everything() {
        let log = LogSink::new(4);
        log.append(b"abc");
        log.append(b"defgh");
        assert_eq!(log.read_from(1), (b"bcd".to_vec(), 8));
        assert_eq!(log.read_from(9), (Vec::new(), 8));
        assert_eq!(log.take(), (b"abcd".to_vec(), 8));
    }
}
