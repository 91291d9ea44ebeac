//! HTTP/2 cleartext (h2c) backends: hyper's HTTP/2 client, one shared
//! connection per backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::body::UpBody;

/// Why an h2c request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum H2cError {
    #[error("tcp connect error: {0}")]
    Connect(std::io::Error),
    #[error("tcp connect error: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
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
    ) -> Result<Response<Incoming>, H2cError> {
        let mut sender = {
            // Held across the connect so concurrent requests share one
            // new connection instead of racing to open several.
            let mut conns = self.conns.lock().await;
            match conns.get(&backend).filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(backend))
                        .await
                        .map_err(|_| H2cError::ConnectTimeout(connect_timeout))?
                        .map_err(H2cError::Connect)?;
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
