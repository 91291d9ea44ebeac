//! Signing mechanisms: which the token offers, what each takes in, which
//! vault request it becomes, and how the signature comes back.
//!
//! TLS stacks hash the transcript themselves and hand the module a digest
//! (CKM_ECDSA, CKM_RSA_PKCS_PSS) or a DigestInfo (CKM_RSA_PKCS); those go
//! to the vault's `sign-digest`. The hash-and-sign mechanisms hash here,
//! in the module, so a multi-part signature holds a hash state, not the
//! message. CKM_EDDSA (pure Ed25519) sends the message to `sign`. Raw RSA
//! (CKM_RSA_X_509, or CKM_RSA_PKCS over anything but a DigestInfo) is
//! never offered: it would sign arbitrary padded values.

use cryptoki_sys::*;
use ring::digest::{Algorithm, Context, SHA256, SHA384, SHA512};
use vaultgate::protocol::{scheme, KeyType, Request};

use crate::catalogue::VaultKey;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn alg(self) -> &'static Algorithm {
        match self {
            Hash::Sha256 => &SHA256,
            Hash::Sha384 => &SHA384,
            Hash::Sha512 => &SHA512,
        }
    }

    pub fn output_len(self) -> usize {
        self.alg().output_len()
    }

    fn from_ck(m: CK_MECHANISM_TYPE) -> Option<Hash> {
        match m {
            CKM_SHA256 => Some(Hash::Sha256),
            CKM_SHA384 => Some(Hash::Sha384),
            CKM_SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn mgf1(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Hash::Sha256 => CKG_MGF1_SHA256,
            Hash::Sha384 => CKG_MGF1_SHA384,
            Hash::Sha512 => CKG_MGF1_SHA512,
        }
    }

    fn pkcs1(self) -> u16 {
        match self {
            Hash::Sha256 => scheme::RSA_PKCS1_SHA256,
            Hash::Sha384 => scheme::RSA_PKCS1_SHA384,
            Hash::Sha512 => scheme::RSA_PKCS1_SHA512,
        }
    }

    fn pss(self) -> u16 {
        match self {
            Hash::Sha256 => scheme::RSA_PSS_SHA256,
            Hash::Sha384 => scheme::RSA_PSS_SHA384,
            Hash::Sha512 => scheme::RSA_PSS_SHA512,
        }
    }

    /// The DER DigestInfo prefix (RFC 8017 §9.2 note 1), NULL parameters.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

const ALL_HASHES: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

/// What a signing operation does with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CKM_ECDSA: the input is a hash, of any length (PKCS#11 semantics).
    Ecdsa,
    EcdsaHash(Hash),
    /// CKM_RSA_PKCS: the input is a DigestInfo.
    RsaPkcs,
    RsaPkcsHash(Hash),
    /// CKM_RSA_PKCS_PSS: the input is a digest of the parameters' hash.
    Pss(Hash),
    PssHash(Hash),
    EdDsa,
}

const EC: &[KeyType] = &[KeyType::EcdsaP256, KeyType::EcdsaP384];
const RSA: &[KeyType] = &[KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096];
const ED: &[KeyType] = &[KeyType::Ed25519];

/// Every mechanism the token offers: (type, key types, min and max key bits).
pub const MECHANISMS: &[(CK_MECHANISM_TYPE, &[KeyType], CK_ULONG, CK_ULONG)] = &[
    (CKM_ECDSA, EC, 256, 384),
    (CKM_ECDSA_SHA256, EC, 256, 384),
    (CKM_ECDSA_SHA384, EC, 256, 384),
    (CKM_ECDSA_SHA512, EC, 256, 384),
    (CKM_RSA_PKCS, RSA, 2048, 4096),
    (CKM_SHA256_RSA_PKCS, RSA, 2048, 4096),
    (CKM_SHA384_RSA_PKCS, RSA, 2048, 4096),
    (CKM_SHA512_RSA_PKCS, RSA, 2048, 4096),
    (CKM_RSA_PKCS_PSS, RSA, 2048, 4096),
    (CKM_SHA256_RSA_PKCS_PSS, RSA, 2048, 4096),
    (CKM_SHA384_RSA_PKCS_PSS, RSA, 2048, 4096),
    (CKM_SHA512_RSA_PKCS_PSS, RSA, 2048, 4096),
    (CKM_EDDSA, ED, 256, 256),
];

pub fn info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    let &(_, types, min, max) = MECHANISMS.iter().find(|(t, ..)| *t == m)?;
    let mut flags = CKF_SIGN;
    if types == EC {
        flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
    }
    Some(CK_MECHANISM_INFO {
        ulMinKeySize: min,
        ulMaxKeySize: max,
        flags,
    })
}

/// The mechanisms a key of `t` may be used with (CKA_ALLOWED_MECHANISMS).
pub fn allowed(t: KeyType) -> Vec<CK_MECHANISM_TYPE> {
    MECHANISMS
        .iter()
        .filter(|(_, types, ..)| types.contains(&t))
        .map(|(m, ..)| *m)
        .collect()
}

/// A mechanism's parameter, read out of the caller's memory by `ffi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    None,
    Pss {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        salt_len: CK_ULONG,
    },
    EdDsa {
        prehash: bool,
        context_len: CK_ULONG,
    },
    /// Present, but of a length no parameter of that mechanism has.
    Malformed,
}

/// Checks a mechanism and its parameter against a key.
pub fn kind(m: CK_MECHANISM_TYPE, param: Param, key: &VaultKey) -> Result<Kind> {
    let &(_, types, ..) = MECHANISMS
        .iter()
        .find(|(t, ..)| *t == m)
        .ok_or(Error::Rv(CKR_MECHANISM_INVALID))?;
    if !types.contains(&key.key_type) {
        return Err(Error::Rv(CKR_KEY_TYPE_INCONSISTENT));
    }
    let kind = match m {
        CKM_ECDSA => Kind::Ecdsa,
        CKM_ECDSA_SHA256 => Kind::EcdsaHash(Hash::Sha256),
        CKM_ECDSA_SHA384 => Kind::EcdsaHash(Hash::Sha384),
        CKM_ECDSA_SHA512 => Kind::EcdsaHash(Hash::Sha512),
        CKM_RSA_PKCS => Kind::RsaPkcs,
        CKM_SHA256_RSA_PKCS => Kind::RsaPkcsHash(Hash::Sha256),
        CKM_SHA384_RSA_PKCS => Kind::RsaPkcsHash(Hash::Sha384),
        CKM_SHA512_RSA_PKCS => Kind::RsaPkcsHash(Hash::Sha512),
        CKM_RSA_PKCS_PSS => Kind::Pss(pss_hash(param, None)?),
        CKM_SHA256_RSA_PKCS_PSS => Kind::PssHash(pss_hash(param, Some(Hash::Sha256))?),
        CKM_SHA384_RSA_PKCS_PSS => Kind::PssHash(pss_hash(param, Some(Hash::Sha384))?),
        CKM_SHA512_RSA_PKCS_PSS => Kind::PssHash(pss_hash(param, Some(Hash::Sha512))?),
        _ => {
            // Pure Ed25519 only: no prehash, no context (Ed25519ph/ctx are
            // other signatures the vault does not make).
            match param {
                Param::None
                | Param::EdDsa {
                    prehash: false,
                    context_len: 0,
                } => Kind::EdDsa,
                _ => return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID)),
            }
        }
    };
    if !matches!(kind, Kind::Pss(_) | Kind::PssHash(_) | Kind::EdDsa) && param != Param::None {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    Ok(kind)
}

/// The vault's PSS is the TLS one: MGF1 with the message hash, salt as
/// long as the hash. Other parameters are refused rather than signed
/// differently from what the caller asked.
fn pss_hash(param: Param, fixed: Option<Hash>) -> Result<Hash> {
    let invalid = Error::Rv(CKR_MECHANISM_PARAM_INVALID);
    let Param::Pss {
        hash,
        mgf,
        salt_len,
    } = param
    else {
        return Err(invalid);
    };
    let h = Hash::from_ck(hash).ok_or(Error::Rv(CKR_MECHANISM_PARAM_INVALID))?;
    if fixed.is_some_and(|f| f != h) || mgf != h.mgf1() || salt_len as usize != h.output_len() {
        return Err(invalid);
    }
    Ok(h)
}

/// Most input a signature buffers: what one vault frame can carry.
const MAX_INPUT: usize = 1 << 19;

/// A signing operation in progress on a session.
pub struct SignOp {
    pub key: std::sync::Arc<VaultKey>,
    pub kind: Kind,
    hasher: Option<Context>,
    data: Vec<u8>,
}

impl std::fmt::Debug for SignOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignOp({:?} with {})", self.kind, self.key.name)
    }
}

/// The request a signature becomes, and what to do with its answer.
pub struct Prepared {
    pub request: Request,
    /// ECDSA: the vault's DER becomes r‖s of this many bytes each.
    pub fixed_ecdsa: Option<usize>,
}

impl SignOp {
    pub fn new(key: std::sync::Arc<VaultKey>, kind: Kind) -> SignOp {
        let hasher = match kind {
            Kind::EcdsaHash(h) | Kind::RsaPkcsHash(h) | Kind::PssHash(h) => {
                Some(Context::new(h.alg()))
            }
            _ => None,
        };
        SignOp {
            key,
            kind,
            hasher,
            data: Vec::new(),
        }
    }

    pub fn update(&mut self, part: &[u8]) -> Result<()> {
        match &mut self.hasher {
            Some(h) => h.update(part),
            None => {
                if self.data.len() + part.len() > MAX_INPUT {
                    return Err(Error::Rv(CKR_DATA_LEN_RANGE));
                }
                self.data.extend_from_slice(part);
            }
        }
        Ok(())
    }

    /// The vault request for everything fed in so far.
    pub fn prepare(self) -> Result<Prepared> {
        let key = &self.key;
        let digest = self.hasher.map(|h| h.finish().as_ref().to_vec());
        let data = digest.unwrap_or(self.data);
        let field = match key.key_type {
            KeyType::EcdsaP384 => 48,
            _ => 32,
        };
        let ecdsa_scheme = match key.key_type {
            KeyType::EcdsaP384 => scheme::ECDSA_P384_SHA384,
            _ => scheme::ECDSA_P256_SHA256,
        };
        let (scheme_code, payload, fixed) = match self.kind {
            Kind::Ecdsa | Kind::EcdsaHash(_) => {
                (ecdsa_scheme, ecdsa_input(&data, field)?, Some(field))
            }
            Kind::RsaPkcs => {
                let (h, d) = parse_digest_info(&data)?;
                (h.pkcs1(), d.to_vec(), None)
            }
            Kind::RsaPkcsHash(h) => (h.pkcs1(), data, None),
            Kind::Pss(h) | Kind::PssHash(h) => {
                if data.len() != h.output_len() {
                    return Err(Error::Rv(CKR_DATA_LEN_RANGE));
                }
                (h.pss(), data, None)
            }
            Kind::EdDsa => {
                return Ok(Prepared {
                    request: Request::Sign {
                        key: key.name.clone(),
                        version: Some(key.version),
                        scheme: scheme::ED25519,
                        message: data,
                    },
                    fixed_ecdsa: None,
                })
            }
        };
        Ok(Prepared {
            request: Request::SignDigest {
                key: key.name.clone(),
                version: Some(key.version),
                scheme: scheme_code,
                digest: payload,
            },
            fixed_ecdsa: fixed,
        })
    }
}

/// CKM_ECDSA signs a hash of any length: ECDSA uses its leftmost bits up
/// to the order's size (FIPS 186-4 §6.4), and a shorter one is the same
/// integer left-padded with zeros. So a SHA-384 digest on a P-256 key (a
/// TLS 1.2 signature algorithm OpenSSL may pick) is its first 32 bytes.
/// Fewer than 20 bytes (SHA-1's) or more than 64 (SHA-512's) is no hash.
pub fn ecdsa_input(hash: &[u8], field: usize) -> Result<Vec<u8>> {
    if !(20..=64).contains(&hash.len()) {
        return Err(Error::Rv(CKR_DATA_LEN_RANGE));
    }
    let mut out = vec![0u8; field.saturating_sub(hash.len())];
    out.extend_from_slice(&hash[..hash.len().min(field)]);
    Ok(out)
}

/// The hash and digest of a DER DigestInfo, exactly as PKCS#1 v1.5 signs
/// it: the vault encodes the same bytes again, so any other encoding
/// (parameters absent, another hash) would be signed as something else
/// and is refused.
pub fn parse_digest_info(input: &[u8]) -> Result<(Hash, &[u8])> {
    for h in ALL_HASHES {
        let prefix = h.digest_info_prefix();
        if let Some(d) = input.strip_prefix(prefix) {
            if d.len() == h.output_len() {
                return Ok((h, d));
            }
        }
    }
    Err(Error::Rv(CKR_DATA_INVALID))
}

/// An ASN.1 DER ECDSA signature (what the vault and TLS use) as the
/// fixed-width r‖s PKCS#11 returns.
pub fn ecdsa_der_to_raw(der: &[u8], field: usize) -> Option<Vec<u8>> {
    fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = b.split_first()?;
        let (&len0, rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        let (len, rest) = match len0 {
            0..=0x7f => (len0 as usize, rest),
            0x81 => {
                let (&l, rest) = rest.split_first()?;
                (l as usize, rest)
            }
            _ => return None,
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let (seq, rest) = tlv(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (r, seq) = tlv(seq, 0x02)?;
    let (s, seq) = tlv(seq, 0x02)?;
    if !seq.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * field);
    for int in [r, s] {
        let skip = int.iter().take_while(|b| **b == 0).count();
        let int = &int[skip..];
        if int.len() > field {
            return None;
        }
        out.resize(out.len() + field - int.len(), 0);
        out.extend_from_slice(int);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{Public, P256_PARAMS};

    fn key(t: KeyType) -> VaultKey {
        VaultKey {
            name: "k".into(),
            id: vec![1; 16],
            key_type: t,
            version: 3,
            local: true,
            spki: Vec::new(),
            public: Public::Ec {
                params: P256_PARAMS,
                point: Vec::new(),
            },
            cert: None,
        }
    }

    #[test]
    fn ecdsa_takes_any_hash_length_as_the_standard_does() {
        assert_eq!(ecdsa_input(&[9; 32], 32).unwrap(), vec![9; 32]);
        let long: Vec<u8> = (0..48).collect();
        assert_eq!(ecdsa_input(&long, 32).unwrap(), long[..32].to_vec());
        let short = ecdsa_input(&[5; 20], 32).unwrap();
        assert_eq!((&short[..12], &short[12..]), (&[0; 12][..], &[5; 20][..]));
        assert!(ecdsa_input(&[1; 19], 32).is_err());
        assert!(ecdsa_input(&[1; 65], 48).is_err());
    }

    #[test]
    fn only_a_standard_digest_info_is_signed() {
        let mut di = Hash::Sha256.digest_info_prefix().to_vec();
        di.extend_from_slice(&[7; 32]);
        assert_eq!(
            parse_digest_info(&di).unwrap(),
            (Hash::Sha256, &[7u8; 32][..])
        );
        // a bare digest is raw RSA: refused
        assert!(parse_digest_info(&[7; 32]).is_err());
        di.push(0);
        assert!(parse_digest_info(&di).is_err());
    }

    #[test]
    fn der_signatures_become_fixed_width() {
        // r = 0x00ff (sign byte), s = 0x01
        let der = [0x30, 0x07, 0x02, 0x02, 0x00, 0xff, 0x02, 0x01, 0x01];
        let raw = ecdsa_der_to_raw(&der, 32).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!((raw[31], raw[63]), (0xff, 0x01));
        assert!(raw[..31].iter().chain(&raw[32..63]).all(|b| *b == 0));
        assert!(ecdsa_der_to_raw(&der[..8], 32).is_none());
        assert!(ecdsa_der_to_raw(&[0x30, 0x00, 0x00], 32).is_none());
    }

    #[test]
    fn pss_must_be_the_tls_kind() {
        let k = key(KeyType::Rsa2048);
        let ok = Param::Pss {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        };
        assert_eq!(
            kind(CKM_RSA_PKCS_PSS, ok, &k).unwrap(),
            Kind::Pss(Hash::Sha256)
        );
        let salt = Param::Pss {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: 20,
        };
        assert!(kind(CKM_RSA_PKCS_PSS, salt, &k).is_err());
        assert!(kind(CKM_SHA384_RSA_PKCS_PSS, ok, &k).is_err());
        assert!(kind(CKM_RSA_PKCS_PSS, Param::None, &k).is_err());
        assert!(kind(CKM_RSA_X_509, Param::None, &k).is_err());
        assert!(matches!(
            kind(CKM_ECDSA, Param::None, &k),
            Err(Error::Rv(CKR_KEY_TYPE_INCONSISTENT))
        ));
    }

    #[test]
    fn requests_carry_the_pinned_version() {
        let k = std::sync::Arc::new(key(KeyType::EcdsaP384));
        let mut op = SignOp::new(k, Kind::EcdsaHash(Hash::Sha256));
        op.update(b"hello").unwrap();
        let p = op.prepare().unwrap();
        assert_eq!(p.fixed_ecdsa, Some(48));
        let Request::SignDigest {
            version,
            scheme: s,
            digest,
            ..
        } = p.request
        else {
            panic!("not sign-digest");
        };
        assert_eq!(
            (version, s, digest.len()),
            (Some(3), scheme::ECDSA_P384_SHA384, 48)
        );
        // a 32-byte hash on P-384: left-padded
        assert_eq!(&digest[..16], &[0; 16]);
    }
}
