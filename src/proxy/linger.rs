//! Lingering close (nginx's `lingering_close`): before a client
//! connection is closed, what the client still sends is read and dropped
//! for a while. Closing a socket with unread data makes the kernel reset
//! the connection, and a reset can make the client lose what was already
//! sent to it: an answer to an upload it is still sending (HTTP/1.1), or
//! the tail of a body it has not read yet when its last WINDOW_UPDATE
//! arrives after the proxy closed (HTTP/2).

use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// At most this long in all...
const LINGER_TIME: Duration = Duration::from_secs(10);
/// ...and this long between two reads.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const READ: usize = 16 * 1024;

/// Reads and drops what the client still sends, raw (no TLS: it is not
/// looked at), until it stops, closes, or [`LINGER_TIME`] runs out.
pub async fn drain(tcp: &mut TcpStream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = vec![0u8; READ];
    loop {
        let wait = LINGER_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, tcp.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// A second handle on a connection that something else owns and closes
/// (hyper's HTTP/2 connection): it keeps the socket open after that, so
/// the close can linger. `None` if the descriptor cannot be duplicated
/// (the connection then closes at once, as before).
pub fn keep(tcp: &TcpStream) -> Option<std::net::TcpStream> {
    tcp.as_fd()
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from)
}

/// After the owner of the connection is done with it: sends the end of
/// stream (its owner has sent close_notify already, or could not), then
/// lingers on the kept handle.
pub async fn close(kept: std::net::TcpStream) {
    let _ = kept.shutdown(std::net::Shutdown::Write);
    if kept.set_nonblocking(true).is_err() {
        return;
    }
    if let Ok(mut tcp) = TcpStream::from_std(kept) {
        drain(&mut tcp).await;
    }
}
