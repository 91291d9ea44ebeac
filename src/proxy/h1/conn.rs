//! The connection loop: wait for a request without a buffer, read its
//! head, hand it to the forwarder while feeding its body, write the
//! answer, and decide whether another request may follow. Requests on a
//! connection are answered one at a time, in order (pipelined ones wait
//! in the read buffer).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::body::{Feed, Piece, RequestBody};
use super::head::{self, Head, HeadError};
use super::idle::{self, Wake, HEAD_BUFFER};
use super::response::{self, Answering, Delimit};
use crate::config::proxy::Limits;
use crate::proxy::forward::access::ConnInfo;
use crate::proxy::forward::{self, headers, Forwarder};
use crate::proxy::framing::{Decoded, Decoder, Framing};
use crate::proxy::origin::{self, OriginUpgrade};

/// What each read of a request body may take at most.
const BODY_READ: usize = 16 * 1024;
/// How long a close_notify may take to go out before the socket closes.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("reading the request head: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection ended inside a request head")]
    Truncated,
}

/// What follows a request.
enum Next {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending: linger.
    Linger,
    /// The connection was handed to a protocol upgrade, which has ended.
    Upgraded,
}

/// Serves HTTP/1.x on an established TLS connection until it closes.
///
/// A plain function returning an `async move` block rather than an
/// `async fn`: an async fn moves its arguments into locals, and the
/// future then keeps room for the TLS stream (1.2 KB) twice.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    mut io: TlsStream<TcpStream>,
    fwd: Arc<Forwarder>,
    info: Arc<ConnInfo>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let started = Instant::now();
        // Before its first request a connection gets the header timeout
        // (or the idle timeout, if shorter) in all: a client that completes
        // TLS and then sends nothing whole holds a slot no longer than that.
        let first_limit = limits.header_timeout.min(limits.idle_timeout);
        let mut buf = BytesMut::new();
        let mut served = false;
        let mut linger = false;
        loop {
            let head_deadline = if buf.is_empty() {
                // Idle: give the buffer back before waiting.
                buf = BytesMut::new();
                let limit = if served {
                    limits.idle_timeout
                } else {
                    first_limit.saturating_sub(started.elapsed())
                };
                match idle::wait(&mut io, limit, &mut drain).await {
                    Wake::Readable => {}
                    Wake::TimedOut => {
                        let why = if served { "idle" } else { "no_request" };
                        metrics::counter!("vaultgate_proxy_idle_closes_total", "reason" => why)
                            .increment(1);
                        break;
                    }
                    Wake::Drain | Wake::Broken => break,
                }
                if served {
                    Instant::now() + limits.header_timeout
                } else {
                    started + first_limit
                }
            } else {
                Instant::now() + limits.header_timeout
            };
            let read = read_head(&mut io, &mut buf, limits.max_header_size);
            let head = match tokio::time::timeout_at(head_deadline, read).await {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) => break,
                Ok(Err(ReadError::Head(e))) => {
                    tracing::debug!(client = %info.client, error = %e, "request head refused");
                    let _ = io.write_all(&response::refusal(e.status())).await;
                    let _ = io.flush().await;
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(client = %info.client, error = %e, "connection ended");
                    break;
                }
                Err(_) => {
                    let why = if served { "header" } else { "no_request" };
                    metrics::counter!("vaultgate_proxy_idle_closes_total", "reason" => why)
                        .increment(1);
                    break;
                }
            };
            served = true;
            // The request's future is boxed: only a connection with a request
            // in flight pays for its size, not every idle one.
            let next = Box::pin(exchange(&mut io, &mut buf, head, &fwd, &info, &drain)).await;
            match next {
                Next::KeepAlive => {}
                Next::Close => break,
                Next::Linger => {
                    linger = true;
                    break;
                }
                Next::Upgraded => return,
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
        if linger {
            crate::proxy::linger::drain(io.get_mut().0).await;
        }
    }
}

/// Reads until `buf` starts with a whole head. `Ok(None)`: the client
/// closed between requests.
async fn read_head(
    io: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Option<Head>, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some(h) = head::parse(buf, limit)? {
                return Ok(Some(h));
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.capacity().max(HEAD_BUFFER));
        }
        if io.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
    }
}

/// One request: forward it, feed its body, write the answer.
async fn exchange(
    io: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    head: Head,
    fwd: &Arc<Forwarder>,
    info: &Arc<ConnInfo>,
    drain: &watch::Receiver<bool>,
) -> Next {
    let answering = Answering {
        method_is_head: head.method == Method::HEAD,
        version: head.version,
        keep_alive: head.keep_alive,
    };
    let upgrade = head.version == Version::HTTP_11 && headers::is_upgrade(&head.headers);
    let (body, feed) = match head.framing {
        Framing::Empty => (RequestBody::empty(), None),
        Framing::Length(n) => {
            let (b, f) = RequestBody::streamed(Some(n));
            (b, Some(f))
        }
        Framing::Chunked => {
            let (b, f) = RequestBody::streamed(None);
            (b, Some(f))
        }
    };
    let mut feeding = feed.map(|feed| Feeding {
        feed,
        decoder: Decoder::new(head.framing),
        expect_continue: head.expect_continue,
        wanted: false,
    });
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let mut respond = std::pin::pin!(forward::handle(req, fwd.clone(), info.clone()));
    let mut body_read = feeding.is_none();
    let resp = loop {
        let Some(f) = feeding.as_mut() else {
            break respond.await;
        };
        tokio::select! {
            // The body first: when it ends as the answer arrives, the
            // connection can stay open.
            biased;
            complete = f.run(io, buf) => {
                body_read = complete;
                feeding = None;
                if !complete {
                    // Broken or abandoned: the forwarder's answer still goes
                    // out (a 400 for a broken body), then the connection closes.
                    break respond.await;
                }
            }
            r = &mut respond => {
                // The answer came while the feed was still handing over
                // the body's end: what counts for keep-alive is whether
                // the body was read off the connection, not whether its
                // end marker was delivered.
                body_read = f.decoder.is_done();
                break r;
            }
        }
    };
    // Whatever the forwarder did not read is not read: the connection
    // cannot be reused without reading it, so it closes.
    drop(feeding);
    let Ok(resp) = resp;
    let mut answering = answering;
    answering.keep_alive &= body_read && !*drain.borrow();
    match write_response(io, buf, resp, answering, upgrade, info).await {
        Next::Close if !body_read => Next::Linger,
        next => next,
    }
}

async fn write_response(
    io: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    resp: Response<forward::body::Logged>,
    answering: Answering,
    upgrade: bool,
    info: &ConnInfo,
) -> Next {
    let (parts, body) = resp.into_parts();
    let size = body.size_hint().exact();
    let mut out = response::out_buffer(size);
    let (delimit, keep_alive) = response::encode_head(&mut out, &parts, size, answering);
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let written = async {
            io.write_all(&out).await?;
            io.flush().await
        };
        let ok = written.await.is_ok();
        drop(body);
        if !(ok && upgrade) {
            return Next::Close;
        }
        splice(io, buf, Response::from_parts(parts, ()), info).await;
        return Next::Upgraded;
    }
    debug_assert!(delimit != Delimit::Close || !keep_alive);
    match response::write_body(io, &mut out, body, delimit).await {
        Ok(()) if keep_alive => Next::KeepAlive,
        Ok(()) => Next::Close,
        Err(e) => {
            tracing::debug!(client = %info.client, error = %e, "response not completed");
            Next::Close
        }
    }
}

/// Joins the client's connection to the backend's after a 101: what the
/// client sent after its request goes first.
async fn splice(
    io: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    resp: Response<()>,
    info: &ConnInfo,
) {
    let Some((backend, pending)) = resp
        .extensions()
        .get::<OriginUpgrade>()
        .and_then(OriginUpgrade::take)
    else {
        tracing::debug!(client = %info.client, "protocol upgrade failed: no backend connection");
        return;
    };
    let _ = origin::splice(io, buf, backend, &pending).await;
    buf.clear();
}

/// Feeding a request body from the connection to the forwarder.
struct Feeding {
    feed: Feed,
    decoder: Decoder,
    expect_continue: bool,
    wanted: bool,
}

impl Feeding {
    /// Runs until the body is read whole (true) or cannot be (false:
    /// broken, the client gone, or the forwarder no longer reading).
    /// Reading starts only when the forwarder first asks for the body.
    async fn run(&mut self, io: &mut TlsStream<TcpStream>, buf: &mut BytesMut) -> bool {
        if !self.wanted {
            if (&mut self.feed.wanted).await.is_err() {
                return false;
            }
            self.wanted = true;
            if self.expect_continue {
                self.expect_continue = false;
                let sent = async {
                    io.write_all(response::CONTINUE).await?;
                    io.flush().await
                };
                if sent.await.is_err() {
                    return false;
                }
            }
        }
        loop {
            let piece = match self.decoder.decode(buf) {
                Ok(Decoded::Data(d)) => Piece::Data(d),
                Ok(Decoded::End) => {
                    // Room is left by the last piece taken; the end fits.
                    let _ = self.feed.tx.send(Piece::End).await;
                    return true;
                }
                Ok(Decoded::NeedMore) => {
                    let want = self
                        .decoder
                        .remaining()
                        .map_or(BODY_READ, |r| usize::try_from(r).unwrap_or(BODY_READ))
                        .clamp(1, BODY_READ);
                    if buf.capacity() - buf.len() < want {
                        buf.reserve(want);
                    }
                    match io.read_buf(buf).await {
                        Ok(0) => match self.decoder.eof() {
                            Err(e) => Piece::Failed(e),
                            Ok(()) => continue,
                        },
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
                Err(e) => Piece::Failed(e),
            };
            let failed = matches!(piece, Piece::Failed(_));
            if self.feed.tx.send(piece).await.is_err() || failed {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_does_not_carry_a_request_in_its_future() {
        // The connection task holds this future for its whole life; the
        // request's state is boxed and exists only while one is in flight.
        let size = returned_size(serve);
        eprintln!("HTTP/1 connection future: {size} bytes");
        assert!(size < 2560, "{size} bytes");
    }
}
