//! Waiting for the next request without holding a buffer: an idle
//! connection waits in a one-byte `MSG_PEEK` on its socket, not inside a
//! read, so the read buffer can be freed between requests (nginx does the
//! same). A peek rather than `readable()`: tokio keeps a socket marked
//! readable until a read would block, which the last request's read
//! usually did not. Bytes rustls has already decrypted, or a close it has
//! already seen, count as ready without touching the socket.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

/// Why the wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something to read (or the peer's close, which a read reports).
    Readable,
    /// Nothing arrived within the limit.
    TimedOut,
    /// The listener is draining.
    Drain,
    /// The TLS session failed while being checked.
    Broken,
}

/// Waits up to `limit` for the client to send something.
pub async fn wait(
    io: &mut TlsStream<TcpStream>,
    limit: Duration,
    drain: &mut watch::Receiver<bool>,
) -> Wake {
    match buffered(io).await {
        Ok(true) => return Wake::Readable,
        Ok(false) => {}
        Err(_) => return Wake::Broken,
    }
    if *drain.borrow() {
        return Wake::Drain;
    }
    let (tcp, _) = io.get_ref();
    let mut one = [0u8; 1];
    tokio::select! {
        // Ok(0) is the peer's close: the read that follows reports it.
        r = tcp.peek(&mut one) => match r {
            Ok(_) => Wake::Readable,
            Err(_) => Wake::Broken,
        },
        () = tokio::time::sleep(limit) => Wake::TimedOut,
        // A dropped sender means the listener is gone: drain as well.
        _ = drain.changed() => Wake::Drain,
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
