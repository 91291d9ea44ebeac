//! One client connection, from the TLS handshake to the close: the
//! handshake with its deadline and metrics, what the connection learned
//! (SNI, ALPN, resumption) as [`ConnInfo`], and the hand-over to the
//! protocol ALPN agreed on, [`super::h1`] or [`super::h2`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{Either, OptionFuture};
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

use super::forward::access::ConnInfo;
use super::forward::Forwarder;

/// What serves the connections accepted under one config generation,
/// shared by all of them.
pub(crate) struct Serving {
    pub acceptor: TlsAcceptor,
    pub fwd: Arc<Forwarder>,
    pub limits: crate::config::proxy::Limits,
}

impl Serving {
    pub fn new(live: &super::Live) -> Serving {
        Serving {
            acceptor: TlsAcceptor::from(live.tls.clone()),
            fwd: live.forwarder.clone(),
            limits: live.settings.limits.clone(),
        }
    }
}

/// One client connection, from the TLS handshake to the close.
///
/// Built from combinators rather than as an `async fn`: the task keeps
/// room for its largest state for its whole life, and an async fn would
/// keep the handshake's state and a second copy of the serving future
/// next to the serving future itself. The handshake (and the TLS stream
/// it makes) lives in a box until it hands over the serving future, so
/// an idle HTTP/1 connection holds only that.
pub(crate) fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    permit: OwnedSemaphorePermit,
    drain: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let open = OpenGauge::new();
    Box::pin(accept(tcp, peer, serving, drain))
        .then(OptionFuture::from)
        .map(move |_| drop((permit, open)))
}

/// The TLS handshake, then what serves the protocol ALPN agreed on.
async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    drain: watch::Receiver<bool>,
) -> Option<impl Future<Output = ()> + Send> {
    let local = tcp.local_addr().ok()?;
    let start = Instant::now();
    let handshake = tokio::time::timeout(
        serving.limits.handshake_timeout,
        serving.acceptor.accept(tcp),
    );
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => failure_reason(&e)).increment(1);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return None;
        }
    };
    let (_, session) = tls.get_ref();
    let resumed = matches!(
        session.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let kind = if resumed { "resumed" } else { "full" };
    metrics::counter!("vaultgate_proxy_handshakes_total", "kind" => kind).increment(1);
    metrics::histogram!("vaultgate_proxy_handshake_seconds", "kind" => kind)
        .record(start.elapsed().as_secs_f64());
    let info = Arc::new(ConnInfo {
        client: peer,
        client_ip: super::forward::headers::ClientIp::new(peer.ip()),
        local,
        sni: session.server_name().map(str::to_owned),
        tls_version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned(),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-")
            .to_owned(),
        alpn: session
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        resumed,
        per_client: Default::default(),
        activity: Default::default(),
    });
    // The protocol is the one ALPN agreed on: HTTP/2 goes to hyper; HTTP/1
    // (agreed, or no protocol named) to the proxy's own driver. A client
    // that named none and sends the HTTP/2 preface gets a 400, as from
    // nginx, which takes HTTP/2 without ALPN on cleartext ports only.
    Some(if info.alpn.as_deref() != Some("h2") {
        let (fwd, limits) = (serving.fwd.clone(), serving.limits.clone());
        Either::Left(super::h1::serve(tls, fwd, info, limits, drain))
    } else {
        let (fwd, limits) = (serving.fwd.clone(), serving.limits.clone());
        Either::Right(Box::pin(super::h2::serve(tls, fwd, info, limits, drain)))
    })
}

fn failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::Other(other)) if other.0.is::<crate::signer::SignerError>() => "vault",
        // The resolver had no certificate for the name: rustls reports it
        // in these words only, with no variant of its own.
        Some(rustls::Error::General(m)) if m.starts_with("no server certificate") => {
            "no_certificate"
        }
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "tls",
        None => "io",
    }
}

/// Keeps `vaultgate_proxy_connections_open` right however a connection ends.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        metrics::gauge!("vaultgate_proxy_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("vaultgate_proxy_connections_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_holds_little_more_than_its_tls_stream() {
        // The TLS stream is 1.2 KB of it; hyper's connection took 4.7 KB.
        let size = returned_size(super::connection);
        eprintln!("connection future: {size} bytes");
        assert!(size < 2560, "{size} bytes");
    }
}
