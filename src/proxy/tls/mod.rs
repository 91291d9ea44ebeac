//! TLS termination: the certificate store ([`store`]), the SNI/algorithm
//! resolver ([`resolver`]), session tickets ([`tickets`]), resumption that
//! a withdrawn key ends ([`resumption`]) and the rustls server config
//! (versions, AEAD suites, ALPN, resumption).

pub mod resolver;
pub mod resumption;
pub mod store;
pub mod tickets;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

use crate::config::proxy::{ProxySettings, TlsVersion};
use crate::pki::PkiError;
use crate::signer::SignerError;

pub use store::CertStore;

/// Why a `file:` key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileKeyError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no private key in PEM file")]
    NoKey,
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{at}: certificate: {source}")]
    Cert { at: String, source: PkiError },
    #[error("{at}: key file {path}: {source}", path = .path.display())]
    FileKey {
        at: String,
        path: PathBuf,
        source: FileKeyError,
    },
    #[error("{at}: {}", vault_text(key, source))]
    Vault {
        at: String,
        key: String,
        source: SignerError,
    },
    #[error("{at}: key {key} does not match the public key of certificate {cert}")]
    Mismatch {
        at: String,
        cert: String,
        key: String,
    },
    #[error("vault key {key:?} is configured but no vault socket is usable: {}", sockets_text(.sockets))]
    NoVault {
        key: String,
        sockets: Vec<crate::signer::SocketState>,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("[proxy.vault_tls]: {0}")]
    VaultTls(crate::signer::endpoint::ClientTlsError),
}

fn sockets_text(sockets: &[crate::signer::SocketState]) -> String {
    if sockets.is_empty() {
        return "none is configured".into();
    }
    sockets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The key named once: some signer errors name it themselves.
fn vault_text(key: &str, source: &SignerError) -> String {
    match source {
        SignerError::NotSigning { .. } | SignerError::Mismatch { .. } => source.to_string(),
        _ => format!("vault key {key:?}: {source}"),
    }
}

/// The server's suites, in its order of preference: Mozilla
/// "intermediate"'s, AES-128-GCM with SHA-256 first. Both are cheaper
/// than AES-256-GCM with SHA-384 (10 AES rounds instead of 14, and the
/// handshake's transcript hash and key schedule run on the SHA extensions
/// where the CPU has them, which SHA-384 never does): the server's CPU per
/// full ECDSA handshake falls by 11–17 % (`cargo bench --bench
/// proxy_handshake -- server_cpu`). ChaCha20-Poly1305 stays for clients
/// that offer nothing else. All AEAD; rustls has no TLS 1.0/1.1 at all.
const SUITES: &[rustls::SupportedCipherSuite] = {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    &[
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// The proxy's crypto provider: aws-lc-rs (rustls's default) with the
/// suites in our order. Measured against ring on this project's machines
/// (BENCHMARKS.md): X25519 key generation plus agreement 33 against 61 µs,
/// which every full and resumed handshake pays, RSA-2048 signing for
/// `file:` keys 2.2 × as fast. Key exchange groups are the provider's
/// defaults: X25519, P-256, P-384, then the X25519+ML-KEM-768 hybrid; a
/// client that sent an X25519 share gets X25519, the cheapest.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        cipher_suites: SUITES.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Pays before the first handshake what it would otherwise pay: AWS-LC
/// seeds its generator from CPU jitter the first time the process asks
/// for randomness (~40–55 ms of CPU, once; the first key share would
/// ask), and each key exchange group runs for the first time.
pub fn warm_up(provider: &rustls::crypto::CryptoProvider) {
    let mut seed = [0u8; 32];
    if provider.secure_random.fill(&mut seed).is_err() {
        tracing::error!("the TLS library's random generator failed; handshakes will fail");
    }
    for group in provider.kx_groups.iter() {
        // Only the work matters; the key share is thrown away.
        drop(group.start());
    }
}

/// The server config. Certificates come from `store` at each handshake,
/// so swapping the store needs no new config; sessions resume only within
/// `epoch` (see [`resumption`]).
pub fn server_config(
    settings: &ProxySettings,
    store: Arc<ArcSwap<CertStore>>,
    epoch: &resumption::Epoch,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider());
    warm_up(&provider);
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_tls_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver::Resolver::new(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's suite order (see `SUITES`) decides, not the client's.
    // All of them are strong, so either would be safe, but scanners
    // (testssl: "NOT a cipher order configured", HIGH) and audits expect a
    // server order.
    cfg.ignore_client_order = true;
    // Resumption skips the vault entirely: tickets (TLS 1.3, and 1.2
    // clients that ask) with keys rotated every `ticket_rotation`, plus a
    // session-id cache for TLS 1.2 clients without tickets. Both end
    // with the epoch, when a served key is withdrawn.
    cfg.session_storage = match settings.session_cache_size {
        0 => Arc::new(rustls::server::NoServerSessionStorage {}),
        n => Arc::new(resumption::Sessions::new(
            ServerSessionMemoryCache::new(n),
            epoch.clone(),
        )),
    };
    if settings.session_tickets {
        cfg.ticketer = Arc::new(resumption::Tickets::new(
            tickets::rotating(settings.ticket_rotation)?,
            epoch.clone(),
        ));
    } else {
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}
