//! The proxy's side of the vault: a pool ([`pool`]) of blocking,
//! pipelined vault connections ([`conn`]) to its endpoints, Unix sockets
//! or mutual TLS ([`endpoint`]), and rustls signing keys whose
//! signatures are made by the vault ([`key`]). No private key bytes ever
//! enter this process.

pub mod conn;
pub mod endpoint;
pub mod key;
pub mod pool;

pub use endpoint::Endpoint;
pub use key::VaultKey;
pub use pool::{PoolOptions, SocketState, VaultPool};

use std::time::Duration;

use crate::protocol::{ErrorCode, Op, ProtocolError};

/// Why the vault gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("no vault connection is up")]
    Unavailable,
    #[error("vault connection closed before answering")]
    Closed,
    #[error("vault did not answer {op} within {timeout:?}")]
    Timeout { op: Op, timeout: Duration },
    #[error("request of {0} bytes is too large for the vault protocol")]
    TooLarge(usize),
    #[error("bad answer from the vault: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("vault refused: {code}: {message}")]
    Vault { code: ErrorCode, message: String },
    #[error("vault key {key:?} has type {key_type}, which cannot sign TLS handshakes")]
    NotSigning { key: String, key_type: String },
    #[error("vault answered {0} with an unexpected response")]
    Unexpected(Op),
    #[error("vault key {key:?} has no version whose public key matches the certificate {cert}")]
    Mismatch { key: String, cert: String },
}

impl SignerError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SignerError::Unavailable => "unavailable",
            SignerError::Closed => "closed",
            SignerError::Timeout { .. } => "timeout",
            SignerError::TooLarge(_) => "too_large",
            SignerError::Protocol(_) | SignerError::Unexpected(_) => "protocol",
            SignerError::Vault { .. } => "refused",
            SignerError::NotSigning { .. } | SignerError::Mismatch { .. } => "key",
        }
    }
}
