//! `keys/MANIFEST`: every key's latest generation, authenticated under
//! the manifest subkey, so a record put back from an older copy, or a
//! record deleted, is told from the keystore as it was last written.
//!
//! A change writes the key's record (one generation newer) first, then
//! the manifest (its own generation bumped), then the audit record. A
//! crash between the first two leaves a record one step ahead of the
//! manifest: accepted, and the manifest re-written. A record behind the
//! manifest no crash explains: refused by name. A deleted key leaves a
//! tombstone (its last generation plus one) for good — a few bytes per
//! name — so its record put back is refused too.
//!
//! The manifest's own generation goes into `audit.head`; a manifest older
//! than the head says (the whole `keys/` dir put back) is an alarm.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::audit::Anchor;
use crate::fsutil;

pub const FILE: &str = "MANIFEST";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Bumped on every keystore change.
    pub generation: u64,
    /// Each key's latest generation.
    pub keys: BTreeMap<String, u64>,
    /// Deleted keys: the generation their deletion would have been.
    pub deleted: BTreeMap<String, u64>,
    /// Where the audit log ended (synced) when the manifest was written.
    pub anchor: Option<Anchor>,
    #[serde(default)]
    pub mac: String,
}

/// What `keys/MANIFEST` holds.
#[derive(Debug)]
pub enum Read {
    Missing,
    Authentic(Manifest),
    /// Does not parse or does not verify: edited, or another vault's.
    Forged(String),
}

/// What the manifest says of a record found at generation `found`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The generation the manifest lists.
    Current,
    /// Newer than the manifest: a crash before the manifest was written.
    Ahead,
    /// Older than the manifest lists.
    RolledBack { expected: u64 },
    /// The record of a key deleted at `tombstone`, one step behind it: a
    /// crash between the tombstone and the removal, if the record was
    /// due for deletion.
    Deleting { tombstone: u64 },
    /// A deleted key's older record, or a name the manifest never knew.
    Unknown { why: String },
}

fn mac_input(m: &Manifest) -> Vec<u8> {
    let mut copy = m.clone();
    copy.mac.clear();
    // Plain fields only: serialising cannot fail.
    serde_json::to_vec(&copy).unwrap_or_default()
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest {
            format: FORMAT,
            ..Manifest::default()
        }
    }

    /// The generation the next change to `name` gets.
    pub fn next_generation(&self, name: &str) -> u64 {
        let known = self.keys.get(name).copied();
        let gone = self.deleted.get(name).copied();
        known.max(gone).unwrap_or(0) + 1
    }

    /// Notes `name` at `generation`.
    pub fn note(&mut self, name: &str, generation: u64) {
        self.deleted.remove(name);
        self.keys.insert(name.to_owned(), generation);
        self.generation += 1;
    }

    /// Notes `name` deleted.
    pub fn note_deleted(&mut self, name: &str) {
        let tombstone = self.next_generation(name);
        self.keys.remove(name);
        self.deleted.insert(name.to_owned(), tombstone);
        self.generation += 1;
    }

    pub fn judge(&self, name: &str, found: u64) -> Verdict {
        if let Some(&expected) = self.keys.get(name) {
            return match found.cmp(&expected) {
                std::cmp::Ordering::Equal => Verdict::Current,
                std::cmp::Ordering::Greater => Verdict::Ahead,
                std::cmp::Ordering::Less => Verdict::RolledBack { expected },
            };
        }
        if let Some(&tombstone) = self.deleted.get(name) {
            return if found >= tombstone {
                Verdict::Ahead
            } else if found + 1 == tombstone {
                Verdict::Deleting { tombstone }
            } else {
                Verdict::Unknown {
                    why: format!(" (the key was deleted; this record is generation {found}, older than its deletion at {tombstone})"),
                }
            };
        }
        if found == 1 {
            // Created, and a crash came before the manifest was written.
            return Verdict::Ahead;
        }
        Verdict::Unknown {
            why: format!(" (its record is generation {found}; no crash explains it)"),
        }
    }

    fn seal(&mut self, key: &ring::hmac::Key) -> Vec<u8> {
        self.mac = hex::encode(ring::hmac::sign(key, &mac_input(self)));
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Writes the manifest into `dir` crash-safely.
    pub fn write(&mut self, dir: &Path, key: &ring::hmac::Key) -> std::io::Result<()> {
        let bytes = self.seal(key);
        fsutil::write_atomic(&dir.join(FILE), &bytes, 0o600)
    }
}

/// Reads and authenticates the manifest in `dir`.
pub fn read(dir: &Path, key: &ring::hmac::Key) -> std::io::Result<Read> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
        return Ok(Read::Forged(format!("{} does not parse", path.display())));
    };
    let ok = hex::decode(&m.mac).is_ok_and(|t| ring::hmac::verify(key, &mac_input(&m), &t).is_ok());
    if !ok || m.format != FORMAT {
        return Ok(Read::Forged(format!(
            "{} fails its integrity check (edited, or another vault's)",
            path.display()
        )));
    }
    Ok(Read::Authentic(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_tell_a_crash_from_a_rollback_and_edits_are_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1u8; 32]);
        assert!(matches!(read(dir.path(), &key).unwrap(), Read::Missing));
        let mut m = Manifest::new();
        assert_eq!(m.judge("a", 1), Verdict::Ahead);
        m.note("a", m.next_generation("a"));
        m.note("a", m.next_generation("a"));
        assert_eq!(m.judge("a", 2), Verdict::Current);
        assert_eq!(m.judge("a", 3), Verdict::Ahead);
        assert_eq!(m.judge("a", 1), Verdict::RolledBack { expected: 2 });
        m.note_deleted("a");
        assert_eq!(m.judge("a", 2), Verdict::Deleting { tombstone: 3 });
        assert!(matches!(m.judge("a", 1), Verdict::Unknown { .. }));
        assert_eq!(m.next_generation("a"), 4);
        assert!(matches!(m.judge("b", 5), Verdict::Unknown { .. }));
        assert_eq!(m.generation, 3);

        m.write(dir.path(), &key).unwrap();
        match read(dir.path(), &key).unwrap() {
            Read::Authentic(back) => assert_eq!(back, m),
            other => panic!("{other:?}"),
        }
        let path = dir.path().join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"generation\": 3", "\"generation\": 9"),
        )
        .unwrap();
        assert!(matches!(read(dir.path(), &key).unwrap(), Read::Forged(_)));
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[2u8; 32]);
        m.write(dir.path(), &other).unwrap();
        assert!(matches!(read(dir.path(), &key).unwrap(), Read::Forged(_)));
    }
}
