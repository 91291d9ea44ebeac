//! Certificates made inside the vault with rcgen: CSRs signed by a vault
//! key, and certificates issued by a CA key held in the vault. rcgen signs
//! through [`VaultSigner`], so it never holds a copy of any private key.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, RemoteKeyPair,
    SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;

use super::keys::Material;
use crate::protocol::{scheme, KeyType};

/// Why a certificate or CSR could not be made. Names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0} keys cannot sign certificates")]
    NotSigning(KeyType),
    #[error("invalid name {name:?}: {message}")]
    Name { name: String, message: String },
    #[error("the {what} certificate does not parse")]
    Parse { what: &'static str },
    #[error("certificate generation failed: {0}")]
    Rcgen(String),
    #[error("a certificate needs at least one name (DNS name or IP address)")]
    NoNames,
    #[error("a certificate lifetime of {days} days: at most {MAX_LIFETIME_DAYS} (100 years)")]
    Lifetime { days: u64 },
    #[error("the CA key's certificate is not a CA certificate (basicConstraints CA:TRUE)")]
    IssuerNotCa,
    #[error("the CA's path length is 0: it may issue no CA certificates")]
    PathLenExhausted,
    #[error("a path length of {asked} under a CA whose own is {issuer}: at most {}", issuer - 1)]
    PathLenTooLong { asked: u8, issuer: u8 },
    #[error("a path length of {0} for a certificate that is not a CA's")]
    PathLenNotCa(u8),
    #[error("the CSR does not parse or its signature does not verify: {0}")]
    Csr(String),
    #[error("invalid URI {uri:?} for a subject alternative name: {message}")]
    Uri { uri: String, message: String },
}

/// Why a certificate chain cannot be bound to a key version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("certificate chain does not parse: {0}")]
    Pem(String),
    #[error("no certificate in the chain")]
    Empty,
    #[error("leaf certificate does not parse: {0}")]
    Leaf(String),
    #[error("the certificate's public key ({cert}) is not the key version's ({key})")]
    Mismatch { cert: String, key: String },
}

/// Checks that `chain_pem` (leaf first) parses and that its leaf carries
/// `material`'s public key: what binding a chain to a version requires.
pub fn check_chain(chain_pem: &str, material: &Material) -> Result<(), ChainError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ChainError::Pem(e.to_string()))?;
    let leaf = chain.first().ok_or(ChainError::Empty)?;
    let parsed =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| ChainError::Leaf(e.to_string()))?;
    let spki = parsed.subject_public_key_info();
    if material.spki() != spki.as_ref() {
        return Err(ChainError::Mismatch {
            cert: super::keys::spki_sha256(spki.as_ref()),
            key: super::keys::spki_sha256(material.spki()),
        });
    }
    Ok(())
}

/// The longest lifetime a certificate is issued for. Past it the dates
/// leave what X.509 (and `time`) can write.
pub const MAX_LIFETIME_DAYS: u32 = 36_500;

/// A vault key version as rcgen's signer.
struct VaultSigner {
    material: Arc<Material>,
    alg: &'static SignatureAlgorithm,
    scheme: u16,
}

impl RemoteKeyPair for VaultSigner {
    fn public_key(&self) -> &[u8] {
        self.material.public_key_bytes()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.material
            .sign(self.scheme, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn key_pair(material: &Arc<Material>) -> Result<KeyPair, IssueError> {
    let (alg, scheme) = match material.key_type() {
        KeyType::EcdsaP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, scheme::ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => (&rcgen::PKCS_ECDSA_P384_SHA384, scheme::ECDSA_P384_SHA384),
        KeyType::Ed25519 => (&rcgen::PKCS_ED25519, scheme::ED25519),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            (&rcgen::PKCS_RSA_SHA256, scheme::RSA_PKCS1_SHA256)
        }
        t @ KeyType::Aes256 => return Err(IssueError::NotSigning(t)),
    };
    KeyPair::from_remote(Box::new(VaultSigner {
        material: material.clone(),
        alg,
        scheme,
    }))
    .map_err(|e| IssueError::Rcgen(e.to_string()))
}

/// What to put in a certificate or CSR.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Names {
    /// DNS names and IP addresses (subjectAltName).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub common_name: Option<String>,
}

fn params(names: &Names) -> Result<CertificateParams, IssueError> {
    let mut p = CertificateParams::new(names.names.clone()).map_err(|e| IssueError::Name {
        name: names.names.join(","),
        message: e.to_string(),
    })?;
    let cn = names
        .common_name
        .clone()
        .or_else(|| names.names.first().cloned());
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    Ok(p)
}

/// A PKCS#10 request for `subject`, signed by it, PEM.
pub fn csr(subject: &Arc<Material>, names: &Names) -> Result<String, IssueError> {
    if names.names.is_empty() {
        return Err(IssueError::NoNames);
    }
    let kp = key_pair(subject)?;
    params(names)?
        .serialize_request(&kp)
        .and_then(|r| r.pem())
        .map_err(|e| IssueError::Rcgen(e.to_string()))
}

/// How to issue.
pub struct Issue<'a> {
    pub subject: &'a Arc<Material>,
    /// Names for the new certificate; `None` keeps those of `previous`.
    pub names: Option<Names>,
    /// The certificate being replaced (PEM chain, leaf first): its names
    /// and its lifetime are kept.
    pub previous: Option<&'a str>,
    /// Lifetime; `None` keeps the previous one, or 90 days (10 years for a CA).
    pub lifetime: Option<Duration>,
    /// The issuing CA's key and its chain (PEM, CA certificate first);
    /// `None` makes a self-signed certificate.
    pub ca: Option<(&'a Arc<Material>, &'a str)>,
    pub is_ca: bool,
    /// For a CA certificate: how many CA certificates may follow it in a
    /// path (basicConstraints pathLenConstraint). See [`ca_constraints`].
    pub path_len: Option<u8>,
}

/// The basicConstraints of a CA certificate: a self-signed one has the
/// path length asked for, or none; one issued by a CA has at most the
/// issuer's minus one (the issuer's without it: 0), so whoever may issue
/// CA certificates cannot make one freer than the CA they issue under.
/// An issuer at 0 issues none.
fn ca_constraints(
    issuer: Option<&IsCa>,
    asked: Option<u8>,
) -> Result<BasicConstraints, IssueError> {
    match issuer {
        None => Ok(asked.map_or(
            BasicConstraints::Unconstrained,
            BasicConstraints::Constrained,
        )),
        Some(IsCa::Ca(BasicConstraints::Unconstrained)) => {
            Ok(BasicConstraints::Constrained(asked.unwrap_or(0)))
        }
        Some(IsCa::Ca(BasicConstraints::Constrained(0))) => Err(IssueError::PathLenExhausted),
        Some(&IsCa::Ca(BasicConstraints::Constrained(issuer))) => match asked {
            Some(asked) if asked >= issuer => Err(IssueError::PathLenTooLong { asked, issuer }),
            asked => Ok(BasicConstraints::Constrained(asked.unwrap_or(issuer - 1))),
        },
        Some(IsCa::NoCa | IsCa::ExplicitNoCa) => Err(IssueError::IssuerNotCa),
    }
}

fn first_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, IssueError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or(IssueError::Parse { what })
}

/// Issues a certificate; returns the chain to serve (PEM: the new leaf,
/// then the CA's chain).
pub fn issue(req: Issue) -> Result<String, IssueError> {
    let rc = |e: rcgen::Error| IssueError::Rcgen(e.to_string());
    if let (Some(n), false) = (req.path_len, req.is_ca) {
        return Err(IssueError::PathLenNotCa(n));
    }
    // The issuer first: what it allows bounds what is made.
    let issuer = match req.ca {
        Some((ca_material, ca_chain)) => {
            let params = CertificateParams::from_ca_cert_der(&first_der(ca_chain, "CA")?)
                .map_err(|_| IssueError::Parse { what: "CA" })?;
            if !matches!(params.is_ca, IsCa::Ca(_)) {
                return Err(IssueError::IssuerNotCa);
            }
            Some((ca_material, ca_chain, params))
        }
        None => None,
    };
    let prev = match req.previous {
        Some(pem) => Some(
            CertificateParams::from_ca_cert_der(&first_der(pem, "previous")?)
                .map_err(|_| IssueError::Parse { what: "previous" })?,
        ),
        None => None,
    };
    let mut p = match (&req.names, &prev) {
        (Some(n), _) => params(n)?,
        (None, Some(prev)) => {
            let mut p = CertificateParams::default();
            p.subject_alt_names = prev.subject_alt_names.clone();
            p.distinguished_name = prev.distinguished_name.clone();
            p
        }
        (None, None) => return Err(IssueError::NoNames),
    };
    if p.subject_alt_names.is_empty() && !req.is_ca {
        return Err(IssueError::NoNames);
    }
    let lifetime = req.lifetime.unwrap_or_else(|| match &prev {
        Some(prev) => (prev.not_after - prev.not_before).unsigned_abs(),
        None if req.is_ca => Duration::from_secs(10 * 365 * 86400),
        None => Duration::from_secs(90 * 86400),
    });
    // Checked before any date is computed: an imported previous
    // certificate's lifetime is as untrusted as a requested one.
    let days = lifetime.as_secs() / 86400;
    if days > u64::from(MAX_LIFETIME_DAYS) {
        return Err(IssueError::Lifetime { days });
    }
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks slightly behind ours.
    p.not_before = now - Duration::from_secs(60);
    p.not_after = now + lifetime;
    p.serial_number = Some(serial()?.into());
    if req.is_ca {
        p.is_ca = IsCa::Ca(ca_constraints(
            issuer.as_ref().map(|(_, _, params)| &params.is_ca),
            req.path_len,
        )?);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        crate::pki::mark_not_ca(&mut p);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    }
    let subject = key_pair(req.subject)?;
    match issuer {
        None => Ok(p.self_signed(&subject).map_err(rc)?.pem()),
        Some((ca_material, ca_chain, ca_params)) => {
            let ca_key = key_pair(ca_material)?;
            let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
            // RFC 5280 4.2.1.1: certificates a CA issues name its key;
            // strict verifiers (Python's cryptography) insist.
            p.use_authority_key_identifier_extension = true;
            let leaf = p.signed_by(&subject, &ca_cert, &ca_key).map_err(rc)?;
            Ok(with_chain(leaf.pem(), ca_chain))
        }
    }
}

/// A certificate for a key held elsewhere, signed by a CA key held here.
pub struct Sign<'a> {
    /// PKCS#10, PEM: only its public key is used; its signature proves
    /// that whoever asks holds the private key.
    pub csr_pem: &'a str,
    /// URI subject alternative names (a SPIFFE id, the vault's `cert:`
    /// identity).
    pub uris: &'a [String],
    /// DNS names and IP addresses.
    pub names: &'a [String],
    pub lifetime: Duration,
    /// The issuing CA's key and its chain (PEM, CA certificate first).
    pub ca: (&'a Arc<Material>, &'a str),
}

/// Signs a client certificate (clientAuth, not a CA) for the CSR's key;
/// returns the leaf followed by the CA's chain, PEM. The names are the
/// caller's, never the CSR's: the one who may sign decides who it names.
pub fn sign_client(req: Sign) -> Result<String, IssueError> {
    let rc = |e: rcgen::Error| IssueError::Rcgen(e.to_string());
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(req.csr_pem)
        .map_err(|e| IssueError::Csr(e.to_string()))?;
    let mut p = params(&Names {
        names: req.names.to_vec(),
        common_name: req.uris.first().or(req.names.first()).cloned(),
    })?;
    for uri in req.uris {
        let ia5 = uri
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Uri {
                uri: uri.clone(),
                message: e.to_string(),
            })?;
        p.subject_alt_names.push(rcgen::SanType::URI(ia5));
    }
    if p.subject_alt_names.is_empty() {
        return Err(IssueError::NoNames);
    }
    let days = req.lifetime.as_secs() / 86400;
    if days > u64::from(MAX_LIFETIME_DAYS) {
        return Err(IssueError::Lifetime { days });
    }
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - Duration::from_secs(60);
    p.not_after = now + req.lifetime;
    p.serial_number = Some(serial()?.into());
    crate::pki::mark_not_ca(&mut p);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let (ca_material, ca_chain) = req.ca;
    let ca_params = CertificateParams::from_ca_cert_der(&first_der(ca_chain, "CA")?)
        .map_err(|_| IssueError::Parse { what: "CA" })?;
    if !matches!(ca_params.is_ca, IsCa::Ca(_)) {
        return Err(IssueError::IssuerNotCa);
    }
    let ca_key = key_pair(ca_material)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rc)?;
    csr.params = p;
    let leaf = csr.signed_by(&ca_cert, &ca_key).map_err(rc)?;
    Ok(with_chain(leaf.pem(), ca_chain))
}

/// A positive 128-bit serial number (RFC 5280 4.1.2.2: at most 20 octets).
fn serial() -> Result<Vec<u8>, IssueError> {
    let mut serial = super::keys::random_bytes(16).map_err(|e| IssueError::Rcgen(e.to_string()))?;
    serial[0] &= 0x7f;
    Ok(serial.to_vec())
}

fn with_chain(mut leaf: String, ca_chain: &str) -> String {
    if !leaf.ends_with('\n') {
        leaf.push('\n');
    }
    leaf.push_str(ca_chain);
    leaf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_ca_certificates_only_below_its_path_length() {
        let c = |issuer: Option<IsCa>, asked| ca_constraints(issuer.as_ref(), asked);
        let n = |n| Some(IsCa::Ca(BasicConstraints::Constrained(n)));
        let free = || Some(IsCa::Ca(BasicConstraints::Unconstrained));
        // self-signed: as asked
        assert_eq!(c(None, None).unwrap(), BasicConstraints::Unconstrained);
        assert_eq!(c(None, Some(3)).unwrap(), BasicConstraints::Constrained(3));
        // under a CA with no path length: 0 unless asked
        assert_eq!(c(free(), None).unwrap(), BasicConstraints::Constrained(0));
        assert_eq!(
            c(free(), Some(2)).unwrap(),
            BasicConstraints::Constrained(2)
        );
        // under a CA with one: at most one less
        assert_eq!(c(n(2), None).unwrap(), BasicConstraints::Constrained(1));
        assert_eq!(c(n(2), Some(0)).unwrap(), BasicConstraints::Constrained(0));
        assert!(matches!(
            c(n(2), Some(2)),
            Err(IssueError::PathLenTooLong {
                asked: 2,
                issuer: 2
            })
        ));
        assert!(matches!(c(n(0), None), Err(IssueError::PathLenExhausted)));
        assert!(matches!(
            c(Some(IsCa::NoCa), None),
            Err(IssueError::IssuerNotCa)
        ));
        assert!(matches!(
            c(Some(IsCa::ExplicitNoCa), None),
            Err(IssueError::IssuerNotCa)
        ));
    }
}
