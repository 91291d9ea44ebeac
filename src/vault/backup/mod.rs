//! Wrapped backups: every key and version of a vault in one file, sealed
//! under keys stretched (argon2id) from a backup passphrase and the
//! file's salt. Another vault with the same passphrase restores it; nothing
//! else can read it, and no entry can be dropped, reordered, duplicated or
//! edited without the import being refused, naming what was done.
//!
//! - [`file`](mod@file)  — the file: header, sealed entries, the tag over all of it
//! - [`entry`] — one key's entry: sealed, then opened and validated field by field
//!
//! The vault makes and reads the whole file (`backup-export` answers it,
//! `backup-import` takes it), so it checks every entry against every other
//! and against the keystore before it writes anything.

mod entry;
mod file;

use std::sync::{Arc, Mutex};

use ring::hkdf;
use zeroize::Zeroizing;

use super::keys::{self, KeyError};
use super::master;
use super::record::Key;
use crate::sync::Locked;

pub use entry::Invalid;
pub use file::Parsed;

/// Why a backup was not made or not restored. Each names the entry (by
/// its place in the file, from 0) or the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("not a vaultgate backup: {0}")]
    NotABackup(String),
    #[error(
        "backup format 1 (each key sealed alone, the file not authenticated as a whole) \
         is not imported: export the keys again with this version"
    )]
    FormatOne,
    #[error("unknown backup format {0}; this vault reads format {format}", format = file::FORMAT)]
    Format(u32),
    #[error("the backup's {0} is not base64")]
    Base64(String),
    #[error("backup salt must be 16 to 64 bytes, got {0}")]
    Salt(usize),
    #[error("wrong passphrase: it does not open this backup")]
    Passphrase,
    #[error(
        "the header says {header} keys but the file holds {entries}: \
         entries were dropped or added"
    )]
    Count { header: u32, entries: usize },
    #[error("entry {at} is the backup's entry {belongs}: entries were reordered or duplicated")]
    Moved { at: usize, belongs: usize },
    #[error("entry {0} does not authenticate: it was edited or corrupted")]
    Altered(usize),
    #[error("no entry authenticates under the header: its creation time or key count was edited")]
    Header,
    #[error("the backup's tag does not match its content: the file was edited")]
    Tag,
    #[error("the backup says it was made at {created} (unix seconds), after now ({now})")]
    Future { created: u64, now: u64 },
    #[error("entry {at}{}: {why}", key.as_ref().map(|k| format!(" (key {k:?})")).unwrap_or_default())]
    Invalid {
        at: usize,
        key: Option<String>,
        why: Invalid,
    },
    #[error("entries {first} and {second} are both key {name:?}")]
    DuplicateName {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("entries {first} and {second} carry the same key id {id}")]
    DuplicateId {
        id: String,
        first: usize,
        second: usize,
    },
    #[error(
        "the backup would be {bytes} bytes, over the {max} a request may carry: \
         back up fewer keys at a time (--key)"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error("stretching the backup passphrase: {0}")]
    Stretch(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The keys a backup is sealed and authenticated under, derived from
/// one argon2id stretch of the passphrase and salt.
pub struct Wrapping {
    seal: ring::aead::LessSafeKey,
    mac: ring::hmac::Key,
}

impl Wrapping {
    /// Stretches `passphrase` with `salt` (argon2id: 19 MiB, tens of ms).
    pub fn derive(passphrase: &[u8], salt: &[u8]) -> Result<Wrapping, BackupError> {
        if !(16..=64).contains(&salt.len()) {
            return Err(BackupError::Salt(salt.len()));
        }
        let raw = master::stretch_default(passphrase, salt).map_err(BackupError::Stretch)?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"vaultgate backup").extract(&raw);
        let expand = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>, BackupError> {
            let mut out = Zeroizing::new([0u8; 32]);
            prk.expand(&[label], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out[..]))
                .map_err(|_| KeyError::Material(crate::protocol::KeyType::Aes256))?;
            Ok(out)
        };
        Ok(Wrapping {
            seal: keys::aes_key(&expand(b"seal v2")?[..])?,
            mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &expand(b"mac v2")?[..]),
        })
    }
}

/// Stretched backup keys, so a retried import (or an export followed
/// by a trial import) costs one argon2 run, not two.
#[derive(Default)]
pub struct KeyCache {
    last: Mutex<Option<([u8; 32], Arc<Wrapping>)>>,
}

impl KeyCache {
    pub fn wrapping(&self, passphrase: &[u8], salt: &[u8]) -> Result<Arc<Wrapping>, BackupError> {
        let mut id_input = Zeroizing::new(Vec::with_capacity(passphrase.len() + salt.len() + 4));
        id_input.extend_from_slice(&(salt.len() as u32).to_be_bytes());
        id_input.extend_from_slice(salt);
        id_input.extend_from_slice(passphrase);
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &id_input).as_ref());
        let mut last = self.last.locked();
        if let Some((cached, w)) = last.as_ref() {
            if *cached == id {
                return Ok(w.clone());
            }
        }
        let w = Arc::new(Wrapping::derive(passphrase, salt)?);
        *last = Some((id, w.clone()));
        Ok(w)
    }
}

/// The backup file of `keys`, in that order, made at `created`.
pub fn export(
    keys: &[Arc<Key>],
    wrap: &Wrapping,
    salt: &[u8],
    created: u64,
) -> Result<Vec<u8>, BackupError> {
    let plains = keys
        .iter()
        .map(|k| entry::plain(k))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = file::seal(wrap, salt, created, &plains)?;
    // The answer carries the file as one field of one frame, and the
    // import request carries it back beside the passphrase: room is left
    // for a passphrase of up to 8 KiB.
    let max = crate::protocol::MAX_BODY - 8 * 1024;
    if bytes.len() > max {
        return Err(BackupError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Parses a backup file far enough to know its salt; nothing is opened.
pub fn parse(bytes: &[u8]) -> Result<Parsed, BackupError> {
    file::parse(bytes)
}

/// Authenticates the whole backup and rebuilds every key in it, sealed
/// for this vault; any fault in any entry refuses them all.
pub fn restore(
    parsed: &Parsed,
    wrap: &Wrapping,
    subkeys: &master::Subkeys,
    now: u64,
) -> Result<Vec<Key>, BackupError> {
    // A day of clock difference between the two vaults is allowed.
    if parsed.created > now.saturating_add(86_400) {
        return Err(BackupError::Future {
            created: parsed.created,
            now,
        });
    }
    let plains = file::open(parsed, wrap)?;
    let mut keys: Vec<Key> = Vec::with_capacity(plains.len());
    for (at, plain) in plains.iter().enumerate() {
        let key = entry::rebuild(plain, parsed.created, subkeys)
            .map_err(|(key, why)| BackupError::Invalid { at, key, why })?;
        for (first, other) in keys.iter().enumerate() {
            if other.name() == key.name() {
                return Err(BackupError::DuplicateName {
                    name: key.name().to_owned(),
                    first,
                    second: at,
                });
            }
            if other.record.id == key.record.id {
                return Err(BackupError::DuplicateId {
                    id: key.record.id.clone(),
                    first,
                    second: at,
                });
            }
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A backup opened to its entries' JSON: what tools and tests inspect, or
/// edit and seal again (as someone holding the passphrase could) to see
/// what an import makes of it. The vault itself never needs it.
pub struct Unsealed {
    pub salt: Vec<u8>,
    pub created: u64,
    pub entries: Vec<Zeroizing<Vec<u8>>>,
}

/// Opens a backup file with its passphrase (one argon2id stretch).
pub fn unseal(bytes: &[u8], passphrase: &[u8]) -> Result<Unsealed, BackupError> {
    let parsed = file::parse(bytes)?;
    let wrap = Wrapping::derive(passphrase, &parsed.salt)?;
    let entries = file::open(&parsed, &wrap)?;
    Ok(Unsealed {
        salt: parsed.salt,
        created: parsed.created,
        entries,
    })
}

/// Seals `u` as a backup file under `passphrase`, entries as they are.
pub fn reseal(u: &Unsealed, passphrase: &[u8]) -> Result<Vec<u8>, BackupError> {
    let wrap = Wrapping::derive(passphrase, &u.salt)?;
    file::seal(&wrap, &u.salt, u.created, &u.entries)
}
