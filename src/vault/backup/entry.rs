//! One key's entry: its metadata and every version's secret, as JSON.
//! Opening checks every field against what this vault could itself have
//! made (names as `create` takes them, versions as rotations number them,
//! times no later than the backup, material that parses as its type,
//! certificates that carry their version's public key) before the key is
//! rebuilt and sealed for this vault.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::BackupError;
use crate::protocol::KeyType;
use crate::vault::issue::{self, ChainError};
use crate::vault::keys::{KeyError, Material};
use crate::vault::master::Subkeys;
use crate::vault::record::{self, Key, KeyRecord, KeyState, Origin, VersionRecord, MAX_VERSION};

/// The latest time a backup may name (9999-12-31): far past any real
/// date, and far enough from `u64::MAX` that adding a period never wraps.
const MAX_TIME: u64 = 253_402_300_799;
/// The longest `rotate_every` a restored key may have: 100 years.
const MAX_ROTATE_EVERY: u64 = 100 * 365 * 86_400;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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

/// What is wrong with an entry's content. Each names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("does not parse: {0}")]
    Json(String),
    #[error("invalid key name {0:?}: 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'")]
    Name(String),
    #[error("invalid key id {0:?}: 32 lowercase hex digits")]
    Id(String),
    #[error("no versions")]
    NoVersions,
    #[error("version {0}: versions are 1 to {MAX_VERSION}")]
    VersionRange(u32),
    #[error("version {version} follows version {after}: versions must increase")]
    VersionOrder { version: u32, after: u32 },
    #[error("primary version {0} is not among its versions")]
    Primary(u32),
    #[error("{field} {value} is after the backup was made ({backup})")]
    After {
        field: String,
        value: u64,
        backup: u64,
    },
    #[error("{field} {value} is past the year 9999")]
    TooLate { field: String, value: u64 },
    #[error("rotate_every {0}s: 1 s to 100 years")]
    RotateEvery(u64),
    #[error("state {state} with deletion_at {deletion_at:?}: a deletion time goes with pending-deletion, and only with it")]
    Deletion {
        state: &'static str,
        deletion_at: Option<u64>,
    },
    #[error("version {0}: its secret is not base64")]
    Secret(u32),
    #[error("version {version}: {source}")]
    Material { version: u32, source: KeyError },
    #[error("version {version}: certificate: {source}")]
    Chain { version: u32, source: ChainError },
}

/// The entry JSON of `key`, all versions (sealed by the file).
pub fn plain(key: &Key) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let r = &key.record;
    let mut versions = Vec::new();
    for v in &r.versions {
        let m = key
            .versions
            .get(&v.version)
            .ok_or(KeyError::Material(r.key_type))?;
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
    // Serialising a struct of plain fields cannot fail.
    Ok(Zeroizing::new(
        serde_json::to_vec(&entry).unwrap_or_default(),
    ))
}

/// Validates an opened entry and rebuilds its key, sealed for this vault.
/// `backup` is when the backup was made. The error names the key once
/// it is known.
pub fn rebuild(
    plain: &[u8],
    backup: u64,
    subkeys: &Subkeys,
) -> Result<Key, (Option<String>, Invalid)> {
    let entry: Entry =
        serde_json::from_slice(plain).map_err(|e| (None, Invalid::Json(e.to_string())))?;
    let named = |why| (Some(entry.name.clone()), why);
    check(&entry, backup).map_err(named)?;
    let mut key = Key {
        record: KeyRecord {
            format: record::FORMAT,
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
            generation: 0,
            mac: String::new(),
        },
        versions: BTreeMap::new(),
    };
    for v in &entry.versions {
        let secret = Zeroizing::new(
            B64.decode(&v.secret)
                .map_err(|_| named(Invalid::Secret(v.version)))?,
        );
        let material = Material::from_secret(entry.key_type, secret).map_err(|source| {
            named(Invalid::Material {
                version: v.version,
                source,
            })
        })?;
        if let Some(chain) = &v.cert_chain {
            issue::check_chain(chain, &material).map_err(|source| {
                named(Invalid::Chain {
                    version: v.version,
                    source,
                })
            })?;
        }
        let material_err = |source| {
            named(Invalid::Material {
                version: v.version,
                source,
            })
        };
        let sealed = crate::vault::keys::seal_with(
            &subkeys.wrap,
            &record::version_aad(&key.record, v.version),
            material.secret(),
        )
        .map_err(material_err)?;
        key.record.versions.push(VersionRecord {
            version: v.version,
            created: v.created,
            origin: v.origin,
            sealed: B64.encode(sealed),
            retire_at: v.retire_at,
            cert_chain: v.cert_chain.clone(),
        });
        key.versions.insert(v.version, Arc::new(material));
    }
    Ok(key)
}

/// Every field but the material, which is checked as it is parsed.
fn check(e: &Entry, backup: u64) -> Result<(), Invalid> {
    if !record::valid_name(&e.name) {
        return Err(Invalid::Name(e.name.clone()));
    }
    if e.id.len() != 32
        || !e
            .id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Invalid::Id(e.id.clone()));
    }
    let past = |field: &str, value: u64| {
        if value > backup {
            return Err(Invalid::After {
                field: field.to_owned(),
                value,
                backup,
            });
        }
        Ok(())
    };
    let future = |field: &str, value: u64| {
        if value > MAX_TIME {
            return Err(Invalid::TooLate {
                field: field.to_owned(),
                value,
            });
        }
        Ok(())
    };
    past("created", e.created)?;
    if let Some(t) = e.rotated {
        past("rotated", t)?;
    }
    if let Some(every) = e.rotate_every {
        if every == 0 || every > MAX_ROTATE_EVERY {
            return Err(Invalid::RotateEvery(every));
        }
    }
    match (e.state, e.deletion_at) {
        (KeyState::PendingDeletion, Some(t)) => future("deletion_at", t)?,
        (KeyState::Enabled | KeyState::Disabled, None) => {}
        (state, deletion_at) => {
            return Err(Invalid::Deletion {
                state: state.name(),
                deletion_at,
            })
        }
    }
    if e.versions.is_empty() {
        return Err(Invalid::NoVersions);
    }
    let mut after = 0;
    for v in &e.versions {
        if v.version == 0 || v.version > MAX_VERSION {
            return Err(Invalid::VersionRange(v.version));
        }
        if v.version <= after {
            return Err(Invalid::VersionOrder {
                version: v.version,
                after,
            });
        }
        after = v.version;
        past(&format!("version {} created", v.version), v.created)?;
        if let Some(t) = v.retire_at {
            future(&format!("version {} retire_at", v.version), t)?;
        }
    }
    if !e.versions.iter().any(|v| v.version == e.primary) {
        return Err(Invalid::Primary(e.primary));
    }
    Ok(())
}
