//! The proxy's clients to backends ("origin servers"): its own HTTP/1.1
//! client, and h2c through hyper ([`h2c`]). The HTTP/1.1 client replaces
//! hyper-util's pooled client on the hot path: a request is
//! written, and its answer read, on the request's own task, with no
//! dispatch task and channel in between, and the response body is read
//! straight off the backend's socket by whoever writes it to the client.
//!
//! # Layout
//! - [`pool`]: the connection pool of one backend: keep-alive
//!   connections parked until reused, expired or closed by the backend.
//! - [`per_client`]: the pools private to one client connection, for
//!   backends that get a PROXY protocol header.
//! - [`h2c`]: HTTP/2 over cleartext to backends that ask for it.
//! - [`request`]: writing a request head and streaming its body.
//! - [`response`]: reading and checking a response head, and how its body
//!   is delimited.
//! - [`body`]: the response body, which hands its connection back to the
//!   pool the moment the body's last byte is read.
//!
//! What it does as nginx's `proxy_pass` with `keepalive` does: a request
//! that fails on a reused connection before any answer arrived is sent
//! again on a fresh one when it has no body (the backend may have closed
//! the idle connection as the request left); 1xx interim answers other
//! than 101 are dropped; an answer that arrives before the request body
//! was sent whole ends the upload, and that connection is not reused.

pub mod body;
pub mod h2c;
pub mod per_client;
pub mod pool;
pub mod request;
pub mod response;

use std::io;

use bytes::BytesMut;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::OriginBody;
pub use pool::Pool;
pub use request::Outgoing;
pub use response::OriginUpgrade;

use super::body::BoxError;

/// Why a request got no answer from a backend.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("tcp connect error: {0}")]
    Connect(io::Error),
    #[error("tcp connect error: timed out after {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the backend closed the connection before answering")]
    Closed,
    #[error("the backend closed the connection inside the response head")]
    Truncated,
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("invalid response head: {0}")]
    InvalidHead(String),
    #[error("the request body failed: {0}")]
    Body(BoxError),
}

impl OriginError {
    /// Whether the backend could not be reached at all: only then is it
    /// ejected, and the request tried on another.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            OriginError::Connect(_) | OriginError::ConnectTimeout(_)
        )
    }

    /// Whether nothing of an answer arrived and the connection simply went
    /// away: on a reused connection, the backend closing it while idle.
    fn is_stale(&self) -> bool {
        match self {
            OriginError::Closed => true,
            OriginError::Write(e) | OriginError::Read(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Sends `req` to the pool's backend and reads the answer's head. The
/// body streams from the returned response; its connection goes back to
/// `pool` when the body is read whole.
///
/// A failure to connect leaves `req` whole, to be sent to another backend.
pub async fn send(
    pool: &std::sync::Arc<Pool>,
    req: &mut Outgoing,
) -> Result<Response<OriginBody>, OriginError> {
    // A request with a body cannot be sent twice: the body is consumed.
    let mut fresh_only = false;
    loop {
        let (mut conn, reused) = match (!fresh_only).then(|| pool.take()).flatten() {
            Some(c) => (c, true),
            None => (pool.connect().await?, false),
        };
        let resendable = req.body.is_none();
        match request::exchange(&mut conn, req).await {
            Ok(head) => return response::finish(conn, head, pool, req),
            Err(e) if reused && resendable && e.is_stale() => {
                tracing::debug!(backend = %pool.addr(), error = %e, "idle backend connection was closed; resending on a new one");
                fresh_only = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads into `buf`, growing it by at least `min` when it is full.
fn reserve(buf: &mut BytesMut, min: usize) {
    if buf.capacity() - buf.len() < min / 4 {
        buf.reserve(min);
    }
}

/// Joins a client's connection to a backend's after a 101: what each side
/// sent beyond the switch goes first, then bytes flow both ways until
/// either side closes.
pub async fn splice<C>(
    client: &mut C,
    client_pending: &[u8],
    mut backend: TcpStream,
    backend_pending: &[u8],
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if !backend_pending.is_empty() {
        client.write_all(backend_pending).await?;
        client.flush().await?;
    }
    if !client_pending.is_empty() {
        backend.write_all(client_pending).await?;
    }
    tokio::io::copy_bidirectional(client, &mut backend)
        .await
        .map(|_| ())
}
