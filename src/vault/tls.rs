//! The vault over mutual TLS: TCP listeners next to the Unix socket,
//! TLS 1.3 only, a client certificate from `client_ca` required. The
//! certificate's identity (URI SAN, else DNS SAN) is the caller, matched
//! against `cert:` grants; past the handshake a connection is served as
//! a Unix one is ([`super::server`]).
//!
//! A caller that cannot complete the handshake (no certificate, another
//! CA, expired) or whose certificate no grant names is refused: counted
//! by reason, audited as a refused connection (folded past a few a
//! second, so a scanner cannot flood the log).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::audit::Event;
use super::listen::Bound;
use super::ops::Vault;
use super::policy::{Caller, Remote};
use super::server::Shared;
use super::VaultError;
use crate::config::vault::TlsListen;

/// The listeners and what they serve with, made before the vault drops
/// its privileges (the key file may be root's, the port below 1024).
pub struct Listeners {
    listeners: Vec<Bound>,
    acceptor: TlsAcceptor,
}

/// Why a TLS caller was not served: the `reason` label of
/// `vaultgate_vault_tls_refused_total`, and what the audit record says.
#[derive(Debug)]
enum Refused {
    NoCertificate,
    UnknownCa,
    Expired,
    /// Any other handshake failure (a bad certificate, no TLS 1.3, …).
    Handshake(std::io::Error),
    Timeout(Duration),
    NoIdentity,
    NoGrant(String),
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::NoCertificate => "no-certificate",
            Refused::UnknownCa => "unknown-ca",
            Refused::Expired => "expired",
            Refused::Handshake(_) => "handshake",
            Refused::Timeout(_) => "timeout",
            Refused::NoIdentity => "no-identity",
            Refused::NoGrant(_) => "no-grant",
        }
    }

    /// From the error the handshake ended with, by the rustls error in it.
    fn from_handshake(e: std::io::Error) -> Refused {
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => Refused::NoCertificate,
            Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                Refused::UnknownCa
            }
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Refused::Expired,
            _ => Refused::Handshake(e),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoCertificate => f.write_str("TLS caller presented no client certificate"),
            Refused::UnknownCa => {
                f.write_str("TLS caller's certificate is not issued by client_ca")
            }
            Refused::Expired => f.write_str("TLS caller's certificate has expired"),
            Refused::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            Refused::Timeout(t) => write!(f, "TLS handshake not complete within {t:?}"),
            Refused::NoIdentity => {
                f.write_str("TLS caller's certificate has no URI or DNS subject alternative name")
            }
            Refused::NoGrant(id) => write!(f, "no grant names cert:{id}"),
        }
    }
}

/// [`bind`], if `tls_listen` is set.
pub async fn bind_opt(t: Option<&TlsListen>) -> Result<Option<Listeners>, VaultError> {
    match t {
        Some(t) => Ok(Some(bind(t).await?)),
        None => Ok(None),
    }
}

/// Binds every `tls_listen` address and reads the certificate, key and
/// client CA.
pub async fn bind(t: &TlsListen) -> Result<Listeners, VaultError> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(t)?));
    let mut listeners = Vec::with_capacity(t.addrs.len());
    for addr in &t.addrs {
        let l = super::listen::tcp(*addr).map_err(|source| VaultError::TlsListen {
            addr: *addr,
            source,
        })?;
        listeners.push(l);
    }
    Ok(Listeners {
        listeners,
        acceptor,
    })
}

impl Listeners {
    /// Starts listening on every address (once the vault can answer).
    pub fn listen(self) -> Result<Listening, VaultError> {
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for bound in self.listeners {
            let addr = bound.local_addr().map_err(|source| VaultError::TlsListen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            let l = bound
                .listen_tcp()
                .map_err(|source| VaultError::TlsListen { addr, source })?;
            tracing::info!(%addr, "vault listening for mutual TLS");
            listeners.push(l);
        }
        Ok(Listening {
            listeners,
            acceptor: self.acceptor,
        })
    }
}

/// The listeners, accepting.
pub struct Listening {
    listeners: Vec<TcpListener>,
    acceptor: TlsAcceptor,
}

impl Listening {
    /// Accepts on every listener; the tasks end with the returned guard.
    pub fn serve(self, shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
        self.listeners
            .into_iter()
            .map(|l| tokio::spawn(accept(l, self.acceptor.clone(), shared.clone())))
            .collect()
    }
}

fn server_config(t: &TlsListen) -> Result<ServerConfig, VaultError> {
    let file = |path: &std::path::Path, message: String| VaultError::TlsFiles {
        path: path.to_owned(),
        message,
    };
    let chain = crate::pki::read_pem_certs(&t.cert).map_err(|e| file(&t.cert, e.to_string()))?;
    let key = crate::pki::read_pem_key(&t.key).map_err(|e| file(&t.key, e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in
        crate::pki::read_pem_certs(&t.client_ca).map_err(|e| file(&t.client_ca, e.to_string()))?
    {
        roots
            .add(ca)
            .map_err(|e| file(&t.client_ca, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(crate::proxy::tls::provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| file(&t.client_ca, e.to_string()))?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| file(&t.cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            file(
                &t.key,
                format!("does not go with {}: {e}", t.cert.display()),
            )
        })
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin or die.
                tracing::warn!(error = %e, "TLS accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(1);
        // The handshake, like the rest of the connection, runs on a
        // connection worker: its cost is spread over the cores.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand over a connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared2 = shared.clone();
        shared.worker().spawn(async move {
            let vault = shared2.vault();
            let timeout = vault.settings().client_read_timeout;
            match handshake(std_stream, &acceptor, timeout).await {
                // Over the network a caller no grant names is not kept on
                // to be refused request by request: it is refused here,
                // once, and told why in a frame it can read.
                Ok((tls, identity)) if !vault.knows(&identity_caller(&identity, peer)) => {
                    let refused = Refused::NoGrant(identity);
                    refuse(vault, peer, &refused);
                    tell(tls, &refused).await;
                }
                Ok((tls, identity)) => {
                    let caller = identity_caller(&identity, peer);
                    shared2.serve(super::stream::tls(tls), caller).await;
                }
                Err(refused) => refuse(vault, peer, &refused),
            }
        });
    }
}

/// The handshake, within the read timeout, and the identity it proves.
async fn handshake(
    std_stream: std::net::TcpStream,
    acceptor: &TlsAcceptor,
    timeout: Duration,
) -> Result<(super::stream::Tls, String), Refused> {
    let stream = std_stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std_stream))
        .map_err(Refused::Handshake)?;
    // Answers are small and latency is the point.
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(Refused::from_handshake(e)),
        Err(_) => return Err(Refused::Timeout(timeout)),
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| crate::pki::san_identity(leaf))
        .ok_or(Refused::NoIdentity)?;
    Ok((tls, identity))
}

fn identity_caller(identity: &str, peer: SocketAddr) -> Caller {
    Caller::Remote(Remote {
        identity: Some(identity.into()),
        peer,
    })
}

/// A `denied` error (request id 0) saying why, then close_notify: what a
/// Unix caller past a connection limit is told, so a misconfigured proxy
/// logs the reason rather than "connection closed".
async fn tell(mut tls: super::stream::Tls, refused: &Refused) {
    use tokio::io::AsyncWriteExt;
    let mut buf = bytes::BytesMut::new();
    if crate::protocol::Response::error(crate::protocol::ErrorCode::Denied, refused.to_string())
        .to_frame(crate::protocol::Op::Ping, 0)
        .encode(&mut buf)
        .is_err()
    {
        return;
    }
    // A caller that does not read does not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tls.write_all(&buf).await?;
        tls.shutdown().await
    })
    .await;
}

fn refuse(vault: &Vault, peer: SocketAddr, refused: &Refused) {
    metrics::counter!("vaultgate_vault_tls_refused_total", "reason" => refused.reason())
        .increment(1);
    let identity = match refused {
        Refused::NoGrant(id) => Some(id.as_str().into()),
        _ => None,
    };
    vault.refused_connection(Event {
        caller: Some(Caller::Remote(Remote { identity, peer })),
        result: "denied",
        ..Event::system("connection-refused", Some(refused.to_string()))
    });
}
