//! HTTP/2 connections (ALPN `h2`), served by hyper, and what makes them
//! cheap per request.
//!
//! # Layout
//! - [`budget`]: the read side; header blocks are charged what they
//!   decode to, and a connection that spends its budget is closed with
//!   GOAWAY(ENHANCE_YOUR_CALM) (HPACK bombs).
//! - [`hpack`]: the decoded size of header blocks, read from their wire
//!   bytes alongside h2's own decoder.
//! - [`coalesce`]: the write side; responses that finish close together
//!   leave in one TLS record and one write instead of one each.
//! - [`streams`]: the connection's streams run inside its own task, not a
//!   task each.

mod budget;
mod coalesce;
mod hpack;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::forward;
use super::forward::access::ConnInfo;
use super::forward::Forwarder;
use crate::config::proxy::Limits;
use budget::Budget;
use coalesce::{Coalesce, Turns};
use streams::{Streams, WithStreams};

/// hyper's builder for one `h2` connection, with `exec` running its
/// streams (see [`streams`]).
fn http_builder<E>(l: &Limits, exec: E) -> auto::Builder<E> {
    let mut b = auto::Builder::new(exec);
    // hyper's HTTP/1 serves only HTTP/1 bytes on an `h2` connection (to
    // refuse them with a 400); the proxy's own driver serves HTTP/1.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_timeout.min(l.idle_timeout))
        .max_buf_size(l.max_header_size)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(l.max_header_size as u32)
        .keep_alive_interval(Some(l.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// HTTP/2 (and, on an `h2` connection, HTTP/1 bytes, which the forwarder
/// refuses: hyper's builder tells them apart) with hyper.
pub(super) async fn serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    fwd: Arc<Forwarder>,
    info: Arc<ConnInfo>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let limits = &limits;
    let peer = info.client;
    // hyper closes the socket when the connection ends; a second handle
    // keeps it open for a lingering close (see `linger`).
    let kept = super::linger::keep(tls.get_ref().0);
    let service = {
        let info = info.clone();
        hyper::service::service_fn(move |req| forward::handle(req, fwd.clone(), info.clone()))
    };
    let turns = Turns::default();
    let io = TokioIo::new(Budget::new(Coalesce::new(tls, turns.clone()), peer));
    let streams = Streams::default();
    let http = http_builder(limits, streams.clone());
    let mut conn = WithStreams::new(
        http.serve_connection_with_upgrades(io, service),
        streams,
        turns,
    );
    // Until its first request begins, a connection gets the header
    // timeout (a client that completes TLS and then sends nothing, or
    // trickles an HTTP/2 preface or a HEADERS frame, holds a slot);
    // afterwards the idle timeout. Checked a few times per period:
    // exactness is not needed, closing eventually is.
    let first_limit = limits.header_timeout.min(limits.idle_timeout);
    let mut idle_check = tokio::time::interval((first_limit / 4).max(Duration::from_millis(50)));
    let mut closing = *drain.borrow();
    if closing {
        conn.conn().graceful_shutdown();
    }
    // A connection told to close that does not (an HTTP/2 client that
    // never answers the GOAWAY's PING) is dropped after this grace.
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.conn().graceful_shutdown();
            }
            _ = idle_check.tick(), if give_up.is_none() => {
                if closing {
                    continue;
                }
                let limit = if info.any_request() { limits.idle_timeout } else { first_limit };
                if info.idle_for() >= limit {
                    closing = true;
                    let what = if info.any_request() { "idle" } else { "no_request" };
                    metrics::counter!("vaultgate_proxy_idle_closes_total", "reason" => what).increment(1);
                    conn.conn().graceful_shutdown();
                    give_up = Some(tokio::time::Instant::now() + first_limit.min(Duration::from_secs(5)));
                }
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                tracing::debug!(client = %peer, "connection did not close after being told to; dropped");
                break;
            }
        }
    }
    drop(conn);
    if let Some(kept) = kept {
        super::linger::close(kept).await;
    }
}
