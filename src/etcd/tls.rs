//! The etcd client's TLS: the CA that signs the members' certificates,
//! and optionally this node's client certificate (etcd's
//! `--client-cert-auth`). Read once at connect; rustls (ring) underneath.

use std::path::Path;

use etcd_client::{Certificate, Identity, TlsOptions};

use super::error::EtcdError;
use super::EtcdConfig;

fn read(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::Tls {
        path: path.to_owned(),
        source,
    })
}

/// `None` when no TLS file is configured (plain http endpoints).
pub(crate) fn options(config: &EtcdConfig) -> Result<Option<TlsOptions>, EtcdError> {
    let identity = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
        (Some(_), None) => {
            return Err(EtcdError::TlsIncomplete {
                given: "tls_cert",
                missing: "tls_key",
            })
        }
        (None, Some(_)) => {
            return Err(EtcdError::TlsIncomplete {
                given: "tls_key",
                missing: "tls_cert",
            })
        }
        (None, None) => None,
    };
    if config.tls_ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    let mut options = TlsOptions::new();
    if let Some(ca) = &config.tls_ca {
        options = options.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(identity) = identity {
        options = options.identity(identity);
    }
    Ok(Some(options))
}
