//! The keystore: `keys/*.json` in the state dir, loaded at start, written
//! crash-safely on every change, held in memory for the signing path.
//!
//! A record that fails its integrity check is kept as `Corrupt`: requests
//! for that key get a clear error, every other key keeps working.

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
