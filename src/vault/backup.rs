//! Wrapped backups. Each key becomes one entry: its metadata and every
//! version's secret, sealed with AES-256-GCM under a key stretched
//! (argon2id) from a backup passphrase and a salt kept in the backup file.
//! Another vault with the same passphrase restores it; nothing else can
//! read it. The backup file itself is assembled by the CLI:
//!
//! ```json
//! {"format":1,"salt":"<base64>","keys":["<base64 entry>", …]}
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::{self, Material};
use super::master;
use super::record::{Key, KeyRecord, KeyState, Origin, VersionRecord};
use crate::protocol::KeyType;
use crate::sync::Locked;

const AAD: &[u8] = b"vaultgate backup v1";

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupFile {
    pub format: u32,
    pub salt: String,
    pub keys: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    id: String,
    #[serde(rename = "type")]
    key_type: KeyType,
    state: KeyState,
    deletion_at: Option<u64>,
    created: u64,
    rotated: Option<u64>,
    rotate_every: Option<u64>,
    primary: u32,
    versions: Vec<EntryVersion>,
}

#[derive(Serialize, Deserialize)]
struct EntryVersion {
    version: u32,
    created: u64,
    origin: Origin,
    #[serde(default)]
    retire_at: Option<u64>,
    #[serde(default)]
    cert_chain: Option<String>,
    secret: String,
}

impl Drop for EntryVersion {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("backup salt must be 16 to 64 bytes, got {0}")]
    Salt(usize),
    #[error("backup entry does not open: wrong passphrase, or the backup is corrupted")]
    Open,
    #[error("backup entry is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Key(#[from] keys::KeyError),
}

/// Stretched backup keys, so a backup of many keys costs one argon2 run.
#[derive(Default)]
pub struct KeyCache {
    last: Mutex<Option<([u8; 32], Arc<ring::aead::LessSafeKey>)>>,
}

impl KeyCache {
    pub fn key(
        &self,
        passphrase: &[u8],
        salt: &[u8],
    ) -> Result<Arc<ring::aead::LessSafeKey>, BackupError> {
        if !(16..=64).contains(&salt.len()) {
            return Err(BackupError::Salt(salt.len()));
        }
        let mut id_input = Zeroizing::new(Vec::with_capacity(passphrase.len() + salt.len() + 4));
        id_input.extend_from_slice(&(salt.len() as u32).to_be_bytes());
        id_input.extend_from_slice(salt);
        id_input.extend_from_slice(passphrase);
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &id_input).as_ref());
        let mut last = self.last.locked();
        if let Some((cached, key)) = last.as_ref() {
            if *cached == id {
                return Ok(key.clone());
            }
        }
        let raw = master::stretch_default(passphrase, salt).map_err(BackupError::Malformed)?;
        let key = Arc::new(keys::aes_key(&raw)?);
        *last = Some((id, key.clone()));
        Ok(key)
    }
}

/// Seals one key, all versions, for a backup.
pub fn export(key: &Key, wrap: &ring::aead::LessSafeKey) -> Result<Vec<u8>, BackupError> {
    let r = &key.record;
    let mut versions = Vec::new();
    for v in &r.versions {
        let m = key.versions.get(&v.version).ok_or_else(|| {
            BackupError::Malformed(format!("version {} has no material", v.version))
        })?;
        versions.push(EntryVersion {
            version: v.version,
            created: v.created,
            origin: v.origin,
            retire_at: v.retire_at,
            cert_chain: v.cert_chain.clone(),
            secret: B64.encode(m.secret()),
        });
    }
    let entry = Entry {
        name: r.name.clone(),
        id: r.id.clone(),
        key_type: r.key_type,
        state: r.state,
        deletion_at: r.deletion_at,
        created: r.created,
        rotated: r.rotated,
        rotate_every: r.rotate_every,
        primary: r.primary,
        versions,
    };
    let plain = Zeroizing::new(
        serde_json::to_vec(&entry).map_err(|e| BackupError::Malformed(e.to_string()))?,
    );
    Ok(keys::seal_with(wrap, AAD, &plain)?)
}

/// Opens an entry and rebuilds the key, sealed for this vault.
pub fn import(
    blob: &[u8],
    wrap: &ring::aead::LessSafeKey,
    subkeys: &master::Subkeys,
) -> Result<Key, BackupError> {
    let plain = keys::open_with(wrap, AAD, blob).map_err(|_| BackupError::Open)?;
    let entry: Entry =
        serde_json::from_slice(&plain).map_err(|e| BackupError::Malformed(e.to_string()))?;
    let record = KeyRecord {
        format: super::record::FORMAT,
        name: entry.name.clone(),
        id: entry.id.clone(),
        key_type: entry.key_type,
        state: entry.state,
        deletion_at: entry.deletion_at,
        created: entry.created,
        rotated: entry.rotated,
        rotate_every: entry.rotate_every,
        primary: entry.primary,
        versions: Vec::new(),
        mac: String::new(),
    };
    let mut key = Key {
        record,
        versions: BTreeMap::new(),
    };
    for v in &entry.versions {
        let secret = Zeroizing::new(B64.decode(&v.secret).map_err(|_| {
            BackupError::Malformed(format!("version {} secret is not base64", v.version))
        })?);
        let material = Material::from_secret(entry.key_type, secret)?;
        key.restore_version(
            subkeys,
            v.version,
            v.created,
            v.origin,
            (v.retire_at, v.cert_chain.clone()),
            material,
        )?;
    }
    if !key.versions.contains_key(&entry.primary) {
        return Err(BackupError::Malformed("primary version missing".into()));
    }
    key.record.primary = entry.primary;
    key.record.rotated = entry.rotated;
    Ok(key)
}

impl Key {
    /// Seals restored material as exactly `version` (backup import).
    fn restore_version(
        &mut self,
        subkeys: &master::Subkeys,
        version: u32,
        created: u64,
        origin: Origin,
        (retire_at, cert_chain): (Option<u64>, Option<String>),
        material: Material,
    ) -> Result<(), keys::KeyError> {
        let aad = super::record::version_aad(&self.record, version);
        let sealed = keys::seal_with(&subkeys.wrap, &aad, material.secret())?;
        self.record.versions.push(VersionRecord {
            version,
            created,
            origin,
            sealed: B64.encode(sealed),
            retire_at,
            cert_chain,
        });
        self.versions.insert(version, Arc::new(material));
        Ok(())
    }
}
