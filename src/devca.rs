//! The dev CA of `vaultgate run` and the certificates it issues, made
//! with rcgen from outside the vault: the CA's private key stays in the
//! vault, and rcgen signs through [`RemoteKey`], which asks the vault over
//! the signer's connection pool. (Inside the vault, `cert-issue` does the
//! same without a round trip: `src/vault/issue.rs`.)

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, RemoteKeyPair, SignatureAlgorithm,
};
use rustls::SignatureScheme;

use crate::pki::{cert_spki, mark_not_ca, read_pem_certs, spki_key_bits, write_file, PkiError};
use crate::protocol::{ErrorCode, KeyType, Request};
use crate::signer::{key::public_key, SignerError, VaultKey, VaultPool};

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("vault: {0}")]
    Vault(#[from] SignerError),
    #[error("vault key {key:?} has type {key_type}, which cannot sign certificates")]
    Unsupported { key: String, key_type: KeyType },
    #[error("certificate generation for {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
}

fn algorithms(
    key: &str,
    key_type: KeyType,
) -> Result<(&'static SignatureAlgorithm, SignatureScheme), DevCaError> {
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
            return Err(DevCaError::Unsupported {
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
    pub fn load(pool: &VaultPool, name: &str) -> Result<RemoteKey, DevCaError> {
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

    pub fn into_key_pair(self) -> Result<KeyPair, DevCaError> {
        let name = self.key.name().to_owned();
        KeyPair::from_remote(Box::new(self))
            .map_err(|source| DevCaError::Rcgen { what: name, source })
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
pub fn ensure_key(pool: &VaultPool, name: &str, key_type: KeyType) -> Result<bool, DevCaError> {
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
) -> Result<(DevCa, bool), DevCaError> {
    ensure_key(pool, key_name, KeyType::EcdsaP256)?;
    let remote = RemoteKey::load(pool, key_name)?;
    let spki = remote.spki().to_vec();
    let key = remote.into_key_pair()?;
    let rcgen_err = |source| DevCaError::Rcgen {
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
) -> Result<String, DevCaError> {
    let (key_type, _, spki) = public_key(pool, key_name, None)?;
    let (alg, _) = algorithms(key_name, key_type)?;
    let public = VaultPublicKey {
        raw: spki_key_bits(&spki)?.to_vec(),
        alg,
    };
    let rcgen_err = |source| DevCaError::Rcgen {
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
