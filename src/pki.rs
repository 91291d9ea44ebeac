//! Certificates for vault-held keys (rcgen): the dev CA of `vaultgate run`,
//! leaf certificates signed by it, and the few DER walks the proxy needs
//! (a certificate's public key). The CA's private key stays in the vault:
//! rcgen signs through [`RemoteKey`], which asks the vault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, RemoteKeyPair, SignatureAlgorithm,
};
use rustls::SignatureScheme;

use crate::protocol::{ErrorCode, KeyType, Request};
use crate::signer::{key::public_key, SignerError, VaultKey, VaultPool};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("malformed DER in {what}")]
    Der { what: &'static str },
    #[error("vault: {0}")]
    Vault(#[from] SignerError),
    #[error("vault key {key:?} has type {key_type}, which cannot sign certificates")]
    Unsupported { key: String, key_type: KeyType },
    #[error("certificate generation for {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no certificate in PEM file", path = .path.display())]
    NoCert { path: PathBuf },
}

// ---- DER ----

/// One DER element split off the front of some input.
struct Tlv<'a> {
    tag: u8,
    /// The whole element, header included.
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// Splits one DER TLV off `input`.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Tlv {
        tag,
        whole: &input[..header + len],
        contents: &rest[..len],
        rest: &rest[len..],
    })
}

/// The SubjectPublicKeyInfo (whole DER TLV) of an X.509 certificate.
pub fn cert_spki(cert_der: &[u8]) -> Result<&[u8], PkiError> {
    let bad = || PkiError::Der {
        what: "certificate",
    };
    let seq = |input| tlv(input).filter(|t| t.tag == 0x30).ok_or_else(bad);
    let tbs = seq(seq(cert_der)?.contents)?;
    let mut fields = tbs.contents;
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    if fields.first() == Some(&0xa0) {
        fields = tlv(fields).ok_or_else(bad)?.rest;
    }
    for _ in 0..5 {
        fields = tlv(fields).ok_or_else(bad)?.rest;
    }
    Ok(seq(fields)?.whole)
}

/// The subject public key bits of an SPKI (what rcgen calls the raw public key).
pub fn spki_key_bits(spki: &[u8]) -> Result<&[u8], PkiError> {
    let bad = || PkiError::Der { what: "public key" };
    let outer = tlv(spki).filter(|t| t.tag == 0x30).ok_or_else(bad)?;
    let algorithm = tlv(outer.contents).ok_or_else(bad)?;
    let bits = tlv(algorithm.rest)
        .filter(|t| t.tag == 0x03)
        .ok_or_else(bad)?;
    match bits.contents.split_first() {
        Some((0, key)) => Ok(key),
        _ => Err(bad()),
    }
}

/// Reads the certificates of a PEM file, leaf first.
pub fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let data = std::fs::read(path).map_err(io)?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    if certs.is_empty() {
        return Err(PkiError::NoCert {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// When a certificate (DER) stops being valid, as Unix seconds.
pub fn cert_not_after(cert_der: &[u8]) -> Result<i64, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| PkiError::Der {
        what: "certificate",
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// Seconds until the leaf of the PEM file at `path` expires (negative:
/// expired).
pub fn seconds_to_expiry(path: &Path) -> Result<i64, PkiError> {
    let certs = read_pem_certs(path)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(cert_not_after(&certs[0])? - now)
}

// ---- keys in the vault, as rcgen keys ----

fn algorithms(
    key: &str,
    key_type: KeyType,
) -> Result<(&'static SignatureAlgorithm, SignatureScheme), PkiError> {
    Ok(match key_type {
        KeyType::EcdsaP256 => (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ),
        KeyType::EcdsaP384 => (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            SignatureScheme::ECDSA_NISTP384_SHA384,
        ),
        KeyType::Ed25519 => (&rcgen::PKCS_ED25519, SignatureScheme::ED25519),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            (&rcgen::PKCS_RSA_SHA256, SignatureScheme::RSA_PKCS1_SHA256)
        }
        KeyType::Aes256 => {
            return Err(PkiError::Unsupported {
                key: key.to_owned(),
                key_type,
            })
        }
    })
}

/// A vault key as an rcgen signing key: `sign` is a vault call.
pub struct RemoteKey {
    key: VaultKey,
    raw_public: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    scheme: SignatureScheme,
}

impl RemoteKey {
    pub fn load(pool: &VaultPool, name: &str) -> Result<RemoteKey, PkiError> {
        let key = VaultKey::load(pool, name, None, "-")?;
        let (alg, scheme) = algorithms(name, key.key_type())?;
        let raw_public = spki_key_bits(key.spki())?.to_vec();
        Ok(RemoteKey {
            key,
            raw_public,
            alg,
            scheme,
        })
    }

    pub fn spki(&self) -> &[u8] {
        self.key.spki()
    }

    pub fn into_key_pair(self) -> Result<KeyPair, PkiError> {
        let name = self.key.name().to_owned();
        KeyPair::from_remote(Box::new(self))
            .map_err(|source| PkiError::Rcgen { what: name, source })
    }
}

impl RemoteKeyPair for RemoteKey {
    fn public_key(&self) -> &[u8] {
        &self.raw_public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign_blocking(self.scheme, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Creates `name` in the vault unless it exists.
pub fn ensure_key(pool: &VaultPool, name: &str, key_type: KeyType) -> Result<bool, PkiError> {
    match public_key(pool, name, None) {
        Ok(_) => Ok(false),
        Err(SignerError::Vault {
            code: ErrorCode::NotFound,
            ..
        }) => {
            let req = Request::Create {
                key: name.to_owned(),
                key_type,
                rotate_every: None,
            };
            // Key generation (RSA especially) is slow: not a handshake budget.
            pool.call_with_timeout(&req, Duration::from_secs(120))?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

// ---- the dev CA ----

/// The dev CA: its certificate and its (remote) key.
pub struct DevCa {
    pub cert: Certificate,
    pub key: KeyPair,
}

fn ca_params(validity: Duration) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // Leaves name their issuer by this DN: it must not change between runs.
    dn.push(DnType::CommonName, "vaultgate dev CA");
    dn.push(DnType::OrganizationName, "vaultgate");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::days(3650));
    p
}

/// Loads the dev CA, creating its vault key and certificate file as
/// needed. If the file on disk is for another key (the vault state was
/// reset), it is replaced. Returns the CA and whether the file was written.
pub fn ensure_dev_ca(
    pool: &VaultPool,
    key_name: &str,
    path: &Path,
) -> Result<(DevCa, bool), PkiError> {
    ensure_key(pool, key_name, KeyType::EcdsaP256)?;
    let remote = RemoteKey::load(pool, key_name)?;
    let spki = remote.spki().to_vec();
    let key = remote.into_key_pair()?;
    let rcgen_err = |source| PkiError::Rcgen {
        what: "the dev CA".into(),
        source,
    };
    // The certificate object is rebuilt from the fixed parameters: rcgen
    // uses only its name and key to sign leaves, which match the file.
    let cert = ca_params(Duration::from_secs(10 * 365 * 24 * 3600))
        .self_signed(&key)
        .map_err(rcgen_err)?;
    let on_disk_matches = match read_pem_certs(path) {
        Ok(certs) => cert_spki(&certs[0]).is_ok_and(|s| s == spki.as_slice()),
        Err(_) => false,
    };
    if on_disk_matches {
        return Ok((DevCa { cert, key }, false));
    }
    write_file(path, cert.pem().as_bytes())?;
    Ok((DevCa { cert, key }, true))
}

/// The public half of a vault key, as rcgen wants it for a certificate.
struct VaultPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for VaultPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.alg
    }
}

/// Issues a server certificate for the vault key `key_name` (its primary
/// version) with `names` (DNS names or IP addresses), signed by `ca`.
/// Returns the PEM.
pub fn issue_leaf(
    ca: &DevCa,
    pool: &VaultPool,
    key_name: &str,
    names: &[String],
    validity: Duration,
) -> Result<String, PkiError> {
    let (key_type, _, spki) = public_key(pool, key_name, None)?;
    let (alg, _) = algorithms(key_name, key_type)?;
    let public = VaultPublicKey {
        raw: spki_key_bits(&spki)?.to_vec(),
        alg,
    };
    let rcgen_err = |source| PkiError::Rcgen {
        what: format!("certificate for {names:?}"),
        source,
    };
    let mut p = CertificateParams::new(names.to_vec()).map_err(rcgen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    p.distinguished_name = dn;
    mark_not_ca(&mut p);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if key_type.rsa_bits().is_some() {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let serial: [u8; 16] = rand::random();
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::days(90));
    let cert = p.signed_by(&public, &ca.cert, &ca.key).map_err(rcgen_err)?;
    Ok(cert.pem())
}

/// Writes a public file (certificates only) via a temp file and rename.
pub fn write_file(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Marks a leaf certificate "not a CA": a critical basicConstraints with
/// cA left out (it defaults to FALSE). rcgen's `IsCa::ExplicitNoCa` writes
/// cA=FALSE explicitly, which DER forbids (X.690 11.5) and strict parsers
/// (Python's cryptography, so sslyze) refuse.
pub fn mark_not_ca(p: &mut CertificateParams) {
    p.is_ca = IsCa::NoCa;
    let mut bc = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    bc.set_criticality(true);
    p.custom_extensions.push(bc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_public_key_of_a_certificate() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let spki = cert_spki(cert.der()).unwrap();
        assert_eq!(spki, key.public_key_der().as_slice());
        assert_eq!(spki_key_bits(spki).unwrap(), key.public_key_raw());
        for n in 0..cert.der().len() {
            assert!(cert_spki(&cert.der()[..n]).is_err(), "prefix {n}");
        }
    }
}
