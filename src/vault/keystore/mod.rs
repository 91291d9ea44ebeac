//! The keystore: every key's sealed record, loaded at start, written
//! durably on every change, held in memory for the signing path.
//!
//! Where the records live is a [`Backend`]: [`local`](mod@local), files in
//! the state dir (the embedded default), or [`etcd`](mod@etcd), one store
//! every node of a cluster shares, whose changes by other nodes arrive by
//! [`Follow`] and are applied as they come ([`Keystore::apply`]); a
//! deleted key leaves a [`tombstone`](mod@tombstone) there. The keystore itself owns what
//! does not depend on where: sealing, generations and the manifest, the
//! in-memory copy every request reads.
//!
//! A record that fails its integrity check is kept as `Corrupt`: requests
//! for that key get a clear error, every other key keeps working. So is a
//! record that does not fit the manifest ([`super::manifest`]): older
//! than it lists, listed but gone, or unknown to it; each is also an
//! integrity alarm for the caller to raise ([`Keystore::take_alarms`]).
//! [`check`](mod@check) holds records found at start against it.

mod check;
pub mod etcd;
pub mod local;
mod tombstone;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::audit::{Alarm, Anchor};
use super::manifest::{self, Manifest};
use super::master::Subkeys;
use super::record::{Key, RecordError};
use crate::sync::{Locked, RwLocked};
use check::Check;

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
    /// Another node changed key `name` since this one read it.
    #[error("key {name:?} was changed by another node meanwhile")]
    Conflict { name: String },
    /// A scheduled change from a node that is not (or no longer) the
    /// cluster's scheduler.
    #[error("this node is not the cluster's scheduler (another node was elected)")]
    NotScheduler,
    #[error(transparent)]
    Etcd(Box<crate::etcd::EtcdError>),
    #[error("this node's master key is not the one the cluster under etcd prefix {prefix:?} is sealed with (its check value differs): give every node the same master key")]
    MasterMismatch { prefix: String },
}

/// One record as a backend holds it: the sealed bytes, and the revision
/// they were written at (what a change to them must name).
pub struct Stored {
    pub name: String,
    pub bytes: Vec<u8>,
    pub revision: u64,
}

/// Every record a backend holds, read at one revision.
#[derive(Default)]
pub struct Listing {
    pub records: Vec<Stored>,
    /// Names whose record could not be read, and why.
    pub unreadable: Vec<(String, String)>,
    pub revision: u64,
}

/// What a change expects to find, so that two writers racing on one key
/// cannot both win: none (a key created) or the revision it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Absent,
    At(u64),
}

/// Where sealed records are kept. Bytes in, bytes out: a backend never
/// sees a key in the clear, only what [`Key::seal_to_bytes`] made. Each
/// change is durable when it returns, or did not happen.
pub trait Backend: Send + Sync {
    fn list(&self) -> Result<Listing, StoreError>;
    fn get(&self, name: &str) -> Result<Option<Stored>, StoreError>;
    /// Writes `name`'s record if it is as `expect` says; returns the new
    /// revision. `scheduled`: a change of the scheduler's (a scheduled
    /// rotation or deletion), made only while this node is the one
    /// scheduler ([`Backend::schedules`]), fenced against it being so no
    /// longer.
    fn put(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Expect,
        scheduled: bool,
    ) -> Result<u64, StoreError>;
    /// Writes records of keys that do not exist, all or none.
    fn put_all(&self, records: &[(String, Vec<u8>)]) -> Result<u64, StoreError>;
    /// Deletes `name`'s record; a store other nodes read keeps
    /// `tombstone` in its place.
    fn delete(
        &self,
        name: &str,
        expect: Expect,
        tombstone: &[u8],
        scheduled: bool,
    ) -> Result<u64, StoreError>;
    /// Whether this node runs scheduled work now: always, for a store
    /// only it writes; for a shared one, while elected.
    fn schedules(&self) -> bool {
        true
    }
    /// Changes others make after revision `after`; none for a store only
    /// this process writes.
    fn follow(&self, _after: u64) -> Option<Box<dyn Follow>> {
        None
    }
    /// Keeps where this node's audit log had got to (synced) outside the
    /// node, so a log cut back or replaced is found; a store kept in the
    /// state dir has nowhere else to keep it.
    fn put_audit_anchor(&self, _anchor: &Anchor) -> Result<(), StoreError> {
        Ok(())
    }
    fn audit_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        Ok(None)
    }
}

/// A change to the store that another node made.
pub enum Change {
    Put(Stored),
    /// A record deleted outright (no tombstone: not by a vault node).
    Deleted {
        name: String,
        revision: u64,
    },
    /// Everything, read again (the change stream had ended).
    Relisted(Listing),
}

pub trait Follow: Send {
    /// The next change, or `None` after waiting `wait` for one.
    fn next(&mut self, wait: std::time::Duration) -> Option<Change>;
}

/// What applying another node's change did here.
pub enum Applied {
    /// The key is now this (created, changed, or recovered).
    Changed(Arc<Key>),
    Deleted(String),
    /// Refused: the record is older than one seen, forged, or gone
    /// without a tombstone; the key as held keeps being served.
    Refused(Alarm, String),
}

/// A key's slot and the revision of the record it came from.
struct Held {
    slot: Slot,
    revision: u64,
}

impl Held {
    fn key(&self) -> Result<Arc<Key>, RecordError> {
        match &self.slot {
            Slot::Ready(k) => Ok(k.clone()),
            Slot::Corrupt(e) => Err(e.clone()),
        }
    }
}

pub struct Keystore {
    backend: Box<dyn Backend>,
    /// Where the manifest is kept.
    manifest_dir: PathBuf,
    subkeys: Arc<Subkeys>,
    slots: RwLock<HashMap<String, Held>>,
    /// What the keystore holds now; locked for the length of a change.
    manifest: Mutex<Manifest>,
    /// The generation of the manifest on disk.
    written: AtomicU64,
    alarms: Mutex<Vec<(Alarm, Option<String>)>>,
    /// The backend revision the keystore has applied (0 for the local one).
    applied: AtomicU64,
    /// Whether other nodes write the backend too.
    shared: bool,
    /// Deleted keys' tombstones in a shared backend: their revisions.
    gone: Mutex<HashMap<String, u64>>,
}

impl Keystore {
    /// The local keystore in `state_dir/keys`, as [`Keystore::open`].
    pub fn open_local(
        state_dir: &Path,
        subkeys: Arc<Subkeys>,
        head_manifest: Option<u64>,
    ) -> Result<Keystore, StoreError> {
        let backend = local::LocalBackend::open(state_dir)?;
        let manifest_dir = backend.dir().to_owned();
        Keystore::open(
            Box::new(backend),
            &manifest_dir,
            subkeys,
            head_manifest,
            false,
        )
    }

    /// Loads every record `backend` holds and checks each against the
    /// manifest in `manifest_dir` (see [`super::manifest`]).
    /// `head_manifest` is the manifest generation `audit.head` recorded.
    /// What does not fit is refused by name and left in
    /// [`Keystore::take_alarms`]. `shared`: other nodes write `backend`
    /// too (names this node never saw are theirs; deletions are
    /// tombstones).
    pub fn open(
        backend: Box<dyn Backend>,
        manifest_dir: &Path,
        subkeys: Arc<Subkeys>,
        head_manifest: Option<u64>,
        shared: bool,
    ) -> Result<Keystore, StoreError> {
        let io = |source| StoreError::Io {
            path: manifest_dir.to_owned(),
            source,
        };
        let mut check = Check::new(manifest_dir, &subkeys, head_manifest, shared).map_err(io)?;
        let mut gone = HashMap::new();
        let now = super::ops::now();
        let listing = backend.list()?;
        let listing_revision = listing.revision;
        let mut slots = HashMap::new();
        for (name, message) in listing.unreadable {
            let e = RecordError::Parse {
                file: format!("{name}.json"),
                message,
            };
            tracing::error!(error = %e, "refusing unreadable key record");
            slots.insert(
                name,
                Held {
                    slot: Slot::Corrupt(e),
                    revision: 0,
                },
            );
        }
        for stored in listing.records {
            let name = stored.name.clone();
            if shared {
                if let Some(found) = check_tombstone(&mut check, &subkeys, &name, &stored) {
                    match found {
                        Some(held) => {
                            slots.insert(name, held);
                        }
                        None => {
                            gone.insert(name, stored.revision);
                        }
                    }
                    continue;
                }
            }
            let slot = match Key::from_bytes(&subkeys, &format!("{name}.json"), &stored.bytes) {
                Ok(key) => match check.admit(&name, key, now) {
                    Some(slot) => slot,
                    None => {
                        tracing::warn!(key = name, "finishing a deletion a crash interrupted");
                        backend.delete(&name, Expect::At(stored.revision), &[], false)?;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "refusing corrupt key record");
                    Slot::Corrupt(e)
                }
            };
            slots.insert(
                name,
                Held {
                    slot,
                    revision: stored.revision,
                },
            );
        }
        check.missing(&mut slots);
        let (mut manifest, dirty, alarms) = check.finish();
        if dirty {
            manifest.generation += 1;
            manifest
                .write(manifest_dir, &subkeys.manifest_mac)
                .map_err(io)?;
        }
        Ok(Keystore {
            backend,
            manifest_dir: manifest_dir.to_owned(),
            subkeys,
            slots: RwLock::new(slots),
            written: AtomicU64::new(manifest.generation),
            manifest: Mutex::new(manifest),
            alarms: Mutex::new(alarms),
            applied: AtomicU64::new(0),
            shared,
            gone: Mutex::new(gone),
        })
        .inspect(|store| store.applied(listing_revision))
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
        match manifest.write(&self.manifest_dir, &self.subkeys.manifest_mac) {
            Ok(()) => self.written.store(manifest.generation, Ordering::Release),
            Err(e) => {
                tracing::error!(error = %e, "could not write the keystore manifest; the next start re-writes it")
            }
        }
    }

    /// Notes a change this keystore made or was told of, at `revision`.
    fn applied(&self, revision: u64) {
        let now = self
            .applied
            .fetch_max(revision, Ordering::AcqRel)
            .max(revision);
        metrics::gauge!("vaultgate_vault_store_revision").set(now as f64);
    }

    pub fn subkeys(&self) -> &Subkeys {
        &self.subkeys
    }

    /// The key named `name`: `None` if absent, `Err` if its record is corrupt.
    pub fn get(&self, name: &str) -> Option<Result<Arc<Key>, RecordError>> {
        self.slots.read_locked().get(name).map(Held::key)
    }

    /// Every name with its key or its error, sorted by name.
    pub fn list(&self) -> Vec<(String, Result<Arc<Key>, RecordError>)> {
        let slots = self.slots.read_locked();
        let mut out: Vec<_> = slots.iter().map(|(n, h)| (n.clone(), h.key())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// What a change to `name` expects the backend to hold.
    fn expect(&self, name: &str) -> Expect {
        let revision = match self.slots.read_locked().get(name) {
            Some(h) => h.revision,
            None => self.gone.locked().get(name).copied().unwrap_or(0),
        };
        match revision {
            0 => Expect::Absent,
            r => Expect::At(r),
        }
    }

    /// Writes `key` durably, then makes it visible. If the write fails,
    /// nothing changes, in the backend or in memory. Callers serialise
    /// writes. `anchor` is where the audit log ended, for the manifest.
    /// `scheduled`: a scheduled change (see [`Backend::put`]).
    pub fn put(
        &self,
        mut key: Key,
        anchor: Anchor,
        scheduled: bool,
    ) -> Result<Arc<Key>, StoreError> {
        let mut manifest = self.manifest.locked();
        key.record.generation = manifest.next_generation(key.name());
        let bytes = key.seal_to_bytes(&self.subkeys);
        let revision = self
            .backend
            .put(key.name(), &bytes, self.expect(key.name()), scheduled)?;
        self.applied(revision);
        manifest.note(key.name(), key.record.generation);
        self.write_manifest(&mut manifest, anchor);
        let key = Arc::new(key);
        self.gone.locked().remove(key.name());
        self.slots.write_locked().insert(
            key.name().to_owned(),
            Held {
                slot: Slot::Ready(key.clone()),
                revision,
            },
        );
        Ok(key)
    }

    /// Writes every key of `keys` (none of which exists) durably, then
    /// makes them visible together; if any write fails, none is kept, in
    /// the backend or in memory. Callers serialise writes.
    pub fn put_all(&self, keys: Vec<Key>, anchor: Anchor) -> Result<Vec<Arc<Key>>, StoreError> {
        let mut keys = keys;
        let mut manifest = self.manifest.locked();
        let mut records = Vec::with_capacity(keys.len());
        for key in &mut keys {
            key.record.generation = manifest.next_generation(key.name());
            records.push((key.name().to_owned(), key.seal_to_bytes(&self.subkeys)));
        }
        let revision = self.backend.put_all(&records)?;
        self.applied(revision);
        for key in &keys {
            manifest.note(key.name(), key.record.generation);
        }
        self.write_manifest(&mut manifest, anchor);
        let keys: Vec<Arc<Key>> = keys.into_iter().map(Arc::new).collect();
        let mut slots = self.slots.write_locked();
        for key in &keys {
            slots.insert(
                key.name().to_owned(),
                Held {
                    slot: Slot::Ready(key.clone()),
                    revision,
                },
            );
        }
        Ok(keys)
    }

    /// Deletes a key's record for good. Locally its tombstone goes into
    /// the manifest first, so a crash in between leaves a record the next
    /// start knows to finish deleting; in a shared store the tombstone
    /// replaces the record in one write, then the manifest notes it.
    pub fn remove(&self, name: &str, anchor: Anchor, scheduled: bool) -> Result<(), StoreError> {
        let mut manifest = self.manifest.locked();
        let mut next = manifest.clone();
        next.note_deleted(name);
        let tomb = tombstone::seal(
            &self.subkeys.manifest_mac,
            name,
            next.deleted.get(name).copied().unwrap_or(0),
        );
        let expect = self.expect(name);
        if self.shared {
            let revision = self.backend.delete(name, expect, &tomb, scheduled)?;
            self.applied(revision);
            self.gone.locked().insert(name.to_owned(), revision);
            self.write_manifest(&mut next, anchor);
        } else {
            next.anchor = Some(anchor);
            next.write(&self.manifest_dir, &self.subkeys.manifest_mac)
                .map_err(|source| StoreError::Io {
                    path: self.manifest_dir.join(manifest::FILE),
                    source,
                })?;
            self.written.store(next.generation, Ordering::Release);
            *manifest = next;
            self.backend.delete(name, expect, &tomb, scheduled)?;
            self.slots.write_locked().remove(name);
            return Ok(());
        }
        *manifest = next;
        self.slots.write_locked().remove(name);
        Ok(())
    }
}

/// A tombstone found at start in a shared store: `None` if `stored` is
/// not one; else the slot to hold (refused), or none (the key is gone).
fn check_tombstone(
    check: &mut Check,
    subkeys: &Subkeys,
    name: &str,
    stored: &Stored,
) -> Option<Option<Held>> {
    let slot = match tombstone::read(&subkeys.manifest_mac, name, &stored.bytes) {
        tombstone::Read::NotOne => return None,
        tombstone::Read::Deleted(generation) => check.tombstone(name, generation),
        tombstone::Read::Forged => {
            let e = RecordError::Unknown {
                name: name.to_owned(),
                why: " (a tombstone that fails its integrity check)".into(),
            };
            check.refuse("key-unknown", &e, name);
            Some(Slot::Corrupt(e))
        }
    };
    Some(slot.map(|slot| Held {
        slot,
        revision: stored.revision,
    }))
}

impl Keystore {
    /// Whether this node runs scheduled rotations and deletions now.
    pub fn schedules(&self) -> bool {
        self.backend.schedules()
    }

    /// Where this node's audit log stood when last anchored outside it
    /// (a shared store); none for a local store.
    pub fn audit_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        self.backend.audit_anchor()
    }

    /// Anchors `anchor` outside the node; a failure is logged (the next
    /// anchoring carries the newer position).
    pub fn put_audit_anchor(&self, anchor: &Anchor) {
        if let Err(e) = self.backend.put_audit_anchor(anchor) {
            tracing::warn!(error = %e, seq = anchor.seq, "could not anchor the audit log's head in the store");
            metrics::counter!("vaultgate_vault_store_errors_total").increment(1);
        }
    }

    /// The changes other nodes make, from what this keystore has applied.
    pub fn follow(&self) -> Option<Box<dyn Follow>> {
        self.backend.follow(self.applied.load(Ordering::Acquire))
    }

    /// Reads `name` from the backend now (a change to it lost a race)
    /// and applies what is there.
    pub fn refresh(&self, name: &str) -> Result<Vec<Applied>, StoreError> {
        Ok(match self.backend.get(name)? {
            Some(stored) => self.apply(Change::Put(stored)),
            None => self.apply(Change::Deleted {
                name: name.to_owned(),
                revision: 0,
            }),
        })
    }

    /// Applies a change another node made: a newer record replaces the
    /// one held; an older one (a copy put back), a forged one or one
    /// deleted without a tombstone is refused, and the key as held keeps
    /// being served. The revision is taken either way, so this node's
    /// next change to the key replaces what was refused.
    pub fn apply(&self, change: Change) -> Vec<Applied> {
        let mut manifest = self.manifest.locked();
        match change {
            Change::Put(stored) => self.apply_put(&mut manifest, stored).into_iter().collect(),
            Change::Deleted { name, revision } => {
                self.apply_deleted(&name, revision).into_iter().collect()
            }
            Change::Relisted(listing) => {
                self.applied(listing.revision);
                let listed: std::collections::HashSet<String> =
                    listing.records.iter().map(|r| r.name.clone()).collect();
                let mut out: Vec<Applied> = listing
                    .records
                    .into_iter()
                    .filter_map(|stored| self.apply_put(&mut manifest, stored))
                    .collect();
                let vanished: Vec<String> = self
                    .slots
                    .read_locked()
                    .iter()
                    .filter(|(n, h)| h.revision != 0 && !listed.contains(*n))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in vanished {
                    out.extend(self.apply_deleted(&name, listing.revision));
                }
                out
            }
        }
    }

    fn held_revision(&self, name: &str) -> u64 {
        match self.slots.read_locked().get(name) {
            Some(h) => h.revision,
            None => self.gone.locked().get(name).copied().unwrap_or(0),
        }
    }

    /// Keeps the key as held (or marks it corrupt if none is) at
    /// `revision`, and says why.
    fn refuse(&self, name: &str, revision: u64, kind: &'static str, e: RecordError) -> Applied {
        tracing::error!(key = name, error = %e, "refusing a record from the shared store");
        metrics::counter!("vaultgate_vault_store_refused_total", "kind" => kind).increment(1);
        let mut slots = self.slots.write_locked();
        match slots.get_mut(name) {
            Some(h) => h.revision = revision,
            None => {
                slots.insert(
                    name.to_owned(),
                    Held {
                        slot: Slot::Corrupt(e.clone()),
                        revision,
                    },
                );
            }
        }
        Applied::Refused(
            Alarm {
                kind,
                message: format!("{e}; the key is served as this node holds it"),
            },
            name.to_owned(),
        )
    }

    fn apply_put(&self, manifest: &mut Manifest, stored: Stored) -> Option<Applied> {
        let Stored {
            name,
            bytes,
            revision,
        } = stored;
        if revision <= self.held_revision(&name) {
            return None; // this node's own change, or one applied already
        }
        self.applied(revision);
        let anchor = manifest.anchor.clone().unwrap_or_else(Anchor::genesis);
        let known = manifest.keys.get(&name).copied();
        let deleted = manifest.deleted.get(&name).copied();
        match tombstone::read(&self.subkeys.manifest_mac, &name, &bytes) {
            tombstone::Read::Deleted(generation) => {
                if let Some(known) = known.filter(|k| *k >= generation) {
                    let e = RecordError::RolledBack {
                        name: name.clone(),
                        found: generation,
                        expected: known,
                    };
                    return Some(self.refuse(&name, revision, "key-rolled-back", e));
                }
                manifest.keys.remove(&name);
                manifest.deleted.insert(name.clone(), generation);
                manifest.generation += 1;
                self.write_manifest(manifest, anchor);
                self.slots.write_locked().remove(&name);
                self.gone.locked().insert(name.clone(), revision);
                return Some(Applied::Deleted(name));
            }
            tombstone::Read::Forged => {
                let e = RecordError::Unknown {
                    name: name.clone(),
                    why: " (a tombstone that fails its integrity check)".into(),
                };
                return Some(self.refuse(&name, revision, "key-unknown", e));
            }
            tombstone::Read::NotOne => {}
        }
        let key = match Key::from_bytes(&self.subkeys, &format!("{name}.json"), &bytes) {
            Ok(key) => key,
            Err(e) => return Some(self.refuse(&name, revision, "key-corrupt", e)),
        };
        let found = key.record.generation;
        let floor = match (known, deleted) {
            (Some(k), _) => Some(k + 1),
            (None, Some(t)) => Some(t),
            (None, None) => None,
        };
        if let Some(expected) = floor.filter(|f| found < *f) {
            let e = RecordError::RolledBack {
                name: name.clone(),
                found,
                expected,
            };
            return Some(self.refuse(&name, revision, "key-rolled-back", e));
        }
        manifest.note(&name, found);
        self.write_manifest(manifest, anchor);
        let key = Arc::new(key);
        self.gone.locked().remove(&name);
        self.slots.write_locked().insert(
            name,
            Held {
                slot: Slot::Ready(key.clone()),
                revision,
            },
        );
        Some(Applied::Changed(key))
    }

    /// A record deleted outright: no vault node does that (a deletion is
    /// a tombstone), so it is refused.
    fn apply_deleted(&self, name: &str, revision: u64) -> Option<Applied> {
        if revision != 0 && revision <= self.held_revision(name) {
            return None;
        }
        self.applied(revision);
        let expected = self.manifest_generation_of(name)?;
        let e = RecordError::Missing {
            name: name.to_owned(),
            expected,
        };
        // Revision 0: absent, so this node's next change creates it again.
        Some(self.refuse(name, 0, "key-missing", e))
    }

    fn manifest_generation_of(&self, name: &str) -> Option<u64> {
        self.slots
            .read_locked()
            .get(name)
            .and_then(|h| match &h.slot {
                Slot::Ready(k) => Some(k.record.generation),
                Slot::Corrupt(_) => None,
            })
    }
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
        let store = Keystore::open_local(state.path(), sk.clone(), None).unwrap();
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
        let store = Keystore::open_local(state.path(), sk, None).unwrap();
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
        let store = Keystore::open_local(state.path(), sk.clone(), Some(0)).unwrap();
        assert!(store.take_alarms().is_empty());
        assert!(keys.join(manifest::FILE).exists());
        let generation = store.generation();
        assert!(generation > 0);
        let Some(Ok(k)) = store.get("old") else {
            panic!("old not served")
        };
        store.put((*k).clone(), Anchor::genesis(), false).unwrap();
        drop(store);
        let store = Keystore::open_local(state.path(), sk.clone(), Some(generation + 1)).unwrap();
        assert!(store.take_alarms().is_empty());
        drop(store);
        // The record from before the upgrade, put back: refused.
        std::fs::write(keys.join("old.json"), &bytes).unwrap();
        let store = Keystore::open_local(state.path(), sk, Some(generation + 1)).unwrap();
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
