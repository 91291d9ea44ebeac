//! `vaultgate store migrate`: a single node's keystore moved into an
//! empty cluster on etcd, with the old vault stopped.
//!
//! The old keystore is opened as the vault would open it, manifest check
//! and all: a keystore that raised an integrity alarm or holds a record
//! that does not open is refused by name, so nothing doubtful reaches
//! the cluster. The records are then copied as they are, byte for byte
//! (the etcd layout is the same sealed record, generation included), in
//! one transaction: the cluster holds every key or none. Nothing is
//! decrypted on the way beyond what the manifest check needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::keystore::etcd::EtcdBackend;
use super::keystore::local::LocalBackend;
use super::keystore::{Backend, Keystore, StoreError};
use super::master::{self, MasterError, Subkeys};
use super::record::Key;
use crate::config::vault::MasterKeySource;
use crate::etcd::{Etcd, EtcdError};

/// etcd's own limits on one transaction (`--max-request-bytes`,
/// `--max-txn-ops`), at their defaults; a cluster set higher says so
/// with [`Limits`].
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
pub const MAX_TXN_OPS: usize = 128;

/// What a request costs etcd beyond the keys and values it carries, per
/// operation (protobuf framing, generously).
const PER_OP_BYTES: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_bytes: usize,
    pub txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_bytes: MAX_REQUEST_BYTES,
            txn_ops: MAX_TXN_OPS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("master key of {dir}: {source}", dir = .dir.display())]
    Master { dir: PathBuf, source: MasterError },
    #[error("master key of {}: key derivation failed", .0.display())]
    Derive(PathBuf),
    #[error("keystore in {dir}: {source}", dir = .dir.display())]
    Local { dir: PathBuf, source: StoreError },
    #[error("refusing to migrate {}: opening its keystore raised integrity alarms: {}; start the vault on it and resolve them first", .dir.display(), .alarms.join("; "))]
    Alarms { dir: PathBuf, alarms: Vec<String> },
    #[error("refusing to migrate {dir}: {error}", dir = .dir.display())]
    Unreadable { dir: PathBuf, error: String },
    #[error("{} holds no keys: nothing to migrate", .0.display())]
    Nothing(PathBuf),
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error("the cluster: {0}")]
    Cluster(StoreError),
    #[error("refusing to migrate: the cluster under etcd prefix {prefix:?} is not empty (it holds {count} key record(s), {first:?} among them); migrate only into a cluster no node has written keys to")]
    NotEmpty {
        prefix: String,
        count: usize,
        first: String,
    },
    #[error("refusing to migrate: the {keys} keys make one etcd transaction of about {bytes} bytes, over etcd's request limit of {limit} bytes (--max-request-bytes; its largest record is {largest:?}): raise the limit on every etcd member and pass the same --etcd-max-request-bytes here")]
    TooLarge {
        keys: usize,
        bytes: usize,
        limit: usize,
        largest: String,
    },
    #[error("refusing to migrate: {keys} keys take {keys} operations in one etcd transaction, over etcd's limit of {limit} (--max-txn-ops): raise it on every etcd member and pass the same --etcd-max-txn-ops here")]
    TooManyKeys { keys: usize, limit: usize },
    #[error("after the migration the cluster's record of key {0:?} is not the one written; check the cluster before starting nodes on it")]
    Differs(String),
}

/// One key as moved.
pub struct Moved {
    pub name: String,
    pub key_type: &'static str,
    pub state: &'static str,
    pub versions: Vec<u32>,
    pub primary: u32,
    /// Versions with a certificate bound.
    pub certificates: Vec<u32>,
    pub generation: u64,
    pub bytes: usize,
}

pub struct Report {
    pub keys: Vec<Moved>,
    /// The etcd revision the transaction committed at.
    pub revision: u64,
    pub bytes: usize,
}

/// A single node's keystore, checked and read.
struct Source {
    subkeys: Arc<Subkeys>,
    records: Vec<(String, Vec<u8>)>,
    keys: Vec<Moved>,
}

/// Opens the keystore in `dir` as the vault would and reads every
/// record's bytes; refuses one that raised alarms or does not open.
fn read_source(dir: &Path, source: &MasterKeySource) -> Result<Source, MigrateError> {
    let master = master::obtain_existing(dir, source).map_err(|source| MigrateError::Master {
        dir: dir.to_owned(),
        source,
    })?;
    let subkeys =
        Arc::new(Subkeys::derive(&master).map_err(|_| MigrateError::Derive(dir.to_owned()))?);
    drop(master);
    let local = |source| MigrateError::Local {
        dir: dir.to_owned(),
        source,
    };
    let head = super::audit::head_manifest(dir, &subkeys.audit_mac).map_err(|source| {
        local(StoreError::Io {
            path: dir.join(super::audit::HEAD_FILE),
            source,
        })
    })?;
    let store = Keystore::open_local(dir, subkeys.clone(), head).map_err(local)?;
    let alarms: Vec<String> = store
        .take_alarms()
        .into_iter()
        .map(|(a, key)| match key {
            Some(k) => format!("{} (key {k:?}): {}", a.kind, a.message),
            None => format!("{}: {}", a.kind, a.message),
        })
        .collect();
    if !alarms.is_empty() {
        return Err(MigrateError::Alarms {
            dir: dir.to_owned(),
            alarms,
        });
    }
    let backend = LocalBackend::open(dir).map_err(local)?;
    let mut records = Vec::new();
    let mut keys = Vec::new();
    for (name, held) in store.list() {
        let unreadable = |error: String| MigrateError::Unreadable {
            dir: dir.to_owned(),
            error,
        };
        let key = held.map_err(|e| unreadable(e.to_string()))?;
        let Some(stored) = backend.get(&name).map_err(local)? else {
            return Err(unreadable(format!(
                "key {name:?}: its record vanished while reading"
            )));
        };
        // The bytes copied are the record checked: a vault still running
        // on the dir would show here.
        let again = Key::from_bytes(&subkeys, &format!("{name}.json"), &stored.bytes)
            .map_err(|e| unreadable(e.to_string()))?;
        if again.record != key.record {
            return Err(unreadable(format!(
                "key {name:?} changed while reading: stop the vault using {} first",
                dir.display()
            )));
        }
        keys.push(moved(&key, stored.bytes.len()));
        records.push((name, stored.bytes));
    }
    if records.is_empty() {
        return Err(MigrateError::Nothing(dir.to_owned()));
    }
    Ok(Source {
        subkeys,
        records,
        keys,
    })
}

fn moved(key: &Key, bytes: usize) -> Moved {
    let r = &key.record;
    Moved {
        name: r.name.clone(),
        key_type: r.key_type.name(),
        state: r.state.name(),
        versions: r.versions.iter().map(|v| v.version).collect(),
        primary: r.primary,
        certificates: r
            .versions
            .iter()
            .filter(|v| v.cert_chain.is_some())
            .map(|v| v.version)
            .collect(),
        generation: r.generation,
        bytes,
    }
}

/// The transaction's size as etcd counts it, near enough; refuses one
/// etcd would.
fn check_size(
    prefix: &str,
    records: &[(String, Vec<u8>)],
    limits: Limits,
) -> Result<usize, MigrateError> {
    if records.len() > limits.txn_ops {
        return Err(MigrateError::TooManyKeys {
            keys: records.len(),
            limit: limits.txn_ops,
        });
    }
    // Each record: a compare (absent), a put, and a read-back if the
    // compare fails, each naming the full key.
    let bytes: usize = records
        .iter()
        .map(|(name, b)| 3 * (prefix.len() + "keys/".len() + name.len() + PER_OP_BYTES) + b.len())
        .sum();
    if bytes > limits.request_bytes {
        let largest = records
            .iter()
            .max_by_key(|(_, b)| b.len())
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        return Err(MigrateError::TooLarge {
            keys: records.len(),
            bytes,
            limit: limits.request_bytes,
            largest,
        });
    }
    Ok(bytes)
}

/// Moves the keystore in `dir` into the empty cluster `etcd` reaches.
pub fn migrate(
    dir: &Path,
    source: &MasterKeySource,
    etcd: Etcd,
    limits: Limits,
) -> Result<Report, MigrateError> {
    let Source {
        subkeys,
        records,
        keys,
    } = read_source(dir, source)?;
    let prefix = etcd.prefix().to_owned();
    let bytes = check_size(&prefix, &records, limits)?;
    // Not a node: it anchors no audit log and never schedules.
    let backend = EtcdBackend::new(etcd, "store-migrate");
    let existing = backend.list().map_err(MigrateError::Cluster)?;
    if let Some(first) = existing.records.first() {
        return Err(MigrateError::NotEmpty {
            prefix,
            count: existing.records.len(),
            first: first.name.clone(),
        });
    }
    // Before any record: a cluster sealed under another master key
    // refuses here, with nothing written. The check value stays if the
    // records' write then fails: it is this key's, which the nodes need.
    backend
        .claim_master(&subkeys.cluster_check())
        .map_err(MigrateError::Cluster)?;
    let revision = backend.put_all(&records).map_err(MigrateError::Cluster)?;
    for (name, bytes) in &records {
        let found = backend.get(name).map_err(MigrateError::Cluster)?;
        if found.is_none_or(|s| s.bytes != *bytes) {
            return Err(MigrateError::Differs(name.clone()));
        }
    }
    Ok(Report {
        keys,
        revision,
        bytes,
    })
}
