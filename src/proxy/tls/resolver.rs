//! Picks the certificate for a handshake: by SNI from the live store, then
//! by what the client can verify (ECDSA preferred, RSA for clients that
//! only do RSA).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, SignatureAlgorithm};

use super::store::{CertStore, Entry};

#[derive(Debug)]
pub struct Resolver {
    store: Arc<ArcSwap<CertStore>>,
}

impl Resolver {
    pub fn new(store: Arc<ArcSwap<CertStore>>) -> Resolver {
        Resolver { store }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let store = self.store.load();
        let candidates = store.lookup(sni.as_deref());
        let chosen = choose(candidates, hello.signature_schemes(), hello.cipher_suites());
        if chosen.is_none() {
            // Counted once, by the connection, when the handshake fails
            // ("incompatible", or "no_certificate" when the name has none).
            tracing::debug!(sni = ?sni, "no certificate the client can use");
            // Offer the name's first certificate anyway: rustls then fails
            // the handshake with handshake_failure (no common suite or
            // signature scheme), the alert clients and scanners expect,
            // rather than the access_denied a missing certificate gives.
            return candidates.first().map(|e| e.certified.clone());
        }
        chosen
    }
}

/// The first candidate whose key can sign one of the client's schemes and,
/// for TLS 1.2-only clients, whose algorithm one of its suites uses.
pub fn choose(
    candidates: &[Entry],
    schemes: &[rustls::SignatureScheme],
    suites: &[CipherSuite],
) -> Option<Arc<CertifiedKey>> {
    let tls13 = suites.iter().any(|s| tls13_suite(*s));
    candidates
        .iter()
        .find(|e| {
            let suite_ok = tls13
                || suites
                    .iter()
                    .any(|s| tls12_suite_alg(*s) == Some(e.algorithm));
            // A vault key is chosen by what it can sign, whether or not
            // the vault answers now: a resumed handshake needs no signature.
            let can_sign = match &e.vault {
                Some(k) => k.can_sign(schemes),
                None => e.certified.key.choose_scheme(schemes).is_some(),
            };
            suite_ok && can_sign
        })
        .map(|e| e.certified.clone())
}

fn tls13_suite(s: CipherSuite) -> bool {
    matches!(
        s,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

fn tls12_suite_alg(s: CipherSuite) -> Option<SignatureAlgorithm> {
    match s {
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            Some(SignatureAlgorithm::ECDSA)
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(SignatureAlgorithm::RSA),
        _ => None,
    }
}
