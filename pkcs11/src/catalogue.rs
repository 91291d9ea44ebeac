//! The token's objects: what the vault lets this process's uid use, read
//! from the vault, with identifiers that never change.
//!
//! Each enabled signing key appears at the version that was primary when
//! it was read, as a private key, a public key and (if the vault binds
//! one to that version) a certificate, all with `CKA_ID` = the vault's key
//! id and `CKA_LABEL` = the key name. An object's handle is derived from
//! the key id, the version and the class, so every process and every
//! re-initialisation gives the same object the same handle (libp11 and
//! pkcs11-provider keep handles across a fork), and a new version is a
//! new object.
//!
//! Rotation never pulls a key from under a running server: a search
//! re-reads the vault only in the process that read it first, or in a
//! child whose parent has exited (so an nginx or Apache master, detached
//! from the process that first loaded the keys, sees a new version on
//! reload), while a forked child whose parent lives (a worker) keeps what
//! its parent read, and so signs with the version whose certificate its
//! parent loaded. Objects of versions a later search no
//! longer returns keep their handles and keep signing (through the vault's
//! signing grace); they are only left out of new searches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cryptoki_sys::*;
use serde::Deserialize;
use vaultgate::protocol::{KeyType, Op, Request, Response};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::client;
use crate::config::Config;
use crate::error::{Error, KeyProblem, Result};
use crate::fork;
use crate::log;

/// DER of the named-curve OIDs (CKA_EC_PARAMS).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// id-Ed25519 (RFC 8410), the form PKCS#11 3.1 prefers for CKA_EC_PARAMS.
pub const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The public half, in the forms the attributes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Public {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// `point` is the raw point (04‖X‖Y, or the 32 Ed25519 bytes).
    Ec {
        params: &'static [u8],
        point: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub der: Vec<u8>,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    /// DER INTEGER, tag and length included (CKA_SERIAL_NUMBER).
    pub serial: Vec<u8>,
}

/// One vault key at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKey {
    pub name: String,
    /// The vault's key id, 16 bytes: CKA_ID.
    pub id: Vec<u8>,
    pub key_type: KeyType,
    pub version: u32,
    /// Generated in the vault (CKA_LOCAL), not imported.
    pub local: bool,
    pub spki: Vec<u8>,
    pub public: Public,
    pub cert: Option<Certificate>,
}

impl VaultKey {
    pub fn key_type_ck(&self) -> CK_KEY_TYPE {
        match self.key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => CKK_EC,
            KeyType::Ed25519 => CKK_EC_EDWARDS,
            _ => CKK_RSA,
        }
    }

    /// Bytes of a signature: what `C_Sign` answers a length query with.
    pub fn signature_len(&self) -> usize {
        match (&self.public, self.key_type) {
            (_, KeyType::EcdsaP256) => 64,
            (_, KeyType::EcdsaP384) => 96,
            (_, KeyType::Ed25519) => 64,
            (Public::Rsa { modulus, .. }, _) => modulus.len(),
            (Public::Ec { .. }, _) => 0,
        }
    }

    pub fn modulus_bits(&self) -> usize {
        match &self.public {
            Public::Rsa { modulus, .. } => {
                let lead = modulus.first().map_or(8, |b| b.leading_zeros() as usize);
                modulus.len() * 8 - lead
            }
            Public::Ec { .. } => match self.key_type {
                KeyType::EcdsaP384 => 384,
                KeyType::Ed25519 => 255,
                _ => 256,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Private,
    Public,
    Certificate,
}

impl Class {
    pub fn ck(self) -> CK_OBJECT_CLASS {
        match self {
            Class::Private => CKO_PRIVATE_KEY,
            Class::Public => CKO_PUBLIC_KEY,
            Class::Certificate => CKO_CERTIFICATE,
        }
    }

    fn low_bits(self) -> u64 {
        match self {
            Class::Private => 1,
            Class::Public => 2,
            Class::Certificate => 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Object {
    pub class: Class,
    pub key: Arc<VaultKey>,
}

/// The handle of `class` for key `id` at `version`: the same in every
/// process, never 0 (CK_INVALID_HANDLE), below 2^50 (some bindings keep
/// handles in a double or a signed long).
pub fn handle(id: &[u8], version: u32, class: Class) -> CK_OBJECT_HANDLE {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"vaultgate pkcs11 object\0");
    ctx.update(id);
    ctx.update(&version.to_be_bytes());
    let d = ctx.finish();
    let mut six = [0u8; 8];
    six[2..].copy_from_slice(&d.as_ref()[..6]);
    ((u64::from_be_bytes(six) << 2) | class.low_bits()) as CK_OBJECT_HANDLE
}

/// Every object this process lineage has seen, and which of them a
/// search finds now.
#[derive(Debug)]
pub struct Catalogue {
    /// The fork generation it was read in; `None`: never read.
    pub read_in: Option<u64>,
    objects: BTreeMap<CK_OBJECT_HANDLE, Object>,
    current: BTreeSet<CK_OBJECT_HANDLE>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::new()
    }
}

impl Catalogue {
    pub const fn new() -> Catalogue {
        Catalogue {
            read_in: None,
            objects: BTreeMap::new(),
            current: BTreeSet::new(),
        }
    }

    pub fn get(&self, h: CK_OBJECT_HANDLE) -> Option<&Object> {
        self.objects.get(&h)
    }

    /// The objects a search sees, in handle order.
    pub fn current(&self) -> impl Iterator<Item = (CK_OBJECT_HANDLE, &Object)> {
        self.current
            .iter()
            .filter_map(|h| self.objects.get(h).map(|o| (*h, o)))
    }

    /// Whether a search in fork generation `gen` reads the vault again
    /// (see the module doc), or uses what an ancestor read.
    pub fn stale(&self, gen: u64) -> bool {
        self.read_in.is_none_or(|g| g == gen) || fork::parent_gone()
    }

    /// Takes in what the vault answered now, read in fork generation `gen`.
    pub fn merge(&mut self, keys: Vec<VaultKey>, gen: u64) {
        self.read_in = Some(gen);
        self.current.clear();
        for key in keys {
            let key = Arc::new(key);
            let mut classes = vec![Class::Private, Class::Public];
            if key.cert.is_some() {
                classes.push(Class::Certificate);
            }
            for class in classes {
                let h = handle(&key.id, key.version, class);
                self.objects.insert(
                    h,
                    Object {
                        class,
                        key: key.clone(),
                    },
                );
                self.current.insert(h);
            }
        }
    }
}

#[derive(Deserialize)]
struct ListEntry {
    name: String,
    #[serde(rename = "type")]
    key_type: Option<String>,
    state: String,
    primary: Option<u32>,
}

#[derive(Deserialize)]
struct Describe {
    id: String,
    versions: Vec<DescribeVersion>,
}

#[derive(Deserialize)]
struct DescribeVersion {
    version: u32,
    origin: Option<String>,
    #[serde(default)]
    certificate: bool,
}

/// Reads the keys this process's uid may use: list, then describe and
/// public key of each (pipelined), then the certificates that exist. A key
/// the vault refuses or answers oddly for is left out, with a log line.
pub fn read(config: &Config) -> Result<Vec<VaultKey>> {
    let entries: Vec<ListEntry> = match one(config, Request::List)? {
        Response::Json { json } => {
            serde_json::from_str(&json).map_err(|e| Error::key("*", KeyProblem::List(e)))?
        }
        Response::Error { code, message } => {
            // A uid without a list grant: no objects at all.
            log::note(&Error::Refused {
                op: Op::List,
                key: "*".into(),
                code,
                message,
            });
            return Ok(Vec::new());
        }
        _ => {
            return Err(Error::Unexpected {
                op: Op::List,
                key: "*".into(),
            })
        }
    };
    let usable: Vec<(String, KeyType, u32)> = entries
        .into_iter()
        .filter(|e| e.state == "enabled" && config.shows(&e.name))
        .filter_map(|e| {
            let t = KeyType::from_name(e.key_type.as_deref()?)?;
            Some((e.name, t, e.primary?)).filter(|_| t.is_signing())
        })
        .collect();
    let mut asks = Vec::with_capacity(usable.len() * 2);
    for (name, _, version) in &usable {
        asks.push(Request::Describe { key: name.clone() });
        asks.push(Request::PublicKey {
            key: name.clone(),
            version: Some(*version),
        });
    }
    let answers = client::exchange(config, &asks)?;
    let mut keys = Vec::with_capacity(usable.len());
    for ((name, key_type, version), pair) in usable.into_iter().zip(answers.chunks(2)) {
        match build(&name, key_type, version, &pair[0], &pair[1]) {
            Ok(k) => keys.push(k),
            Err(e) => log::note(&e),
        }
    }
    let wanted: Vec<usize> = (0..keys.len())
        .filter(|&i| keys[i].cert.is_some())
        .collect();
    let asks: Vec<Request> = wanted
        .iter()
        .map(|&i| Request::CertGet {
            key: keys[i].name.clone(),
            version: Some(keys[i].version),
        })
        .collect();
    let answers = if asks.is_empty() {
        Vec::new()
    } else {
        client::exchange(config, &asks)?
    };
    for (&i, answer) in wanted.iter().zip(answers) {
        let k = &mut keys[i];
        k.cert = match certificate(k, answer) {
            Ok(c) => Some(c),
            Err(e) => {
                log::note(&e);
                None
            }
        };
    }
    Ok(keys)
}

fn one(config: &Config, req: Request) -> Result<Response> {
    client::exchange(config, std::slice::from_ref(&req))?
        .pop()
        .ok_or(Error::Unexpected {
            op: req.op(),
            key: req.key().unwrap_or("*").to_owned(),
        })
}

fn refused(op: Op, key: &str, answer: &Response) -> Error {
    match answer {
        Response::Error { code, message } => Error::Refused {
            op,
            key: key.to_owned(),
            code: *code,
            message: message.clone(),
        },
        _ => Error::Unexpected {
            op,
            key: key.to_owned(),
        },
    }
}

/// A key from its describe and public-key answers. The certificate is a
/// placeholder until it is fetched: `Some` means "the vault has one".
fn build(
    name: &str,
    key_type: KeyType,
    version: u32,
    describe: &Response,
    public: &Response,
) -> Result<VaultKey> {
    let Response::Json { json } = describe else {
        return Err(refused(Op::Describe, name, describe));
    };
    let d: Describe =
        serde_json::from_str(json).map_err(|e| Error::key(name, KeyProblem::Describe(e)))?;
    let id = hex::decode(&d.id).map_err(|_| Error::key(name, KeyProblem::Id(d.id.clone())))?;
    let v = d
        .versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| Error::key(name, KeyProblem::NoVersion(version)))?;
    let Response::PublicKey {
        key_type: answered,
        version: got,
        spki_der,
    } = public
    else {
        return Err(refused(Op::PublicKey, name, public));
    };
    if *answered != key_type || *got != version {
        return Err(Error::key(
            name,
            KeyProblem::PublicMismatch {
                answered: *answered,
                got: *got,
                wanted: key_type,
                version,
            },
        ));
    }
    Ok(VaultKey {
        name: name.to_owned(),
        id,
        key_type,
        version,
        local: v.origin.as_deref() == Some("generated"),
        public: public_parts(name, key_type, spki_der)?,
        spki: spki_der.clone(),
        cert: v.certificate.then(|| Certificate {
            der: Vec::new(),
            subject: Vec::new(),
            issuer: Vec::new(),
            serial: Vec::new(),
        }),
    })
}

/// Modulus and exponent, or curve and point, out of a SubjectPublicKeyInfo.
pub fn public_parts(name: &str, key_type: KeyType, spki: &[u8]) -> Result<Public> {
    let (_, info) = SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| Error::key(name, KeyProblem::Spki(x509_error(e))))?;
    let bits = info.subject_public_key.data.to_vec();
    match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => Ok(Public::Ec {
            params: if key_type == KeyType::EcdsaP256 {
                P256_PARAMS
            } else {
                P384_PARAMS
            },
            point: bits,
        }),
        KeyType::Ed25519 => Ok(Public::Ec {
            params: ED25519_PARAMS,
            point: bits,
        }),
        _ => match info.parsed() {
            Ok(PublicKey::RSA(rsa)) => Ok(Public::Rsa {
                modulus: strip_zeros(rsa.modulus),
                exponent: strip_zeros(rsa.exponent),
            }),
            _ => Err(Error::key(name, KeyProblem::NotRsa)),
        },
    }
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let skip = b
        .iter()
        .take_while(|x| **x == 0)
        .count()
        .min(b.len().saturating_sub(1));
    b[skip..].to_vec()
}

/// The leaf of the chain the vault binds to the key's version.
fn certificate(key: &VaultKey, answer: Response) -> Result<Certificate> {
    let Response::Certificate { chain_pem, .. } = &answer else {
        return Err(refused(Op::CertGet, &key.name, &answer));
    };
    let leaf = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| Error::key(&key.name, KeyProblem::NoCertificate))?
        .map_err(|e| Error::key(&key.name, KeyProblem::CertificatePem(e)))?;
    let (_, cert) = X509Certificate::from_der(&leaf.contents)
        .map_err(|e| Error::key(&key.name, KeyProblem::Certificate(x509_error(e))))?;
    let raw = cert.raw_serial();
    let mut serial = vec![0x02];
    push_der_len(&mut serial, raw.len());
    serial.extend_from_slice(raw);
    Ok(Certificate {
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        serial,
        der: leaf.contents,
    })
}

/// The error inside a parser's answer (an incomplete input is malformed
/// too: the whole DER is there).
fn x509_error(
    e: x509_parser::nom::Err<x509_parser::error::X509Error>,
) -> x509_parser::error::X509Error {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => x509_parser::error::X509Error::InvalidCertificate,
    }
}

/// A DER definite length.
pub fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: u32) -> VaultKey {
        VaultKey {
            name: "web".into(),
            id: vec![7; 16],
            key_type: KeyType::EcdsaP256,
            version,
            local: true,
            spki: Vec::new(),
            public: Public::Ec {
                params: P256_PARAMS,
                point: vec![4; 65],
            },
            cert: None,
        }
    }

    #[test]
    fn handles_are_stable_distinct_and_never_zero() {
        let a = handle(&[1; 16], 1, Class::Private);
        assert_eq!(a, handle(&[1; 16], 1, Class::Private));
        assert_ne!(a, handle(&[1; 16], 2, Class::Private));
        assert_ne!(a, handle(&[1; 16], 1, Class::Public));
        assert_ne!(a, handle(&[2; 16], 1, Class::Private));
        for class in [Class::Private, Class::Public, Class::Certificate] {
            let h = handle(&[0; 16], 0, class);
            assert!(h != 0 && (h as u64) < 1 << 50);
        }
    }

    #[test]
    fn a_new_version_is_found_and_the_old_one_keeps_its_handle() {
        let mut c = Catalogue::new();
        c.merge(vec![key(1)], 0);
        let old = handle(&[7; 16], 1, Class::Private);
        assert_eq!(c.current().count(), 2);
        c.merge(vec![key(2)], 0);
        let found: Vec<_> = c.current().map(|(h, _)| h).collect();
        assert!(!found.contains(&old));
        assert!(found.contains(&handle(&[7; 16], 2, Class::Private)));
        assert_eq!(c.get(old).map(|o| o.key.version), Some(1));
    }

    #[test]
    fn rsa_parts_lose_their_sign_byte() {
        assert_eq!(strip_zeros(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(strip_zeros(&[0]), vec![0]);
        let mut k = key(1);
        k.key_type = KeyType::Rsa2048;
        k.public = Public::Rsa {
            modulus: vec![0xff; 256],
            exponent: vec![1, 0, 1],
        };
        assert_eq!(k.modulus_bits(), 2048);
        assert_eq!(k.signature_len(), 256);
    }
}
