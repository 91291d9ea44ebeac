//! Key material in memory: generation, PKCS#8 import, signing, verifying,
//! public keys and AES-256-GCM. The private bytes are kept only as
//! zeroize-on-drop PKCS#8 (or raw AES) plus the parsed key objects.
//!
//! Signing keys are aws-lc-rs's (ring's API, AWS-LC underneath, which
//! frees key memory with `OPENSSL_cleanse`): its RSA uses AVX-512 IFMA
//! where the CPU has it, 2.2 × ring's RSA-2048 signing rate on this
//! project's machines, and its P-256 is ~8 % faster (BENCHMARKS.md).
//! Verification, AES-GCM and randomness stay with ring.

use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature;
use zeroize::Zeroizing;

use crate::protocol::scheme;
use crate::protocol::KeyType;

/// Why a key operation failed. Each names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{key_type} keys cannot use signature scheme {}", scheme_name(*.scheme))]
    SchemeMismatch { key_type: KeyType, scheme: u16 },
    #[error("{0} keys cannot sign or verify")]
    NotSigning(KeyType),
    #[error("{0} keys sign whole messages, not digests")]
    NoDigestSigning(KeyType),
    #[error("a {} digest is {expected} bytes, not {got}", scheme_name(*.scheme))]
    DigestLength {
        scheme: u16,
        expected: usize,
        got: usize,
    },
    #[error("{0} keys cannot encrypt or decrypt")]
    NotSymmetric(KeyType),
    #[error("key generation failed for {0}")]
    Generate(KeyType),
    #[error("not a usable PKCS#8 private key: {0}")]
    Import(String),
    #[error("stored key material for {0} does not parse")]
    Material(KeyType),
    #[error("signing failed")]
    Sign,
    #[error("ciphertext failed authentication")]
    Open,
    #[error(
        "key {name:?} is at version {version}; a key has at most {max} versions: create a new key",
        max = super::record::MAX_VERSION
    )]
    VersionLimit { name: String, version: u32 },
}

fn scheme_name(code: u16) -> String {
    scheme::name(code).map_or_else(|| format!("{code:#06x}"), str::to_owned)
}

/// One version's private (or secret) key, parsed and ready to use.
pub struct Material {
    key_type: KeyType,
    /// PKCS#8 for signing keys, the raw 32 bytes for AES: what gets wrapped
    /// and stored.
    secret: Zeroizing<Vec<u8>>,
    inner: Inner,
    spki: Vec<u8>,
}

enum Inner {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
    // Boxed: the expanded AES key schedule is twice the size of the others.
    Aes(Box<ring::aead::LessSafeKey>),
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key bytes.
        write!(f, "Material({})", self.key_type)
    }
}

fn rng() -> &'static SystemRandom {
    static RNG: std::sync::OnceLock<SystemRandom> = std::sync::OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
}

/// The signing library's own generator (ECDSA nonces come from it).
fn signing_rng() -> &'static aws_lc_rs::rand::SystemRandom {
    static RNG: std::sync::OnceLock<aws_lc_rs::rand::SystemRandom> = std::sync::OnceLock::new();
    RNG.get_or_init(aws_lc_rs::rand::SystemRandom::new)
}

/// Readies the signing library's generator before the vault answers
/// anyone. AWS-LC seeds it from CPU jitter the first time the process
/// asks it for randomness: ~40–55 ms of CPU, once. Left to the first
/// signature (an ECDSA nonce, RSA-PSS salt or blinding), that cost falls
/// inside its caller's deadline (the proxy's is 100 ms), and on a busy
/// core it is all of it.
pub fn warm_up() {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    if signing_rng().fill(&mut seed).is_err() {
        tracing::error!("the signing library's random generator failed; signatures will fail");
    }
}

/// Fills a fresh buffer with `n` random bytes.
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    rng()
        .fill(&mut v)
        .map_err(|_| KeyError::Generate(KeyType::Aes256))?;
    Ok(v)
}

impl Material {
    /// Generates fresh material. RSA comes from the `rsa` crate and is then
    /// loaded for signing like an imported key.
    pub fn generate(key_type: KeyType) -> Result<Material, KeyError> {
        let err = || KeyError::Generate(key_type);
        let secret: Zeroizing<Vec<u8>> = match key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let alg = ecdsa_alg(key_type).ok_or_else(err)?;
                Zeroizing::new(
                    EcdsaKeyPair::generate_pkcs8(alg, signing_rng())
                        .map_err(|_| err())?
                        .as_ref()
                        .to_vec(),
                )
            }
            KeyType::Ed25519 => Zeroizing::new(
                Ed25519KeyPair::generate_pkcs8(signing_rng())
                    .map_err(|_| err())?
                    .as_ref()
                    .to_vec(),
            ),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                use rsa::pkcs8::EncodePrivateKey;
                let bits = key_type.rsa_bits().ok_or_else(err)?;
                let key =
                    rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).map_err(|_| err())?;
                let doc = key.to_pkcs8_der().map_err(|_| err())?;
                Zeroizing::new(doc.as_bytes().to_vec())
            }
            KeyType::Aes256 => random_bytes(32)?,
        };
        Material::from_secret(key_type, secret).map_err(|_| err())
    }

    /// Rebuilds material from its stored secret (PKCS#8 or raw AES key).
    pub fn from_secret(
        key_type: KeyType,
        secret: Zeroizing<Vec<u8>>,
    ) -> Result<Material, KeyError> {
        let bad = || KeyError::Material(key_type);
        let (inner, spki) = match key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let alg = ecdsa_alg(key_type).ok_or_else(bad)?;
                let pair = EcdsaKeyPair::from_pkcs8(alg, &secret).map_err(|_| bad())?;
                let spki = ec_spki(key_type, pair.public_key().as_ref());
                (Inner::Ecdsa(pair), spki)
            }
            KeyType::Ed25519 => {
                let pair =
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&secret).map_err(|_| bad())?;
                let spki = [ED25519_SPKI_PREFIX, pair.public_key().as_ref()].concat();
                (Inner::Ed25519(pair), spki)
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let pair = RsaKeyPair::from_pkcs8(&secret).map_err(|_| bad())?;
                if Some(pair.public_modulus_len() * 8) != key_type.rsa_bits() {
                    return Err(bad());
                }
                let spki = rsa_spki(pair.public_key().as_ref());
                (Inner::Rsa(pair), spki)
            }
            KeyType::Aes256 => {
                let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &secret)
                    .map_err(|_| bad())?;
                (
                    Inner::Aes(Box::new(ring::aead::LessSafeKey::new(unbound))),
                    Vec::new(),
                )
            }
        };
        Ok(Material {
            key_type,
            secret,
            inner,
            spki,
        })
    }

    /// Parses a PKCS#8 PEM private key and works out its type.
    pub fn import_pem(pem: &[u8]) -> Result<Material, KeyError> {
        let mut reader = pem;
        let der = loop {
            match rustls_pemfile::read_one(&mut reader) {
                Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => {
                    break Zeroizing::new(k.secret_pkcs8_der().to_vec())
                }
                Ok(Some(rustls_pemfile::Item::Pkcs1Key(_) | rustls_pemfile::Item::Sec1Key(_))) => {
                    return Err(KeyError::Import(
                        "key is PKCS#1/SEC1, not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt`".into(),
                    ))
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(KeyError::Import("no \"BEGIN PRIVATE KEY\" block found".into())),
                Err(e) => return Err(KeyError::Import(format!("PEM does not parse: {e:?}"))),
            }
        };
        for t in [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Ed25519,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
            KeyType::Rsa4096,
        ] {
            if let Ok(m) = Material::from_secret(t, der.clone()) {
                return Ok(m);
            }
        }
        Err(KeyError::Import(
            "unsupported key: expected ECDSA P-256/P-384, Ed25519 or RSA 2048/3072/4096".into(),
        ))
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The bytes that get wrapped for storage.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// SubjectPublicKeyInfo, DER; empty for AES keys.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// Signs `message` (the whole message; hashing is part of the scheme).
    pub fn sign(&self, scheme_code: u16, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mismatch = || KeyError::SchemeMismatch {
            key_type: self.key_type,
            scheme: scheme_code,
        };
        match &self.inner {
            Inner::Ecdsa(pair) => {
                if scheme_code != ecdsa_scheme(self.key_type) {
                    return Err(mismatch());
                }
                Ok(pair
                    .sign(signing_rng(), message)
                    .map_err(|_| KeyError::Sign)?
                    .as_ref()
                    .to_vec())
            }
            Inner::Ed25519(pair) => {
                if scheme_code != scheme::ED25519 {
                    return Err(mismatch());
                }
                Ok(pair.sign(message).as_ref().to_vec())
            }
            Inner::Rsa(pair) => {
                let enc = rsa_encoding(scheme_code).ok_or_else(mismatch)?;
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(enc, signing_rng(), message, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
            Inner::Aes(_) => Err(KeyError::NotSigning(self.key_type)),
        }
    }

    /// Signs a digest the caller computed with `scheme`'s hash function
    /// (KMS `MessageType=DIGEST`). The same key types and schemes as
    /// [`sign`](Self::sign), less Ed25519, which hashes inside the
    /// signature and so has no digest form.
    pub fn sign_digest(&self, scheme_code: u16, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        use aws_lc_rs::digest::{Digest, SHA256, SHA384, SHA512};
        let mismatch = || KeyError::SchemeMismatch {
            key_type: self.key_type,
            scheme: scheme_code,
        };
        let hash: &'static aws_lc_rs::digest::Algorithm = match scheme_code {
            scheme::ECDSA_P256_SHA256 | scheme::RSA_PKCS1_SHA256 | scheme::RSA_PSS_SHA256 => {
                &SHA256
            }
            scheme::ECDSA_P384_SHA384 | scheme::RSA_PKCS1_SHA384 | scheme::RSA_PSS_SHA384 => {
                &SHA384
            }
            scheme::RSA_PKCS1_SHA512 | scheme::RSA_PSS_SHA512 => &SHA512,
            _ if matches!(self.inner, Inner::Ed25519(_)) => {
                return Err(KeyError::NoDigestSigning(self.key_type))
            }
            _ => return Err(mismatch()),
        };
        let digest =
            Digest::import_less_safe(digest, hash).map_err(|_| KeyError::DigestLength {
                scheme: scheme_code,
                expected: hash.output_len(),
                got: digest.len(),
            })?;
        match &self.inner {
            Inner::Ecdsa(pair) => {
                if scheme_code != ecdsa_scheme(self.key_type) {
                    return Err(mismatch());
                }
                Ok(pair
                    .sign_digest(&digest)
                    .map_err(|_| KeyError::Sign)?
                    .as_ref()
                    .to_vec())
            }
            Inner::Rsa(pair) => {
                let enc = rsa_encoding(scheme_code).ok_or_else(mismatch)?;
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign_digest(enc, &digest, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
            Inner::Ed25519(_) => Err(KeyError::NoDigestSigning(self.key_type)),
            Inner::Aes(_) => Err(KeyError::NotSigning(self.key_type)),
        }
    }

    /// Checks a signature made by this key's public half.
    pub fn verify(&self, scheme_code: u16, message: &[u8], sig: &[u8]) -> Result<bool, KeyError> {
        let alg = verify_alg(self.key_type, scheme_code)?;
        let public = self.public_key_bytes();
        Ok(signature::UnparsedPublicKey::new(alg, public)
            .verify(message, sig)
            .is_ok())
    }

    /// The raw public key ring's verifiers take (point, RSAPublicKey, …).
    pub fn public_key_bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Ecdsa(p) => p.public_key().as_ref(),
            Inner::Ed25519(p) => p.public_key().as_ref(),
            Inner::Rsa(p) => p.public_key().as_ref(),
            Inner::Aes(_) => &[],
        }
    }

    /// AES-256-GCM seal: returns `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let Inner::Aes(key) = &self.inner else {
            return Err(KeyError::NotSymmetric(self.key_type));
        };
        seal_with(key, aad, plaintext)
    }

    /// Opens what [`seal`](Self::seal) made.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let Inner::Aes(key) = &self.inner else {
            return Err(KeyError::NotSymmetric(self.key_type));
        };
        open_with(key, aad, sealed)
    }
}

/// The one scheme an ECDSA key signs with: its curve's hash.
fn ecdsa_scheme(t: KeyType) -> u16 {
    match t {
        KeyType::EcdsaP256 => scheme::ECDSA_P256_SHA256,
        _ => scheme::ECDSA_P384_SHA384,
    }
}

/// AWS-LC's padding and hash for an RSA scheme.
fn rsa_encoding(scheme_code: u16) -> Option<&'static dyn aws_lc_rs::signature::RsaEncoding> {
    use aws_lc_rs::signature as aws;
    Some(match scheme_code {
        scheme::RSA_PKCS1_SHA256 => &aws::RSA_PKCS1_SHA256,
        scheme::RSA_PKCS1_SHA384 => &aws::RSA_PKCS1_SHA384,
        scheme::RSA_PKCS1_SHA512 => &aws::RSA_PKCS1_SHA512,
        scheme::RSA_PSS_SHA256 => &aws::RSA_PSS_SHA256,
        scheme::RSA_PSS_SHA384 => &aws::RSA_PSS_SHA384,
        scheme::RSA_PSS_SHA512 => &aws::RSA_PSS_SHA512,
        _ => return None,
    })
}

/// ring's verification algorithm for a key type and scheme.
pub fn verify_alg(
    key_type: KeyType,
    scheme_code: u16,
) -> Result<&'static dyn signature::VerificationAlgorithm, KeyError> {
    let mismatch = || KeyError::SchemeMismatch {
        key_type,
        scheme: scheme_code,
    };
    Ok(match (key_type, scheme_code) {
        (KeyType::EcdsaP256, scheme::ECDSA_P256_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyType::EcdsaP384, scheme::ECDSA_P384_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyType::Ed25519, scheme::ED25519) => &signature::ED25519,
        (KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096, s) => match s {
            scheme::RSA_PKCS1_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            scheme::RSA_PKCS1_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            scheme::RSA_PKCS1_SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            scheme::RSA_PSS_SHA256 => &signature::RSA_PSS_2048_8192_SHA256,
            scheme::RSA_PSS_SHA384 => &signature::RSA_PSS_2048_8192_SHA384,
            scheme::RSA_PSS_SHA512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return Err(mismatch()),
        },
        (KeyType::Aes256, _) => return Err(KeyError::NotSigning(key_type)),
        _ => return Err(mismatch()),
    })
}

/// AES-256-GCM with a random 96-bit nonce: `nonce || ciphertext || tag`.
pub fn seal_with(
    key: &ring::aead::LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; 12];
    rng().fill(&mut nonce).map_err(|_| KeyError::Sign)?;
    let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(aad),
        &mut body,
    )
    .map_err(|_| KeyError::Sign)?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn open_with(
    key: &ring::aead::LessSafeKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if sealed.len() < 12 + 16 {
        return Err(KeyError::Open);
    }
    let (nonce, body) = sealed.split_at(12);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Open)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let n = key
        .open_in_place(nonce, ring::aead::Aad::from(aad), &mut buf)
        .map_err(|_| KeyError::Open)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// An AES-256-GCM key from 32 bytes (derived subkeys).
pub fn aes_key(bytes: &[u8]) -> Result<ring::aead::LessSafeKey, KeyError> {
    ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, bytes)
        .map(ring::aead::LessSafeKey::new)
        .map_err(|_| KeyError::Material(KeyType::Aes256))
}

fn ecdsa_alg(t: KeyType) -> Option<&'static aws_lc_rs::signature::EcdsaSigningAlgorithm> {
    use aws_lc_rs::signature as aws;
    match t {
        KeyType::EcdsaP256 => Some(&aws::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyType::EcdsaP384 => Some(&aws::ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

// Fixed DER prefixes of SubjectPublicKeyInfo for the curve keys (RFC 5480,
// RFC 8410): SEQUENCE { AlgorithmIdentifier, BIT STRING { 0 unused bits, … } }.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P384_SPKI_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
// AlgorithmIdentifier { rsaEncryption, NULL }
const RSA_ALG_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn ec_spki(t: KeyType, point: &[u8]) -> Vec<u8> {
    let prefix = if t == KeyType::EcdsaP256 {
        P256_SPKI_PREFIX
    } else {
        P384_SPKI_PREFIX
    };
    [prefix, point].concat()
}

fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    let bit_string = der(0x03, &bits);
    der(0x30, &[RSA_ALG_ID, &bit_string].concat())
}

/// One DER TLV with a definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// PEM for a SubjectPublicKeyInfo.
pub fn spki_pem(spki: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// The key id users compare: SHA-256 of the SPKI, hex.
pub fn spki_sha256(spki: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, spki))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: KeyType, schemes: &[u16]) {
        let m = Material::generate(t).unwrap();
        assert_eq!(m.key_type(), t);
        // reload from the stored secret, as after a restart
        let m2 = Material::from_secret(t, Zeroizing::new(m.secret().to_vec())).unwrap();
        assert_eq!(m.spki(), m2.spki());
        for &s in schemes {
            let sig = m.sign(s, b"hello").unwrap();
            assert!(m2.verify(s, b"hello", &sig).unwrap(), "{t} {s:#x}");
            assert!(!m2.verify(s, b"hellO", &sig).unwrap());
            // the SPKI is what a certificate carries: verify through it too
            let alg = verify_alg(t, s).unwrap();
            let spki = webpki_public_key(m.spki());
            assert!(signature::UnparsedPublicKey::new(alg, spki)
                .verify(b"hello", &sig)
                .is_ok());
        }
        assert!(matches!(
            m.sign(0x0603, b"x"),
            Err(KeyError::SchemeMismatch { .. })
        ));
    }

    /// The subjectPublicKey bits out of a SPKI, parsed generically, to
    /// check our DER against an independent reading.
    fn webpki_public_key(spki: &[u8]) -> Vec<u8> {
        fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = b[0];
            let (len, hdr) = if b[1] < 0x80 {
                (b[1] as usize, 2)
            } else {
                let n = (b[1] & 0x7f) as usize;
                (
                    b[2..2 + n]
                        .iter()
                        .fold(0usize, |a, x| a * 256 + *x as usize),
                    2 + n,
                )
            };
            (tag, &b[hdr..hdr + len], &b[hdr + len..])
        }
        let (tag, seq, rest) = tlv(spki);
        assert_eq!((tag, rest.len()), (0x30, 0));
        let (_, _, after_alg) = tlv(seq);
        let (tag, bits, rest) = tlv(after_alg);
        assert_eq!((tag, bits[0], rest.len()), (0x03, 0, 0));
        bits[1..].to_vec()
    }

    #[test]
    fn keys_stored_by_earlier_versions_still_load_and_sign() {
        // Keystores written before signing moved to aws-lc-rs hold ring's
        // PKCS#8 documents.
        let rng = SystemRandom::new();
        let cases = [
            (
                KeyType::EcdsaP256,
                scheme::ECDSA_P256_SHA256,
                ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &rng,
                )
                .unwrap()
                .as_ref()
                .to_vec(),
            ),
            (
                KeyType::EcdsaP384,
                scheme::ECDSA_P384_SHA384,
                ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    &rng,
                )
                .unwrap()
                .as_ref()
                .to_vec(),
            ),
            (
                KeyType::Ed25519,
                scheme::ED25519,
                ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            ),
        ];
        for (t, s, pkcs8) in cases {
            let m = Material::from_secret(t, Zeroizing::new(pkcs8)).unwrap();
            let sig = m.sign(s, b"hello").unwrap();
            let spki = webpki_public_key(m.spki());
            assert!(
                signature::UnparsedPublicKey::new(verify_alg(t, s).unwrap(), spki)
                    .verify(b"hello", &sig)
                    .is_ok(),
                "{t}"
            );
        }
    }

    #[test]
    fn every_signing_type_signs_verifies_and_reloads() {
        roundtrip(KeyType::EcdsaP256, &[scheme::ECDSA_P256_SHA256]);
        roundtrip(KeyType::EcdsaP384, &[scheme::ECDSA_P384_SHA384]);
        roundtrip(KeyType::Ed25519, &[scheme::ED25519]);
        roundtrip(
            KeyType::Rsa2048,
            &[
                scheme::RSA_PKCS1_SHA256,
                scheme::RSA_PKCS1_SHA384,
                scheme::RSA_PKCS1_SHA512,
                scheme::RSA_PSS_SHA256,
                scheme::RSA_PSS_SHA384,
                scheme::RSA_PSS_SHA512,
            ],
        );
    }

    #[test]
    fn a_signed_digest_verifies_as_a_signature_of_its_message() {
        use ring::digest::{digest, SHA256, SHA384, SHA512};
        let hash = |s: u16, msg: &[u8]| match s {
            scheme::ECDSA_P256_SHA256 | scheme::RSA_PKCS1_SHA256 | scheme::RSA_PSS_SHA256 => {
                digest(&SHA256, msg)
            }
            scheme::ECDSA_P384_SHA384 | scheme::RSA_PKCS1_SHA384 | scheme::RSA_PSS_SHA384 => {
                digest(&SHA384, msg)
            }
            _ => digest(&SHA512, msg),
        };
        let p256 = Material::generate(KeyType::EcdsaP256).unwrap();
        let p384 = Material::generate(KeyType::EcdsaP384).unwrap();
        let rsa = Material::generate(KeyType::Rsa2048).unwrap();
        let cases = [
            (&p256, &[scheme::ECDSA_P256_SHA256][..]),
            (&p384, &[scheme::ECDSA_P384_SHA384][..]),
            (
                &rsa,
                &[
                    scheme::RSA_PKCS1_SHA256,
                    scheme::RSA_PKCS1_SHA384,
                    scheme::RSA_PKCS1_SHA512,
                    scheme::RSA_PSS_SHA256,
                    scheme::RSA_PSS_SHA384,
                    scheme::RSA_PSS_SHA512,
                ][..],
            ),
        ];
        for (m, schemes) in cases {
            for &s in schemes {
                let d = hash(s, b"hello");
                let sig = m.sign_digest(s, d.as_ref()).unwrap();
                assert!(
                    m.verify(s, b"hello", &sig).unwrap(),
                    "{} {s:#x}",
                    m.key_type()
                );
                let short = &d.as_ref()[1..];
                assert_eq!(
                    m.sign_digest(s, short),
                    Err(KeyError::DigestLength {
                        scheme: s,
                        expected: d.as_ref().len(),
                        got: short.len()
                    })
                );
            }
        }
        // PKCS#1 v1.5 is deterministic: the same bytes as signing the message
        let d = hash(scheme::RSA_PKCS1_SHA256, b"hello");
        assert_eq!(
            rsa.sign_digest(scheme::RSA_PKCS1_SHA256, d.as_ref())
                .unwrap(),
            rsa.sign(scheme::RSA_PKCS1_SHA256, b"hello").unwrap()
        );
        let ed = Material::generate(KeyType::Ed25519).unwrap();
        assert_eq!(
            ed.sign_digest(scheme::ED25519, &[0; 32]),
            Err(KeyError::NoDigestSigning(KeyType::Ed25519))
        );
        assert!(matches!(
            p256.sign_digest(scheme::ECDSA_P384_SHA384, &[0; 48]),
            Err(KeyError::SchemeMismatch { .. })
        ));
    }

    #[test]
    fn aes_seals_and_detects_tampering() {
        let m = Material::generate(KeyType::Aes256).unwrap();
        let sealed = m.seal(b"ctx", b"secret").unwrap();
        assert_eq!(&m.open(b"ctx", &sealed).unwrap()[..], b"secret");
        assert_eq!(m.open(b"other", &sealed), Err(KeyError::Open));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert_eq!(m.open(b"ctx", &bad), Err(KeyError::Open));
        assert!(matches!(
            m.sign(scheme::ED25519, b"x"),
            Err(KeyError::NotSigning(_))
        ));
    }

    #[test]
    fn import_detects_type_and_refuses_junk() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        let m = Material::import_pem(pem.as_bytes()).unwrap();
        assert_eq!(m.key_type(), KeyType::EcdsaP384);
        assert!(Material::import_pem(b"hello").is_err());
    }
}
