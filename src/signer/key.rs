//! rustls [`SigningKey`]s whose private half stays in the vault.
//!
//! Each key is pinned to the key version whose public key is in the
//! certificate it serves: after a rotation in the vault, handshakes keep
//! signing with the version that matches the certificate in use until the
//! certificate store is swapped.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::{SignerError, VaultPool};
use crate::protocol::{KeyType, Op, Request, Response};

/// Admin-style lookups (public keys) are not on the handshake path and get
/// a more forgiving timeout than signatures.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A vault key usable by rustls. Cheap to clone.
#[derive(Clone)]
pub struct VaultKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    name: String,
    version: u32,
    key_type: KeyType,
    spki: Vec<u8>,
    pool: VaultPool,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKey")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("key_type", &self.inner.key_type)
            .finish()
    }
}

/// The public half of a vault key version.
pub fn public_key(
    pool: &VaultPool,
    name: &str,
    version: Option<u32>,
) -> Result<(KeyType, u32, Vec<u8>), SignerError> {
    let req = Request::PublicKey {
        key: name.to_owned(),
        version,
    };
    match pool.call_with_timeout(&req, LOOKUP_TIMEOUT)? {
        Response::PublicKey {
            key_type,
            version,
            spki_der,
        } => Ok((key_type, version, spki_der)),
        _ => Err(SignerError::Unexpected(Op::PublicKey)),
    }
}

/// The certificate chain (PEM) bound in the vault to a key version, or
/// `None` when none is bound or the caller may not read it.
pub fn bound_chain(pool: &VaultPool, name: &str, version: u32) -> Option<String> {
    let req = Request::CertGet {
        key: name.to_owned(),
        version: Some(version),
    };
    match pool.call_with_timeout(&req, LOOKUP_TIMEOUT) {
        Ok(Response::Certificate { chain_pem, .. }) => Some(chain_pem),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(key = name, version, error = %e, "no certificate bound in the vault");
            None
        }
    }
}

impl VaultKey {
    /// Looks the key up in the vault. With `cert_spki`, pins the newest
    /// version whose public key is that one (searching back from the
    /// primary); without, pins the primary.
    pub fn load(
        pool: &VaultPool,
        name: &str,
        cert_spki: Option<&[u8]>,
        cert_label: &str,
    ) -> Result<VaultKey, SignerError> {
        let primary = public_key(pool, name, None)?;
        VaultKey::load_from(pool, name, primary, cert_spki, cert_label)
    }

    /// [`VaultKey::load`] for a caller that already asked the vault for
    /// the primary version's `(type, version, spki)`.
    pub fn load_from(
        pool: &VaultPool,
        name: &str,
        (key_type, primary, spki): (KeyType, u32, Vec<u8>),
        cert_spki: Option<&[u8]>,
        cert_label: &str,
    ) -> Result<VaultKey, SignerError> {
        let (version, spki) = match cert_spki {
            Some(want) if want != spki.as_slice() => {
                let mut found = None;
                for v in (1..primary).rev() {
                    match public_key(pool, name, Some(v)) {
                        Ok((_, v, s)) if s == want => {
                            found = Some((v, s));
                            break;
                        }
                        // Retired or missing versions are skipped, not fatal.
                        Ok(_) | Err(SignerError::Vault { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                found.ok_or_else(|| SignerError::Mismatch {
                    key: name.to_owned(),
                    cert: cert_label.to_owned(),
                })?
            }
            _ => (primary, spki),
        };
        if schemes(key_type).is_empty() {
            return Err(SignerError::NotSigning {
                key: name.to_owned(),
                key_type: key_type.to_string(),
            });
        }
        Ok(VaultKey {
            inner: Arc::new(KeyInner {
                name: name.to_owned(),
                version,
                key_type,
                spki,
                pool: pool.clone(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn version(&self) -> u32 {
        self.inner.version
    }

    pub fn key_type(&self) -> KeyType {
        self.inner.key_type
    }

    pub fn spki(&self) -> &[u8] {
        &self.inner.spki
    }

    /// One signature outside any handshake, with the lookup timeout, so
    /// that the first handshakes do not pay on their sign deadline for
    /// what a first signature costs once: the vault's first use of the
    /// key and of the connection's thread, this process's first trip
    /// through the pool. Also says at start, rather than at the first
    /// handshake, when the vault will not sign with this key for us.
    pub fn warm_up(&self) -> Result<(), SignerError> {
        let k = &self.inner;
        let scheme = schemes(k.key_type)
            .first()
            .ok_or_else(|| SignerError::NotSigning {
                key: k.name.clone(),
                key_type: k.key_type.to_string(),
            })?;
        let req = Request::Sign {
            key: k.name.clone(),
            version: Some(k.version),
            scheme: u16::from(*scheme),
            message: WARM_UP_MESSAGE.to_vec(),
        };
        match k.pool.call_with_timeout(&req, LOOKUP_TIMEOUT)? {
            Response::Signature { .. } => Ok(()),
            _ => Err(SignerError::Unexpected(Op::Sign)),
        }
    }

    /// Whether the vault can be asked to sign now (see
    /// [`VaultPool::is_available`]).
    pub fn is_available(&self) -> bool {
        self.inner.pool.is_available()
    }

    /// Whether this key can make one of the `offered` signatures, the
    /// vault's state aside (for choosing a certificate).
    pub fn can_sign(&self, offered: &[SignatureScheme]) -> bool {
        schemes(self.inner.key_type)
            .iter()
            .any(|s| offered.contains(s))
    }

    /// Signs `message` with `scheme` (the vault hashes), blocking the
    /// calling thread as described in [`super::pool`].
    pub fn sign_blocking(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, SignerError> {
        let k = &self.inner;
        let req = Request::Sign {
            key: k.name.clone(),
            version: Some(k.version),
            scheme: u16::from(scheme),
            message: message.to_vec(),
        };
        match k.pool.call(&req)? {
            Response::Signature { signature, .. } => Ok(signature),
            _ => Err(SignerError::Unexpected(Op::Sign)),
        }
    }
}

/// What [`VaultKey::warm_up`] signs: no TLS handshake signs these bytes
/// (TLS 1.3 prefixes 64 spaces and a context string; TLS 1.2 signs two
/// randoms and the key share), so the signature is good for nothing else.
const WARM_UP_MESSAGE: &[u8] = b"vaultgate proxy: signing path warm-up";

/// The TLS schemes a key type can sign, best first.
pub fn schemes(key_type: KeyType) -> &'static [SignatureScheme] {
    match key_type {
        KeyType::EcdsaP256 => &[SignatureScheme::ECDSA_NISTP256_SHA256],
        KeyType::EcdsaP384 => &[SignatureScheme::ECDSA_NISTP384_SHA384],
        KeyType::Ed25519 => &[SignatureScheme::ED25519],
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &[
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ],
        KeyType::Aes256 => &[],
    }
}

/// The rustls algorithm family of a key type.
pub fn algorithm(key_type: KeyType) -> SignatureAlgorithm {
    match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => SignatureAlgorithm::ECDSA,
        KeyType::Ed25519 => SignatureAlgorithm::ED25519,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => SignatureAlgorithm::RSA,
        KeyType::Aes256 => SignatureAlgorithm::Unknown(0),
    }
}

impl SigningKey for VaultKey {
    /// rustls asks for a signer only for a full handshake, just before it
    /// signs. Without a vault connection there is none to give: rustls
    /// then ends a TLS 1.3 handshake with a `handshake_failure` alert at
    /// once (TLS 1.2: it closes). A signature that fails later would end
    /// it with no alert at all.
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if !self.is_available() {
            metrics::counter!("vaultgate_proxy_vault_errors_total", "reason" => "unavailable")
                .increment(1);
            tracing::warn!(key = %self.name(), "no vault connection; refusing the handshake");
            return None;
        }
        schemes(self.inner.key_type)
            .iter()
            .find(|s| offered.contains(s))
            .map(|&scheme| {
                Box::new(VaultSigner {
                    key: self.clone(),
                    scheme,
                }) as Box<dyn Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.inner.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        algorithm(self.inner.key_type)
    }
}

#[derive(Debug)]
struct VaultSigner {
    key: VaultKey,
    scheme: SignatureScheme,
}

impl Signer for VaultSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let start = Instant::now();
        let result = self.key.sign_blocking(self.scheme, message);
        let elapsed = start.elapsed().as_secs_f64();
        match result {
            Ok(sig) => {
                metrics::histogram!("vaultgate_proxy_sign_seconds", "result" => "ok")
                    .record(elapsed);
                Ok(sig)
            }
            Err(e) => {
                metrics::histogram!("vaultgate_proxy_sign_seconds", "result" => "error")
                    .record(elapsed);
                metrics::counter!("vaultgate_proxy_vault_errors_total", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(key = %self.key.name(), version = self.key.version(), error = %e, "vault signature failed; failing the handshake");
                // Typed, so the handshake's failure can be told apart
                // from rustls's own by downcasting, not by its text.
                Err(rustls::Error::Other(rustls::OtherError(
                    std::sync::Arc::new(e),
                )))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
