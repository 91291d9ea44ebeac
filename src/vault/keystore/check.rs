//! The records found at start, held against the manifest: what a crash
//! explains is finished or kept, the rest refused by name and raised as
//! an alarm.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{Held, Slot};
use crate::vault::audit::Alarm;
use crate::vault::manifest::{self, Manifest, Verdict};
use crate::vault::master::Subkeys;
use crate::vault::record::{Key, KeyState, RecordError};

/// The check of the records found at start against the manifest.
pub(super) struct Check {
    manifest: Manifest,
    /// Whether the manifest was read and verified (if not, the records
    /// found are taken as they are).
    trusted: bool,
    /// Whether other nodes write the store too: a name this node never
    /// saw is one created elsewhere, not planted.
    shared: bool,
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
    pub(super) fn new(
        dir: &Path,
        subkeys: &Subkeys,
        head: Option<u64>,
        shared: bool,
    ) -> std::io::Result<Check> {
        let mut check = Check {
            manifest: Manifest::new(),
            trusted: false,
            shared,
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
    pub(super) fn admit(&mut self, name: &str, key: Key, now: u64) -> Option<Slot> {
        let found = key.record.generation;
        let known =
            self.manifest.keys.contains_key(name) || self.manifest.deleted.contains_key(name);
        let verdict = if !self.trusted || (self.shared && !known) {
            Verdict::Ahead
        } else {
            match self.manifest.judge(name, found) {
                // In a shared store the tombstone replaces the record in
                // one write: no crash leaves the record behind it.
                Verdict::Deleting { tombstone } if self.shared => Verdict::Unknown {
                    why: format!(" (the key was deleted at generation {tombstone}; this is its record put back)"),
                },
                v => v,
            }
        };
        let refused = match verdict {
            Verdict::Current => None,
            Verdict::Ahead => {
                if self.trusted && !self.shared {
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

    /// Raises `e`, found at start, as an alarm of `kind`.
    pub(super) fn refuse(&mut self, kind: &'static str, e: &RecordError, name: &str) {
        self.alarm(kind, e.to_string(), Some(name));
    }

    /// A tombstone found for `name` at `generation`: the deletion noted,
    /// or, if the manifest knows the key newer than that, refused as a
    /// tombstone put back over a key created again.
    pub(super) fn tombstone(&mut self, name: &str, generation: u64) -> Option<Slot> {
        match self.manifest.keys.get(name) {
            Some(&known) if known >= generation => {
                let e = RecordError::RolledBack {
                    name: name.to_owned(),
                    found: generation,
                    expected: known,
                };
                self.alarm("key-rolled-back", e.to_string(), Some(name));
                Some(Slot::Corrupt(e))
            }
            _ => {
                let old = self.manifest.deleted.get(name).copied().unwrap_or(0);
                if generation > old {
                    self.manifest.keys.remove(name);
                    self.manifest.deleted.insert(name.to_owned(), generation);
                    self.dirty = true;
                }
                None
            }
        }
    }

    /// A slot for each key the manifest lists but whose record is gone.
    pub(super) fn missing(&mut self, slots: &mut HashMap<String, Held>) {
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
            slots.insert(
                name,
                Held {
                    slot: Slot::Corrupt(e),
                    revision: 0,
                },
            );
        }
    }

    /// The manifest to keep, whether it must be written again, and the
    /// alarms raised.
    pub(super) fn finish(self) -> (Manifest, bool, Vec<(Alarm, Option<String>)>) {
        if self.dirty && !self.trusted && self.alarms.is_empty() {
            tracing::info!(
                "the keystore had no manifest (written before manifests existed): writing one"
            );
        }
        (self.manifest, self.dirty, self.alarms)
    }
}
