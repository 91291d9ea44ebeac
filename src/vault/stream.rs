//! A connection's bytes, whichever way the caller came: the Unix socket,
//! read and written straight on the non-blocking descriptor, or TLS over
//! TCP, through tokio-rustls. The connection loop ([`super::server`]) is
//! the same for both; only reading and writing differ.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub type Tls = TlsStream<TcpStream>;

/// Bytes read per `recv`, shared by all connections of a worker thread:
/// a whole pipelined batch arrives in one call, at no per-connection cost.
const READ_CHUNK: usize = 64 * 1024;
/// What a TLS read reserves: a TLS record's plaintext is at most 16 KiB.
const TLS_READ: usize = 16 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The reading side of a connection; only its loop reads.
pub enum Source {
    Unix(Arc<AsyncFd<UnixStream>>),
    Tls(ReadHalf<Tls>),
}

/// The writing side, shared (under a lock) by the loop, slow operations
/// and event forwarding.
pub enum Sink {
    Unix(Arc<AsyncFd<UnixStream>>),
    Tls(WriteHalf<Tls>),
}

/// Splits an accepted connection into its two sides. The Unix socket is
/// registered for readability only: with writability too, every read of
/// an answer by the caller (which frees send-buffer space) woke this
/// thread for nothing — most of an extra `epoll_wait` and context switch
/// per signature. Writes go straight to the non-blocking socket; only one
/// that finds the buffer full registers (a duplicate of) the socket for
/// writability, for that wait.
pub fn unix(stream: UnixStream) -> std::io::Result<(Source, Sink)> {
    stream.set_nonblocking(true)?;
    let sock = Arc::new(crate::os::register_unix_stream(stream, Interest::READABLE)?);
    Ok((Source::Unix(sock.clone()), Sink::Unix(sock)))
}

pub fn tls(stream: Tls) -> (Source, Sink) {
    let (r, w) = tokio::io::split(stream);
    (Source::Tls(r), Sink::Tls(w))
}

impl Source {
    /// Waits until the caller sent something and appends it to `buf`.
    /// `Ok(0)`: the peer closed. Cancel-safe: nothing read is lost.
    pub async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Source::Unix(sock) => read_unix(sock, buf).await,
            Source::Tls(r) => {
                buf.reserve(TLS_READ);
                r.read_buf(buf).await
            }
        }
    }
}

impl Sink {
    /// Writes all of `data` within `timeout`; false if the peer is gone
    /// or not reading.
    pub async fn write_all(&mut self, data: &[u8], timeout: Duration) -> bool {
        match self {
            Sink::Unix(sock) => write_unix(sock, data, timeout).await,
            Sink::Tls(w) => matches!(
                tokio::time::timeout(timeout, async {
                    w.write_all(data).await?;
                    w.flush().await
                })
                .await,
                Ok(Ok(()))
            ),
        }
    }
}

async fn read_unix(sock: &AsyncFd<UnixStream>, buf: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        let mut ready = sock.readable().await?;
        let got = READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < READ_CHUNK {
                scratch.resize(READ_CHUNK, 0);
            }
            loop {
                match (&mut sock.get_ref()).read(&mut scratch[..]) {
                    Ok(n) => {
                        buf.extend_from_slice(&scratch[..n]);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        });
        match got {
            Ok(n) => {
                // A short read emptied the socket (stream sockets return
                // all that is queued, up to the buffer): wait for the next
                // edge instead of paying a `recv` that says EAGAIN, as
                // tokio's own streams do.
                if n > 0 && n < READ_CHUNK {
                    ready.clear_ready();
                }
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => ready.clear_ready(),
            Err(e) => return Err(e),
        }
    }
}

/// The socket is only written to directly; a full send buffer (a caller
/// not reading) is waited on through a writability registration made for
/// that wait alone.
async fn write_unix(sock: &AsyncFd<UnixStream>, mut data: &[u8], timeout: Duration) -> bool {
    let mut deadline = None;
    let mut waiter: Option<AsyncFd<UnixStream>> = None;
    while !data.is_empty() {
        match (&mut sock.get_ref()).write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
                if waiter.is_none() {
                    let registered = sock
                        .get_ref()
                        .try_clone()
                        .and_then(|dup| crate::os::register_unix_stream(dup, Interest::WRITABLE));
                    match registered {
                        Ok(w) => waiter = Some(w),
                        Err(_) => return false,
                    }
                }
                let Some(w) = &waiter else { return false };
                match tokio::time::timeout_at(deadline, w.writable()).await {
                    Ok(Ok(mut ready)) => ready.clear_ready(),
                    _ => return false,
                }
            }
            Err(_) => return false,
        }
    }
    true
}
