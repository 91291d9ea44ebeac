//! One key as stored: `keys/NAME.json`, metadata authenticated by an HMAC
//! under the record subkey, each version's secret sealed individually with
//! AES-256-GCM under the wrap subkey. The key's id, name, version and type
//! are the associated data, so a sealed secret moved to another record or
//! version does not open.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::{self, Material};
use super::master::Subkeys;
use crate::protocol::KeyType;

pub const FORMAT: u32 = 1;

/// The longest key name (docs/PROTOCOL.md).
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name a key: 1-64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` (the record is `NAME.json`, and dot files in
/// `keys/` are the keystore's own temp and staging files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(crate::config::vault::is_name_char)
}

/// The highest version a key may reach. Far beyond any rotation schedule
/// (a rotation a minute for two years), and far from `u32::MAX`, so the
/// next version number is always representable; a backup claiming a
/// higher one is refused.
pub const MAX_VERSION: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending-deletion",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Generated,
    Imported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub version: u32,
    /// Unix seconds.
    pub created: u64,
    pub origin: Origin,
    /// base64 of `nonce || ciphertext || tag`.
    pub sealed: String,
    /// Unix seconds after which this version may no longer sign (set when
    /// a rotation makes another version primary). It still verifies and
    /// decrypts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<u64>,
    /// The certificate chain (PEM, leaf first) bound to this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub format: u32,
    pub name: String,
    /// Random, never reused: binds sealed secrets to this key even if a
    /// key of the same name is deleted and created again.
    pub id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub state: KeyState,
    pub deletion_at: Option<u64>,
    pub created: u64,
    pub rotated: Option<u64>,
    pub rotate_every: Option<u64>,
    pub primary: u32,
    pub versions: Vec<VersionRecord>,
    /// Bumped on every change to the key (see [`super::manifest`]); a
    /// copy of an older record has a lower one. Records written before
    /// generations existed read as 0 (and are left out when 0, so their
    /// MAC still verifies).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// HMAC-SHA256 (hex) over this record serialised with `mac` empty.
    #[serde(default)]
    pub mac: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a stored record was refused. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("key record {file}: does not parse: {message}")]
    Parse { file: String, message: String },
    #[error("key record {file}: integrity check failed (edited or corrupted)")]
    Mac { file: String },
    #[error("key record {file}: names key {name:?}")]
    Name { file: String, name: String },
    #[error("key {name:?} version {version}: sealed material does not open (corrupted or moved)")]
    Seal { name: String, version: u32 },
    #[error("key {name:?}: {message}")]
    Invalid { name: String, message: String },
    /// Older than the manifest says the key is: a copy put back.
    #[error("key {name:?}: rolled back: its record is generation {found}, the keystore manifest says {expected}; refused")]
    RolledBack {
        name: String,
        found: u64,
        expected: u64,
    },
    /// Listed in the manifest, but its record is gone.
    #[error("key {name:?}: missing: the keystore manifest lists it at generation {expected}, but keys/{name}.json is gone")]
    Missing { name: String, expected: u64 },
    /// A record the manifest does not know (a deleted key put back, or a
    /// file no crash explains).
    #[error("key {name:?}: unknown to the keystore manifest{why}; refused")]
    Unknown { name: String, why: String },
}

/// A key in memory: its record (sealed secrets included, ready to be
/// written back) and the opened material of every version.
#[derive(Debug, Clone)]
pub struct Key {
    pub record: KeyRecord,
    pub versions: BTreeMap<u32, Arc<Material>>,
}

pub(super) fn version_aad(record: &KeyRecord, version: u32) -> Vec<u8> {
    format!(
        "vaultgate key v1\0{}\0{}\0{}\0{}",
        record.id,
        record.name,
        version,
        record.key_type.name()
    )
    .into_bytes()
}

impl KeyRecord {
    /// The record of version `v`, if the key has one.
    pub fn version(&self, v: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }

    pub fn version_mut(&mut self, v: u32) -> Option<&mut VersionRecord> {
        self.versions.iter_mut().find(|r| r.version == v)
    }

    fn mac_input(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac.clear();
        // Serialising a struct of plain fields cannot fail.
        serde_json::to_vec(&copy).unwrap_or_default()
    }

    pub fn compute_mac(&self, subkeys: &Subkeys) -> String {
        hex::encode(ring::hmac::sign(&subkeys.record_mac, &self.mac_input()))
    }

    fn mac_ok(&self, subkeys: &Subkeys) -> bool {
        let Ok(tag) = hex::decode(&self.mac) else {
            return false;
        };
        ring::hmac::verify(&subkeys.record_mac, &self.mac_input(), &tag).is_ok()
    }
}

impl Key {
    /// A new key with `material` as version 1.
    pub fn new(
        subkeys: &Subkeys,
        name: &str,
        material: Material,
        origin: Origin,
        rotate_every: Option<u64>,
        now: u64,
    ) -> Result<Key, keys::KeyError> {
        let id = hex::encode(&keys::random_bytes(16)?[..]);
        let record = KeyRecord {
            format: FORMAT,
            name: name.to_owned(),
            id,
            key_type: material.key_type(),
            state: KeyState::Enabled,
            deletion_at: None,
            created: now,
            rotated: None,
            rotate_every,
            primary: 0,
            versions: Vec::new(),
            generation: 0,
            mac: String::new(),
        };
        let mut key = Key {
            record,
            versions: BTreeMap::new(),
        };
        key.add_version(subkeys, material, origin, now)?;
        Ok(key)
    }

    /// Seals `material` as the next version and makes it primary.
    pub fn add_version(
        &mut self,
        subkeys: &Subkeys,
        material: Material,
        origin: Origin,
        now: u64,
    ) -> Result<u32, keys::KeyError> {
        let newest = self
            .record
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0);
        if newest >= MAX_VERSION {
            return Err(keys::KeyError::VersionLimit {
                name: self.record.name.clone(),
                version: newest,
            });
        }
        let version = newest + 1;
        let sealed = keys::seal_with(
            &subkeys.wrap,
            &version_aad(&self.record, version),
            material.secret(),
        )?;
        self.record.versions.push(VersionRecord {
            version,
            created: now,
            origin,
            sealed: B64.encode(sealed),
            retire_at: None,
            cert_chain: None,
        });
        if version > 1 {
            self.record.rotated = Some(now);
        }
        self.record.primary = version;
        self.versions.insert(version, Arc::new(material));
        Ok(version)
    }

    /// Seals the record's MAC and serialises it for writing.
    pub fn seal_to_bytes(&mut self, subkeys: &Subkeys) -> Vec<u8> {
        self.record.mac = self.record.compute_mac(subkeys);
        let mut out = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses, authenticates and opens a stored record read from `file`
    /// (whose stem must be the key's name).
    pub fn from_bytes(subkeys: &Subkeys, file: &str, bytes: &[u8]) -> Result<Key, RecordError> {
        let record: KeyRecord = serde_json::from_slice(bytes).map_err(|e| RecordError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        if !record.mac_ok(subkeys) {
            return Err(RecordError::Mac {
                file: file.to_owned(),
            });
        }
        if Some(record.name.as_str()) != file.strip_suffix(".json") {
            return Err(RecordError::Name {
                file: file.to_owned(),
                name: record.name,
            });
        }
        let invalid = |message: &str| RecordError::Invalid {
            name: record.name.clone(),
            message: message.to_owned(),
        };
        if record.format != FORMAT {
            return Err(invalid("unknown record format"));
        }
        if !record.versions.iter().any(|v| v.version == record.primary) {
            return Err(invalid("primary version missing"));
        }
        let mut versions = BTreeMap::new();
        for v in &record.versions {
            let seal_err = || RecordError::Seal {
                name: record.name.clone(),
                version: v.version,
            };
            let sealed = B64.decode(&v.sealed).map_err(|_| seal_err())?;
            let secret: Zeroizing<Vec<u8>> =
                keys::open_with(&subkeys.wrap, &version_aad(&record, v.version), &sealed)
                    .map_err(|_| seal_err())?;
            let material =
                Material::from_secret(record.key_type, secret).map_err(|_| seal_err())?;
            versions.insert(v.version, Arc::new(material));
        }
        Ok(Key { record, versions })
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn key_type(&self) -> KeyType {
        self.record.key_type
    }

    /// The material of `version`, or of the primary version.
    /// Whether `rotate_every` has passed since the last rotation.
    pub fn rotation_due(&self, now: u64) -> bool {
        let r = &self.record;
        r.rotate_every
            .is_some_and(|every| r.rotated.unwrap_or(r.created).saturating_add(every) <= now)
    }

    pub fn material(&self, version: Option<u32>) -> Option<(u32, &Arc<Material>)> {
        let v = version.unwrap_or(self.record.primary);
        self.versions.get(&v).map(|m| (v, m))
    }

    /// The JSON `describe` answers with.
    pub fn describe(&self) -> serde_json::Value {
        let r = &self.record;
        serde_json::json!({
            "name": r.name,
            "id": r.id,
            "type": r.key_type.name(),
            "state": r.state.name(),
            "created": r.created,
            "rotated": r.rotated,
            "rotate_every": r.rotate_every,
            "deletion_at": r.deletion_at,
            "primary": r.primary,
            "versions": r.versions.iter().map(|v| serde_json::json!({
                "version": v.version,
                "created": v.created,
                "origin": v.origin,
                "retire_at": v.retire_at,
                "certificate": v.cert_chain.is_some(),
                "spki_sha256": self.versions.get(&v.version)
                    .filter(|m| !m.spki().is_empty())
                    .map(|m| keys::spki_sha256(m.spki())),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Fuzz entry point: parse arbitrary bytes as a stored key record, under
/// a fixed master key. Must never panic; anything that opens must
/// serialise back to a record that opens to the same thing.
pub fn fuzz_record(data: &[u8]) {
    static SUBKEYS: std::sync::OnceLock<Option<Subkeys>> = std::sync::OnceLock::new();
    let Some(subkeys) = SUBKEYS.get_or_init(|| Subkeys::derive(&[0x42; 32]).ok()) else {
        return;
    };
    if let Ok(mut key) = Key::from_bytes(subkeys, "fuzz.json", data) {
        let again = key.seal_to_bytes(subkeys);
        let back = Key::from_bytes(subkeys, "fuzz.json", &again)
            .expect("a record that opened must reopen");
        assert_eq!(back.record, key.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subkeys() -> Subkeys {
        Subkeys::derive(&[3u8; 32]).unwrap()
    }

    #[test]
    fn record_round_trips_and_every_flipped_byte_is_refused() {
        let sk = subkeys();
        let mut key = Key::new(
            &sk,
            "web",
            Material::generate(KeyType::EcdsaP256).unwrap(),
            Origin::Generated,
            None,
            100,
        )
        .unwrap();
        key.add_version(
            &sk,
            Material::generate(KeyType::EcdsaP256).unwrap(),
            Origin::Generated,
            200,
        )
        .unwrap();
        let bytes = key.seal_to_bytes(&sk);
        let back = Key::from_bytes(&sk, "web.json", &bytes).unwrap();
        assert_eq!(back.record, key.record);
        assert_eq!(back.record.primary, 2);
        assert_eq!(
            back.material(Some(1)).unwrap().1.spki(),
            key.material(Some(1)).unwrap().1.spki()
        );
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            // a flip inside JSON whitespace can leave an equal record
            if let Ok(k) = Key::from_bytes(&sk, "web.json", &bad) {
                assert_eq!(
                    k.record, key.record,
                    "byte {i} changed the record undetected"
                );
            }
        }
        assert!(matches!(
            Key::from_bytes(&sk, "api.json", &bytes),
            Err(RecordError::Name { .. })
        ));
        assert!(matches!(
            Key::from_bytes(&Subkeys::derive(&[4u8; 32]).unwrap(), "web.json", &bytes),
            Err(RecordError::Mac { .. })
        ));
    }

    #[test]
    fn a_key_at_the_last_version_refuses_another_never_wrapping() {
        let sk = subkeys();
        for top in [MAX_VERSION, u32::MAX] {
            let m = || Material::generate(KeyType::Ed25519).unwrap();
            let mut key = Key::new(&sk, "top", m(), Origin::Generated, None, 1).unwrap();
            key.record.versions[0].version = top;
            key.record.primary = top;
            let before = key.record.clone();
            assert_eq!(
                key.add_version(&sk, m(), Origin::Generated, 2),
                Err(keys::KeyError::VersionLimit {
                    name: "top".into(),
                    version: top
                })
            );
            assert_eq!(key.record, before, "a refused rotation changed the key");
        }
        let mut key = Key::new(
            &sk,
            "next",
            Material::generate(KeyType::Ed25519).unwrap(),
            Origin::Generated,
            None,
            1,
        )
        .unwrap();
        key.record.versions[0].version = MAX_VERSION - 1;
        let v = key
            .add_version(
                &sk,
                Material::generate(KeyType::Ed25519).unwrap(),
                Origin::Generated,
                2,
            )
            .unwrap();
        assert_eq!(v, MAX_VERSION);
    }

    proptest::proptest! {
        #[test]
        fn random_records_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            fuzz_record(&data);
        }

        #[test]
        fn mutated_records_never_panic(at in 0usize..2000, byte in proptest::prelude::any::<u8>()) {
            static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let good = GOOD.get_or_init(|| {
                let sk = Subkeys::derive(&[0x42; 32]).unwrap();
                let mut k = Key::new(&sk, "fuzz", Material::generate(KeyType::Ed25519).unwrap(), Origin::Generated, None, 1).unwrap();
                k.seal_to_bytes(&sk)
            });
            let mut data = good.clone();
            let i = at % data.len();
            data[i] = byte;
            fuzz_record(&data);
        }
    }
}
