//! Waiting for the next request without holding a buffer, as nginx does:
//! whatever the socket has is read straight into rustls (which keeps its
//! own record buffer), so a pipelined or quick request costs nothing
//! more and an idle connection waits on the socket's readiness with no
//! read buffer of ours at all. The caller allocates one only once rustls
//! holds plaintext. Bytes rustls has already decrypted, or a close it has
//! already seen, count as ready without touching the socket.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
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

/// Waits up to `limit` for the client to send something, holding no
/// buffer of its own: the caller allocates one once there is something
/// to read.
pub async fn wait(
    io: &mut TlsStream<TcpStream>,
    limit: Duration,
    drain: &mut watch::Receiver<bool>,
) -> Wake {
    let sleep = tokio::time::sleep_until(Instant::now() + limit);
    tokio::pin!(sleep);
    loop {
        match buffered(io).await {
            Ok(true) => return Wake::Readable,
            Ok(false) => {}
            Err(_) => return Wake::Broken,
        }
        if *drain.borrow() {
            return Wake::Drain;
        }
        let (tcp, session) = io.get_mut();
        if !session.wants_read() {
            // rustls holds records it will not take more after: let the
            // reader deal with them.
            return Wake::Readable;
        }
        match session.read_tls(&mut NoWaitRead(tcp)) {
            // The end of the stream: the next read reports it.
            Ok(0) => return Wake::Readable,
            // Records came: see whether they hold a request's bytes. A
            // client sending records without data must not keep the
            // worker from its other connections.
            Ok(_) => {
                tokio::task::consume_budget().await;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Wake::Broken,
        }
        let (tcp, _) = io.get_ref();
        tokio::select! {
            r = tcp.readable() => if r.is_err() {
                return Wake::Broken;
            },
            () = &mut sleep => return Wake::TimedOut,
            // A dropped sender means the listener is gone: drain as well.
            _ = drain.changed() => return Wake::Drain,
        }
    }
}

/// Reads the socket without waiting: `WouldBlock` when it has nothing.
/// Through tokio's `poll_read`, not `try_read`: a read shorter than the
/// buffer tells tokio the socket is drained (epoll is edge-triggered), so
/// the next wait sleeps at once instead of first making a read that finds
/// nothing (`try_read` keeps the readiness until a read fails: one more
/// syscall per request).
struct NoWaitRead<'a>(&'a mut TcpStream);

impl std::io::Read for NoWaitRead<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncRead;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut rb = tokio::io::ReadBuf::new(b);
        match std::pin::Pin::new(&mut *self.0).poll_read(&mut cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            std::task::Poll::Ready(Err(e)) => Err(e),
            // The wait that follows registers the task's own waker.
            std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
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
