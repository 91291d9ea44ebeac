//! Where a vault is: a Unix socket on this host, or a `tls://` address
//! served over mutual TLS, and the client side of that TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// One vault endpoint of `[proxy] vaults`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// A host name or IP address, and a port.
    Tls {
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A path alone, as `vault_sockets` always said it.
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tls { host, port } if host.contains(':') => {
                write!(f, "tls://[{host}]:{port}")
            }
            Endpoint::Tls { host, port } => write!(f, "tls://{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// `unix:/path` or `tls://host:port` (`[v6]:port`); `None` if it is
    /// neither. A relative Unix path is left for the caller to resolve.
    pub fn parse(s: &str) -> Option<Endpoint> {
        if let Some(path) = s.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("tls://")?;
        let (host, port) = rest.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        ServerName::try_from(host).ok()?;
        Some(Endpoint::Tls {
            host: host.to_owned(),
            port,
        })
    }

    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tls { .. } => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Endpoint::Tls { .. })
    }
}

/// Why `[proxy.vault_tls]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{0}")]
    File(#[from] crate::pki::PkiError),
    #[error("{path}: not a usable CA certificate: {source}", path = .path.display())]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key} does not go with {cert}: {source}", key = .key.display(), cert = .cert.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The proxy's side of mutual TLS to its vaults: TLS 1.3 only, vault
/// certificates checked against `ca`, the proxy proving itself with
/// `cert` and `key` (files: this key authenticates the proxy to the
/// vault, so it cannot come from the vault).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    for c in crate::pki::read_pem_certs(ca)? {
        roots.add(c).map_err(|source| ClientTlsError::Ca {
            path: ca.to_owned(),
            source,
        })?;
    }
    let chain = crate::pki::read_pem_certs(cert)?;
    let private = crate::pki::read_pem_key(key)?;
    let identity = |source| ClientTlsError::Identity {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let config = ClientConfig::builder_with_provider(Arc::new(crate::proxy::tls::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(identity)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_by_scheme() {
        assert_eq!(
            Endpoint::parse("unix:/run/v.sock"),
            Some(Endpoint::Unix("/run/v.sock".into()))
        );
        let a = Endpoint::parse("tls://vault-a.internal:7700").unwrap();
        assert_eq!(a.to_string(), "tls://vault-a.internal:7700");
        let v6 = Endpoint::parse("tls://[::1]:7700").unwrap();
        assert_eq!(v6.to_string(), "tls://[::1]:7700");
        for bad in [
            "/run/v.sock",
            "unix:",
            "tls://h",
            "tls://h:0",
            "tls://h:x",
            "http://h:1",
            "tls://a b:1",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }
}
