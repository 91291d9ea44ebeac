//! Certificate files and the few DER walks the proxy and the vault need
//! (a certificate's public key, its expiry), with no vault client in it:
//! the vault process uses it too. Certificates made through the vault from
//! outside it (the dev CA of `vaultgate run`) are [`crate::devca`]'s.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, IsCa};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("malformed DER in {what}")]
    Der { what: &'static str },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no certificate in PEM file", path = .path.display())]
    NoCert { path: PathBuf },
    #[error("{path}: no private key in PEM file", path = .path.display())]
    NoKey { path: PathBuf },
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

/// Reads the (first) private key of a PEM file: PKCS#8, PKCS#1 or SEC1.
pub fn read_pem_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let data = std::fs::read(path).map_err(io)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(io)?
        .ok_or_else(|| PkiError::NoKey {
            path: path.to_owned(),
        })
}

/// The identity a client certificate (DER) names: its first URI subject
/// alternative name (a SPIFFE id, say), else its first DNS name.
pub fn san_identity(cert_der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
    };
    uri.or_else(dns).map(str::to_owned)
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
    use rcgen::KeyPair;

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
