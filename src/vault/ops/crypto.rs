//! The use of keys: signatures, public keys, envelope encryption.

use super::{now, Done, Named, OpError, Vault};
use crate::protocol::Op;
use crate::protocol::{ErrorCode, Response};
use crate::vault::envelope;
use crate::vault::keys::{self, KeyError, Material};
use crate::vault::policy::Caller;

/// `Material::sign` or `Material::sign_digest`.
type SignWith = fn(&Material, u16, &[u8]) -> Result<Vec<u8>, KeyError>;

/// Largest plaintext `encrypt` takes (KMS takes 4 KiB; we allow 64 KiB).
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// Largest data key `generate-data-key` makes.
pub const MAX_DATA_KEY: u32 = 1024;

impl Vault {
    /// `sign` and `sign-digest`: the same key, state, version and grace
    /// checks, then `how` signs the message or the digest.
    pub(super) fn sign(
        &self,
        name: &str,
        version: Option<u32>,
        scheme: u16,
        input: &[u8],
        how: SignWith,
    ) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        if v != key.record.primary {
            let retire_at = key.record.version(v).and_then(|r| r.retire_at);
            if retire_at.is_some_and(|t| t <= now()) {
                return Err(OpError::new(
                    ErrorCode::VersionRetired,
                    format!("key {name:?} version {v} is retired and no longer signs"),
                ));
            }
        }
        let signature = how(m, scheme, input)?;
        Ok(Done::new(Response::Signature {
            version: v,
            signature,
        })
        .key(name, Some(v)))
    }

    pub(super) fn verify(
        &self,
        name: &str,
        version: Option<u32>,
        scheme: u16,
        message: &[u8],
        signature: &[u8],
    ) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        let valid = m.verify(scheme, message, signature)?;
        Ok(Done::new(Response::Verified { valid }).key(name, Some(v)))
    }

    pub(super) fn public_key(&self, name: &str, version: Option<u32>) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        if !key.key_type().is_signing() {
            return Err(KeyError::NotSigning(key.key_type()).into());
        }
        let (v, m) = Self::version(&key, version)?;
        Ok(Done::new(Response::PublicKey {
            key_type: key.key_type(),
            version: v,
            spki_der: m.spki().to_vec(),
        })
        .key(name, Some(v)))
    }

    pub(super) fn encrypt(
        &self,
        name: &str,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Done, OpError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "plaintext of {} bytes exceeds {MAX_PLAINTEXT}",
                    plaintext.len()
                ),
            ));
        }
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, None)?;
        let header = envelope::header(name, v);
        let sealed = m.seal(&envelope::aad(&header, context), plaintext)?;
        let mut blob = header;
        blob.extend_from_slice(&sealed);
        Ok(Done::new(Response::Ciphertext { version: v, blob }).key(name, Some(v)))
    }

    pub(super) fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        context: &[u8],
    ) -> Result<Done, (OpError, Named)> {
        let parsed = envelope::parse(blob).ok_or_else(|| {
            (
                OpError::new(
                    ErrorCode::InvalidCiphertext,
                    "not a vaultgate ciphertext blob",
                ),
                Named::default(),
            )
        })?;
        let name = parsed.key;
        let fail = |e: OpError| (e, Named::key(name));
        self.authorize(caller, Op::Decrypt, Some(name))
            .map_err(fail)?;
        let key = self.usable(name).map_err(fail)?;
        let (v, m) = Self::version(&key, Some(parsed.version)).map_err(fail)?;
        let plaintext = m
            .open(&envelope::aad(parsed.header, context), parsed.sealed)
            .map_err(|e| fail(e.into()))?;
        Ok(Done::new(Response::Plaintext {
            key: name.to_owned(),
            version: v,
            plaintext,
        })
        .key(name, Some(v)))
    }

    pub(super) fn generate_data_key(
        &self,
        name: &str,
        length: u32,
        context: &[u8],
    ) -> Result<Done, OpError> {
        if length == 0 || length > MAX_DATA_KEY {
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!("data key length {length} not in 1..={MAX_DATA_KEY}"),
            ));
        }
        let plaintext = keys::random_bytes(length as usize)?;
        let done = self.encrypt(name, &plaintext, context)?;
        let Response::Ciphertext { version, blob } = done.response else {
            return Err(OpError::new(
                ErrorCode::Internal,
                "encrypt answered unexpectedly",
            ));
        };
        Ok(Done::new(Response::DataKey {
            version,
            plaintext,
            ciphertext: blob,
        })
        .key(name, Some(version)))
    }
}
