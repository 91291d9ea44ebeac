//! The keystore: `keys/*.json` in the state dir, loaded at start, written
//! crash-safely on every change, held in memory for the signing path.
//!
//! A record that fails its integrity check is kept as `Corrupt`: requests
//! for that key get a clear error, every other key keeps working.
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

use super::master::Subkeys;
use super::record::{Key, RecordError};
use crate::fsutil;
use crate::sync::RwLocked;

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
}

impl Keystore {
    /// Loads every record in `state_dir/keys`, creating the directory if
    /// needed and clearing temp files a crash may have left.
    pub fn open(state_dir: &Path, subkeys: Arc<Subkeys>) -> Result<Keystore, StoreError> {
        let dir = state_dir.join("keys");
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        fsutil::ensure_dir(&dir, 0o700).map_err(io)?;
        fsutil::remove_stale_temps(&dir).map_err(io)?;
        recover_staged(&dir).map_err(io)?;
        let mut slots = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            let slot = match std::fs::read(entry.path()) {
                Ok(bytes) => match Key::from_bytes(&subkeys, &file, &bytes) {
                    Ok(key) => Slot::Ready(Arc::new(key)),
                    Err(e) => {
                        tracing::error!(error = %e, "refusing corrupt key record");
                        Slot::Corrupt(e)
                    }
                },
                Err(e) => Slot::Corrupt(RecordError::Parse {
                    file: file.clone(),
                    message: e.to_string(),
                }),
            };
            slots.insert(name.to_owned(), slot);
        }
        Ok(Keystore {
            dir,
            subkeys,
            slots: RwLock::new(slots),
        })
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
    pub fn put(&self, mut key: Key) -> Result<Arc<Key>, StoreError> {
        let path = self.path(key.name());
        let bytes = key.seal_to_bytes(&self.subkeys);
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let key = Arc::new(key);
        let mut slots = self.slots.write_locked();
        slots.insert(key.name().to_owned(), Slot::Ready(key.clone()));
        Ok(key)
    }

    /// Writes every key of `keys` (none of which exists) durably, then
    /// makes them visible together; if any write fails, none is kept, on
    /// disk or in memory. Callers serialise writes.
    pub fn put_all(&self, keys: Vec<Key>) -> Result<Vec<Arc<Key>>, StoreError> {
        let id = hex::encode(
            &crate::vault::keys::random_bytes(8).map_err(|_| StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no randomness for a staging dir name"),
            })?[..],
        );
        let stage = self.dir.join(format!(".stage-{id}"));
        let commit = self.dir.join(format!(".commit-{id}"));
        let mut keys = keys;
        let staged = (|| {
            fsutil::ensure_dir(&stage, 0o700)?;
            for key in &mut keys {
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
        let keys: Vec<Arc<Key>> = keys.into_iter().map(Arc::new).collect();
        let mut slots = self.slots.write_locked();
        for key in &keys {
            slots.insert(key.name().to_owned(), Slot::Ready(key.clone()));
        }
        Ok(keys)
    }

    /// Deletes a key's record for good.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
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
        let store = Keystore::open(state.path(), sk.clone()).unwrap();
        store.put_all(vec![key(&sk, "a"), key(&sk, "b")]).unwrap();
        let keys = state.path().join("keys");
        let names = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&keys), ["a.json", "b.json"]);

        // What a crash leaves: one import staged, one committed, half moved.
        let stage = keys.join(".stage-1");
        let commit = keys.join(".commit-2");
        for (dir, name) in [(&stage, "c"), (&commit, "d"), (&commit, "e")] {
            std::fs::create_dir_all(dir).unwrap();
            let bytes = key(&sk, name).seal_to_bytes(&sk);
            std::fs::write(dir.join(format!("{name}.json")), bytes).unwrap();
        }
        std::fs::write(stage.join(".c.json.tmp-9"), b"half").unwrap();
        std::fs::rename(commit.join("d.json"), keys.join("d.json")).unwrap();
        let store = Keystore::open(state.path(), sk).unwrap();
        assert_eq!(names(&keys), ["a.json", "b.json", "d.json", "e.json"]);
        let listed: Vec<String> = store.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, ["a", "b", "d", "e"]);
        assert!(store.list().iter().all(|(_, k)| k.is_ok()));
    }
}
