//! Backend connections private to one client connection, for upstreams
//! that get a PROXY protocol v2 header: the header names the client, so
//! a connection that carries one must never serve another client (as
//! HAProxy does with `send-proxy-v2`). Each client connection keeps at
//! most one idle backend connection per backend for keep-alive.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::upstream::UpBody;

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (private path).
    #[error("connect: {0}")]
    Connect(String),
    /// A private connection failed after it was made.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The shared pooled client failed (its error says whether connecting).
    #[error("{0}")]
    Pooled(hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether the backend could not be reached at all: only then is it
    /// ejected and the request tried elsewhere.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(_) => false,
            SendError::Pooled(e) => e.is_connect(),
        }
    }
}

/// Idle private connections of one client connection, by backend.
#[derive(Default)]
pub struct PrivatePool {
    idle: Mutex<HashMap<SocketAddr, SendRequest<UpBody>>>,
}

impl std::fmt::Debug for PrivatePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivatePool")
    }
}

impl PrivatePool {
    /// Sends `req` to `backend`, reusing this client's idle connection to
    /// it or opening one that starts with a PROXY v2 header for
    /// `client` → `local`.
    pub async fn send(
        &self,
        backend: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
        connect_timeout: Duration,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&backend)
            .filter(|s| s.is_ready());
        let mut sender = match idle {
            Some(s) => s,
            None => connect(backend, client, local, connect_timeout).await?,
        };
        let resp = sender.send_request(req).await?;
        // Ready again once this response's body is read; keep it for the
        // next request of the same client (a second one waiting meanwhile
        // gets its own connection rather than queue behind this body).
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(backend, sender);
        Ok(resp)
    }
}

async fn connect(
    backend: SocketAddr,
    client: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<UpBody>, SendError> {
    let mut tcp = tokio::time::timeout(timeout, TcpStream::connect(backend))
        .await
        .map_err(|_| SendError::Connect(format!("timed out after {timeout:?}")))?
        .map_err(|e| SendError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(&proxy_v2_header(client, local))
        .await
        .map_err(|e| SendError::Connect(format!("writing the PROXY header: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// The PROXY protocol v2 header (PROXY command, TCP) for a connection
/// from `src` to `dst`. Mixed families are sent as IPv6.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21);
    match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_header_bytes() {
        let h = proxy_v2_header(
            "192.0.2.1:5000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(
            &h[16..28],
            &[192, 0, 2, 1, 10, 0, 0, 1, 0x13, 0x88, 0x01, 0xbb]
        );
        let h = proxy_v2_header("[::1]:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert_eq!((h[13], h.len()), (0x21, 16 + 36));
    }
}

/// One shared HTTP/2 cleartext (h2c) connection per backend, multiplexing
/// every request to it. Used instead of the pooled client because an
/// h2 request's `:authority` must carry the client's host (nginx refuses
/// a request whose `:authority` and `Host` differ), while the connection
/// goes to the backend's address.
#[derive(Default)]
pub struct H2cPool {
    conns: tokio::sync::Mutex<HashMap<SocketAddr, hyper::client::conn::http2::SendRequest<UpBody>>>,
}

impl H2cPool {
    pub async fn send(
        &self,
        backend: SocketAddr,
        connect_timeout: Duration,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = {
            // Held across the connect so concurrent requests share one
            // new connection instead of racing to open several.
            let mut conns = self.conns.lock().await;
            match conns.get(&backend).filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(backend))
                        .await
                        .map_err(|_| {
                            SendError::Connect(format!("timed out after {connect_timeout:?}"))
                        })?
                        .map_err(|e| SendError::Connect(e.to_string()))?;
                    let _ = tcp.set_nodelay(true);
                    let (s, conn) = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        TokioIo::new(tcp),
                    )
                    .await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    conns.insert(backend, s.clone());
                    s
                }
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}
