//! The local backend: one file per key in `state_dir/keys`, the
//! embedded default.
//!
//! Each record is written to a temp file, synced and renamed over the old
//! one, so a crash leaves the old record or the new, never half of one.
//! Many keys at once (a backup restored) are written all or none: into a
//! staging dir `keys/.stage-ID`, each file synced; renaming that dir to
//! `keys/.commit-ID` is the one instant the import happens; the records
//! are then renamed into `keys/`. Opening removes a `.stage-` dir (a crash
//! before the commit: nothing imported) and finishes a `.commit-` dir (a
//! crash after it: everything imported).
//!
//! One process writes here, its changes serialised by the vault, so the
//! expected revision a change names is not checked: revisions are all 0.

use std::path::{Path, PathBuf};

use super::{Backend, Expect, Listing, StoreError, Stored};
use crate::fsutil;

pub struct LocalBackend {
    dir: PathBuf,
}

impl LocalBackend {
    /// Opens `state_dir/keys`, creating it if needed, clearing temp files
    /// and finishing or undoing imports a crash interrupted.
    pub fn open(state_dir: &Path) -> Result<LocalBackend, StoreError> {
        let dir = state_dir.join("keys");
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        fsutil::ensure_dir(&dir, 0o700).map_err(io)?;
        fsutil::remove_stale_temps(&dir).map_err(io)?;
        recover_staged(&dir).map_err(io)?;
        Ok(LocalBackend { dir })
    }

    /// Where the records are: the manifest goes beside them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl Backend for LocalBackend {
    fn list(&self) -> Result<Listing, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut listing = Listing::default();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            match std::fs::read(entry.path()) {
                Ok(bytes) => listing.records.push(Stored {
                    name: name.to_owned(),
                    bytes,
                    revision: 0,
                }),
                Err(e) => listing.unreadable.push((name.to_owned(), e.to_string())),
            }
        }
        Ok(listing)
    }

    fn get(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Stored {
                name: name.to_owned(),
                bytes,
                revision: 0,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn put(
        &self,
        name: &str,
        bytes: &[u8],
        _expect: Expect,
        _scheduled: bool,
    ) -> Result<u64, StoreError> {
        let path = self.path(name);
        fsutil::write_atomic(&path, bytes, 0o600)
            .map_err(|source| StoreError::Io { path, source })?;
        Ok(0)
    }

    fn put_all(&self, records: &[(String, Vec<u8>)]) -> Result<u64, StoreError> {
        let id = hex::encode(
            &crate::vault::keys::random_bytes(8).map_err(|_| StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no randomness for a staging dir name"),
            })?[..],
        );
        let stage = self.dir.join(format!(".stage-{id}"));
        let commit = self.dir.join(format!(".commit-{id}"));
        let staged = (|| {
            fsutil::ensure_dir(&stage, 0o700)?;
            for (name, bytes) in records {
                fsutil::write_atomic(&stage.join(format!("{name}.json")), bytes, 0o600)?;
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
        Ok(0)
    }

    /// The manifest keeps deleted names here: no tombstone is written.
    fn delete(
        &self,
        name: &str,
        _expect: Expect,
        _tombstone: &[u8],
        _scheduled: bool,
    ) -> Result<u64, StoreError> {
        let path = self.path(name);
        match fsutil::remove_durable(&path) {
            Ok(()) => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StoreError::Io { path, source }),
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
