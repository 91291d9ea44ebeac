//! The keystore: `keys/*.json` in the state dir, loaded at start, written
//! crash-safely on every change, held in memory for the signing path.
//!
//! A record that fails its integrity check is kept as `Corrupt`: requests
//! for that key get a clear error, every other key keeps working. So is a
//! record that does not fit `keys/MANIFEST` ([`super::manifest`]): older
//! than it lists, listed but gone, or unknown to it; each is also an
//! integrity alarm for the caller to raise ([`Keystore::take_alarms`]).
//!
//! Many keys at once (a backup restored) are written all or none: into a
//! staging dir `keys/.stage-ID`, each file synced; renaming that dir to
//! `keys/.commit-ID` is the one instant the import happens; the records
//! are then renamed into `keys/`. Opening the keystore removes a
//! `.stage-` dir (a crash before the commit: nothing imported) and
//! finishes a `.commit-` dir (a crash after it: everything imported).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::audit::{Alarm, Anchor};
use super::manifest::{self, Manifest, Verdict};
use super::master::Subkeys;
use super::record::{Key, KeyState, RecordError};
use crate::fsutil;
use crate::sync::{Locked, RwLocked};

pub enum Slot {
    Ready(Arc<Key>),
    Corrupt(RecordError),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Keystore {
    dir: PathBuf,
    subkeys: Arc<Subkeys>,
    slots: RwLock<HashMap<String, Slot>>,
    /// What the keystore holds now; locked for the length of a change.
    manifest: Mutex<Manifest>,
    /// The generation of the manifest on disk.
    written: AtomicU64,
    alarms: Mutex<Vec<(Alarm, Option<String>)>>,
}

impl Keystore {
    /// Loads every record in `state_dir/keys`, creating the directory if
    /// needed and clearing temp files a crash may have left, and checks
    /// each against the manifest (see [`super::manifest`]). `head_manifest`
    /// is the manifest generation `audit.head` recorded. What does not fit
    /// is refused by name and left in [`Keystore::take_alarms`].
    pub fn open(
        state_dir: &Path,
        subkeys: Arc<Subkeys>,
        head_manifest: Option<u64>,
    ) -> Result<Keystore, StoreError> {
        let dir = state_dir.join("keys");
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        fsutil::ensure_dir(&dir, 0o700).map_err(io)?;
        fsutil::remove_stale_temps(&dir).map_err(io)?;
        recover_staged(&dir).map_err(io)?;
        let mut check = Check::new(&dir, &subkeys, head_manifest).map_err(io)?;
        let now = super::ops::now();
        let mut slots = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            let key = match std::fs::read(entry.path()) {
                Ok(bytes) => Key::from_bytes(&subkeys, &file, &bytes),
                Err(e) => Err(RecordError::Parse {
                    file: file.clone(),
                    message: e.to_string(),
                }),
            };
            let slot = match key {
                Ok(key) => match check.admit(name, key, now) {
                    Some(slot) => slot,
                    None => {
                        tracing::warn!(key = name, "finishing a deletion a crash interrupted");
                        fsutil::remove_durable(&entry.path()).map_err(io)?;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "refusing corrupt key record");
                    Slot::Corrupt(e)
                }
            };
            slots.insert(name.to_owned(), slot);
        }
        check.missing(&mut slots);
        let Check {
            mut manifest,
            trusted,
            dirty,
            alarms,
        } = check;
        if dirty {
            if !trusted && alarms.is_empty() {
                tracing::info!(
                    "the keystore had no manifest (written before manifests existed): writing one"
                );
            }
            manifest.generation += 1;
            manifest.write(&dir, &subkeys.manifest_mac).map_err(io)?;
        }
        Ok(Keystore {
            dir,
            subkeys,
            slots: RwLock::new(slots),
            written: AtomicU64::new(manifest.generation),
            manifest: Mutex::new(manifest),
            alarms: Mutex::new(alarms),
        })
    }

    /// What opening found that no crash explains, each with the key it
    /// concerns, for the caller to raise as integrity alarms once the
    /// audit log is open.
    pub fn take_alarms(&self) -> Vec<(Alarm, Option<String>)> {
        std::mem::take(&mut *self.alarms.locked())
    }

    /// Where the audit log had got to when the manifest was last written.
    pub fn anchor(&self) -> Option<Anchor> {
        self.manifest.locked().anchor.clone()
    }

    /// The generation of the manifest last written to disk (what
    /// `audit.head` is to record: never more than the disk holds, or the
    /// next start would take a failed write for a rollback).
    pub fn generation(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Writes the manifest after a change whose records are durable. A
    /// failure is logged, not returned: the records are written, and the
    /// next start takes a record one step ahead of its manifest as a
    /// change a crash interrupted.
    fn write_manifest(&self, manifest: &mut Manifest, anchor: Anchor) {
        manifest.anchor = Some(anchor);
        match manifest.write(&self.dir, &self.subkeys.manifest_mac) {
            Ok(()) => self.written.store(manifest.generation, Ordering::Release),
            Err(e) => {
                tracing::error!(error = %e, "could not write the keystore manifest; the next start re-writes it")
            }
        }
    }

    pub fn subkeys(&self) -> &Subkeys {
        &self.subkeys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The key named `name`: `None` if absent, `Err` if its record is corrupt.
    pub fn get(&self, name: &str) -> Option<Result<Arc<Key>, RecordError>> {
        let slots = self.slots.read_locked();
        slots.get(name).map(|s| match s {
            Slot::Ready(k) => Ok(k.clone()),
            Slot::Corrupt(e) => Err(e.clone()),
        })
    }

    /// Every name with its key or its error, sorted by name.
    pub fn list(&self) -> Vec<(String, Result<Arc<Key>, RecordError>)> {
        let slots = self.slots.read_locked();
        let mut out: Vec<_> = slots
            .iter()
            .map(|(n, s)| {
                let v = match s {
                    Slot::Ready(k) => Ok(k.clone()),
                    Slot::Corrupt(e) => Err(e.clone()),
                };
                (n.clone(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Writes `key` durably, then makes it visible. If the write fails,
    /// nothing changes, on disk or in memory. Callers serialise writes.
    /// `anchor` is where the audit log ended, for the manifest.
    pub fn put(&self, mut key: Key, anchor: Anchor) -> Result<Arc<Key>, StoreError> {
        let path = self.path(key.name());
        let mut manifest = self.manifest.locked();
        key.record.generation = manifest.next_generation(key.name());
        let bytes = key.seal_to_bytes(&self.subkeys);
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        manifest.note(key.name(), key.record.generation);
        self.write_manifest(&mut manifest, anchor);
        let key = Arc::new(key);
        let mut slots = self.slots.write_locked();
        slots.insert(key.name().to_owned(), Slot::Ready(key.clone()));
        Ok(key)
    }

    /// Writes every key of `keys` (none of which exists) durably, then
    /// makes them visible together; if any write fails, none is kept, on
    /// disk or in memory. Callers serialise writes.
    pub fn put_all(&self, keys: Vec<Key>, anchor: Anchor) -> Result<Vec<Arc<Key>>, StoreError> {
        let id = hex::encode(
            &crate::vault::keys::random_bytes(8).map_err(|_| StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no randomness for a staging dir name"),
            })?[..],
        );
        let stage = self.dir.join(format!(".stage-{id}"));
        let commit = self.dir.join(format!(".commit-{id}"));
        let mut keys = keys;
        let mut manifest = self.manifest.locked();
        let staged = (|| {
            fsutil::ensure_dir(&stage, 0o700)?;
            for key in &mut keys {
                key.record.generation = manifest.next_generation(key.name());
                let bytes = key.seal_to_bytes(&self.subkeys);
                fsutil::write_atomic(&stage.join(format!("{}.json", key.name())), &bytes, 0o600)?;
            }
            std::fs::rename(&stage, &commit)?;
            fsutil::sync_dir(&self.dir)
        })();
        if let Err(source) = staged {
            let _ = std::fs::remove_dir_all(&stage);
            let _ = std::fs::remove_dir_all(&commit);
            let _ = fsutil::sync_dir(&self.dir);
            return Err(StoreError::Io {
                path: stage,
                source,
            });
        }
        // Committed: what is left undone here, the next start finishes.
        if let Err(e) = finish_commit(&self.dir, &commit) {
            tracing::error!(error = %e, dir = %commit.display(), "an import is committed but not moved into place; the next start finishes it");
        }
        for key in &keys {
            manifest.note(key.name(), key.record.generation);
        }
        self.write_manifest(&mut manifest, anchor);
        let keys: Vec<Arc<Key>> = keys.into_iter().map(Arc::new).collect();
        let mut slots = self.slots.write_locked();
        for key in &keys {
            slots.insert(key.name().to_owned(), Slot::Ready(key.clone()));
        }
        Ok(keys)
    }

    /// Deletes a key's record for good: its tombstone goes into the
    /// manifest first, so a crash in between leaves a record the next
    /// start knows to finish deleting.
    pub fn remove(&self, name: &str, anchor: Anchor) -> Result<(), StoreError> {
        let path = self.path(name);
        let mut manifest = self.manifest.locked();
        let mut next = manifest.clone();
        next.note_deleted(name);
        next.anchor = Some(anchor);
        next.write(&self.dir, &self.subkeys.manifest_mac)
            .map_err(|source| StoreError::Io {
                path: self.dir.join(manifest::FILE),
                source,
            })?;
        self.written.store(next.generation, Ordering::Release);
        *manifest = next;
        match fsutil::remove_durable(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        let mut slots = self.slots.write_locked();
        slots.remove(name);
        Ok(())
    }
}

/// The check of the records found at start against the manifest.
struct Check {
    manifest: Manifest,
    /// Whether the manifest was read and verified (if not, the records
    /// found are taken as they are).
    trusted: bool,
    /// Whether the manifest must be written again.
    dirty: bool,
    alarms: Vec<(Alarm, Option<String>)>,
}

impl Check {
    fn alarm(&mut self, kind: &'static str, message: String, key: Option<&str>) {
        self.alarms
            .push((Alarm { kind, message }, key.map(str::to_owned)));
    }

    /// Reads the manifest in `dir` and holds it against the generation
    /// `audit.head` recorded.
    fn new(dir: &Path, subkeys: &Subkeys, head: Option<u64>) -> std::io::Result<Check> {
        let mut check = Check {
            manifest: Manifest::new(),
            trusted: false,
            dirty: true,
            alarms: Vec::new(),
        };
        let trusted_as_found = "the keystore is trusted as found and a new one written";
        match manifest::read(dir, &subkeys.manifest_mac)? {
            manifest::Read::Authentic(m) => {
                check.manifest = m;
                check.trusted = true;
                check.dirty = false;
            }
            manifest::Read::Missing if head.is_some_and(|g| g > 0) => check.alarm(
                "manifest-missing",
                format!(
                    "keys/{} is gone, though the audit head says one was written; {trusted_as_found}",
                    manifest::FILE
                ),
                None,
            ),
            manifest::Read::Missing => {}
            manifest::Read::Forged(why) => {
                check.alarm("manifest-forged", format!("{why}; {trusted_as_found}"), None);
            }
        }
        if let Some(head) = head.filter(|h| *h > check.manifest.generation) {
            if check.trusted {
                let message = format!(
                    "keys/{} is generation {}, the audit head says {head}: the keystore was put back from an older copy",
                    manifest::FILE,
                    check.manifest.generation
                );
                check.alarm("manifest-rolled-back", message, None);
            }
            // Never behind the head, or the next start would see a
            // rollback in what this one wrote.
            check.manifest.generation = head;
            check.dirty = true;
        }
        Ok(check)
    }

    /// The slot for `key`, found as `name`, or `None` if it is a deletion
    /// a crash interrupted (to be finished).
    fn admit(&mut self, name: &str, key: Key, now: u64) -> Option<Slot> {
        let found = key.record.generation;
        let verdict = if self.trusted {
            self.manifest.judge(name, found)
        } else {
            Verdict::Ahead
        };
        let refused = match verdict {
            Verdict::Current => None,
            Verdict::Ahead => {
                if self.trusted {
                    tracing::info!(
                        key = name,
                        generation = found,
                        "a change a crash interrupted before the manifest was written: kept"
                    );
                }
                self.manifest.deleted.remove(name);
                self.manifest.keys.insert(name.to_owned(), found);
                self.dirty = true;
                None
            }
            Verdict::RolledBack { expected } => Some(RecordError::RolledBack {
                name: name.to_owned(),
                found,
                expected,
            }),
            Verdict::Deleting { .. }
                if key.record.state == KeyState::PendingDeletion
                    && key.record.deletion_at.is_some_and(|t| t <= now) =>
            {
                return None;
            }
            Verdict::Deleting { tombstone } => Some(RecordError::Unknown {
                name: name.to_owned(),
                why: format!(
                    " (the key was deleted at generation {tombstone}; this is its record put back)"
                ),
            }),
            Verdict::Unknown { why } => Some(RecordError::Unknown {
                name: name.to_owned(),
                why,
            }),
        };
        Some(match refused {
            None => Slot::Ready(Arc::new(key)),
            Some(e) => {
                let kind = match e {
                    RecordError::RolledBack { .. } => "key-rolled-back",
                    _ => "key-unknown",
                };
                self.alarm(kind, e.to_string(), Some(name));
                Slot::Corrupt(e)
            }
        })
    }

    /// A slot for each key the manifest lists but whose record is gone.
    fn missing(&mut self, slots: &mut HashMap<String, Slot>) {
        let gone: Vec<(String, u64)> = self
            .manifest
            .keys
            .iter()
            .filter(|(name, _)| !slots.contains_key(*name))
            .map(|(n, g)| (n.clone(), *g))
            .collect();
        for (name, expected) in gone {
            let e = RecordError::Missing {
                name: name.clone(),
                expected,
            };
            self.alarm("key-missing", e.to_string(), Some(&name));
            slots.insert(name, Slot::Corrupt(e));
        }
    }
}

/// Moves a committed import's records into `dir`, then removes it.
fn finish_commit(dir: &Path, commit: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(commit)? {
        let entry = entry?;
        std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
    }
    fsutil::sync_dir(dir)?;
    std::fs::remove_dir(commit)?;
    fsutil::sync_dir(dir)
}

/// Rolls back imports a crash caught before their commit, and finishes
/// those it caught after.
fn recover_staged(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".stage-") {
            tracing::warn!(dir = %name, "removing an import a crash interrupted before it was committed");
            std::fs::remove_dir_all(entry.path())?;
            fsutil::sync_dir(dir)?;
        } else if name.starts_with(".commit-") {
            tracing::warn!(dir = %name, "finishing an import a crash interrupted after it was committed");
            fsutil::remove_stale_temps(&entry.path())?;
            finish_commit(dir, &entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::KeyType;
    use crate::vault::keys::Material;
    use crate::vault::record::Origin;

    fn key(sk: &Subkeys, name: &str) -> Key {
        let m = Material::generate(KeyType::Ed25519).unwrap();
        Key::new(sk, name, m, Origin::Generated, None, 1).unwrap()
    }

    #[test]
    fn a_crash_before_the_commit_imports_nothing_and_after_it_everything() {
        let state = tempfile::tempdir().unwrap();
        let sk = Arc::new(Subkeys::derive(&[5u8; 32]).unwrap());
        let store = Keystore::open(state.path(), sk.clone(), None).unwrap();
        store
            .put_all(vec![key(&sk, "a"), key(&sk, "b")], Anchor::genesis())
            .unwrap();
        let keys = state.path().join("keys");
        let names = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&keys), ["MANIFEST", "a.json", "b.json"]);

        // What a crash leaves: one import staged, one committed, half moved.
        let stage = keys.join(".stage-1");
        let commit = keys.join(".commit-2");
        for (dir, name) in [(&stage, "c"), (&commit, "d"), (&commit, "e")] {
            std::fs::create_dir_all(dir).unwrap();
            // As put_all stages them: new keys, generation 1.
            let mut k = key(&sk, name);
            k.record.generation = 1;
            let bytes = k.seal_to_bytes(&sk);
            std::fs::write(dir.join(format!("{name}.json")), bytes).unwrap();
        }
        std::fs::write(stage.join(".c.json.tmp-9"), b"half").unwrap();
        std::fs::rename(commit.join("d.json"), keys.join("d.json")).unwrap();
        let store = Keystore::open(state.path(), sk, None).unwrap();
        assert_eq!(
            names(&keys),
            ["MANIFEST", "a.json", "b.json", "d.json", "e.json"]
        );
        let listed: Vec<String> = store.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, ["a", "b", "d", "e"]);
        assert!(store.list().iter().all(|(_, k)| k.is_ok()));
    }

    #[test]
    fn a_keystore_from_before_manifests_gets_one_and_then_rollbacks_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let sk = Arc::new(Subkeys::derive(&[6u8; 32]).unwrap());
        let keys = state.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        // Records as an older vault wrote them: no generation field.
        let mut old = key(&sk, "old");
        let bytes = old.seal_to_bytes(&sk);
        assert!(!String::from_utf8_lossy(&bytes).contains("generation"));
        std::fs::write(keys.join("old.json"), &bytes).unwrap();
        // The head of an older vault records manifest generation 0.
        let store = Keystore::open(state.path(), sk.clone(), Some(0)).unwrap();
        assert!(store.take_alarms().is_empty());
        assert!(keys.join(manifest::FILE).exists());
        let generation = store.generation();
        assert!(generation > 0);
        let Some(Ok(k)) = store.get("old") else {
            panic!("old not served")
        };
        store.put((*k).clone(), Anchor::genesis()).unwrap();
        drop(store);
        let store = Keystore::open(state.path(), sk.clone(), Some(generation + 1)).unwrap();
        assert!(store.take_alarms().is_empty());
        drop(store);
        // The record from before the upgrade, put back: refused.
        std::fs::write(keys.join("old.json"), &bytes).unwrap();
        let store = Keystore::open(state.path(), sk, Some(generation + 1)).unwrap();
        let alarms = store.take_alarms();
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].0.kind, "key-rolled-back");
        assert_eq!(alarms[0].1.as_deref(), Some("old"));
        assert!(matches!(
            store.get("old"),
            Some(Err(RecordError::RolledBack {
                found: 0,
                expected: 1,
                ..
            }))
        ));
    }
}
