//! Waiting for the next request without holding a buffer, as nginx does:
//! a read is tried at once (a pipelined or quick request costs nothing
//! more); if the socket has nothing, the buffer is freed and the
//! connection waits on the socket's readiness instead, which the read
//! that found nothing has reset. Bytes rustls has already decrypted, or
//! a close it has already seen, count as ready without touching the
//! socket.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// The read buffer's first allocation, when a request starts arriving:
/// enough for nearly every request head.
pub const HEAD_BUFFER: usize = 4 * 1024;

/// Why the wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Bytes are in the buffer, or rustls has them, or the peer closed
    /// (the next read reports it).
    Readable,
    /// Nothing arrived within the limit.
    TimedOut,
    /// The listener is draining.
    Drain,
    /// The connection failed while being checked.
    Broken,
}

/// Waits up to `limit` for the client to send something; `buf` is empty
/// on entry, and allocated only once something has come.
pub async fn wait(
    io: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    limit: Duration,
    drain: &mut watch::Receiver<bool>,
) -> Wake {
    let deadline = Instant::now() + limit;
    match buffered(io).await {
        Ok(true) => return Wake::Readable,
        Ok(false) => {}
        Err(_) => return Wake::Broken,
    }
    loop {
        if *drain.borrow() {
            return Wake::Drain;
        }
        *buf = BytesMut::with_capacity(HEAD_BUFFER);
        match io.read_buf(buf).now_or_never() {
            Some(Ok(_)) => return Wake::Readable,
            Some(Err(_)) => return Wake::Broken,
            None => *buf = BytesMut::new(),
        }
        let (tcp, _) = io.get_ref();
        tokio::select! {
            r = tcp.readable() => if r.is_err() {
                return Wake::Broken;
            },
            () = tokio::time::sleep_until(deadline) => return Wake::TimedOut,
            // A dropped sender means the listener is gone: drain as well.
            _ = drain.changed() => return Wake::Drain,
        }
    }
}

/// Whether rustls holds plaintext (or the peer's close_notify) that a
/// read would return at once. Also sends whatever processing the records
/// produced (a TLS 1.3 key update's answer).
async fn buffered(io: &mut TlsStream<TcpStream>) -> std::io::Result<bool> {
    let (_, session) = io.get_mut();
    let state = session
        .process_new_packets()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let ready = state.plaintext_bytes_to_read() > 0 || state.peer_has_closed();
    if session.wants_write() {
        io.flush().await?;
    }
    Ok(ready)
}
