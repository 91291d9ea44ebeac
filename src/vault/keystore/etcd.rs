//! The etcd backend: one keystore shared by every vault node of a
//! cluster ([`crate::etcd`] is the client under it).
//!
//! Under the configured prefix: `keys/NAME`, the same sealed record a
//! local keystore keeps in `keys/NAME.json` (or a deleted key's
//! [`super::tombstone`]); `master-check`, the check value of the master
//! key the cluster's records are sealed under. etcd sees names, sizes
//! and timing, never key bytes.
//!
//! Every change is one transaction that compares the record's revision
//! with the one this node read, so two nodes changing one key at once
//! cannot both win; the loser re-reads and decides again. A change whose
//! answer was lost (a member died mid-call) is recognised by reading the
//! key back: the bytes are this node's (each seal is unique) or not.
//! Changes made on other nodes arrive by [`Follow`].

use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Change, Expect, Follow, Listing, StoreError, Stored};
use std::sync::Mutex;

use crate::etcd::{Campaign, Condition, Etcd, EtcdError, Leadership, Watch, WatchEvent, Write};
use crate::sync::Locked;
use crate::vault::audit::Anchor;

const KEYS: &str = "keys/";
const MASTER_CHECK: &str = "master-check";
/// The election of the node that runs scheduled work.
const SCHEDULER: &str = "scheduler";
/// The scheduler's lease: how long a dead scheduler's work waits.
const SCHEDULER_TTL: Duration = Duration::from_secs(10);

pub struct EtcdBackend {
    etcd: Arc<Etcd>,
    /// This node's name: where its audit anchor goes, who campaigns.
    node: String,
    /// This node's candidacy to be the scheduler, once asked for.
    scheduler: Mutex<Option<Campaign>>,
}

fn key_of(name: &str) -> String {
    format!("{KEYS}{name}")
}

fn unavailable(e: EtcdError) -> StoreError {
    match e {
        // Only records and the scheduler's fence are compared.
        EtcdError::Conflict { key, .. } => match key.strip_prefix(KEYS) {
            Some(name) => StoreError::Conflict {
                name: name.to_owned(),
            },
            None => StoreError::NotScheduler,
        },
        e => StoreError::Etcd(Box::new(e)),
    }
}

impl EtcdBackend {
    pub fn new(etcd: Etcd, node: &str) -> EtcdBackend {
        EtcdBackend {
            etcd: Arc::new(etcd),
            node: node.to_owned(),
            scheduler: Mutex::new(None),
        }
    }

    fn anchor_key(&self) -> String {
        format!("audit/{}", self.node)
    }

    /// Holds `check` (the master key's check value) against the
    /// cluster's, writing it if this is the cluster's first node.
    pub fn claim_master(&self, check: &str) -> Result<(), StoreError> {
        let etcd = &self.etcd;
        loop {
            let found = etcd.block_on(etcd.get(MASTER_CHECK)).map_err(unavailable)?;
            match found {
                Some(entry) if entry.value == check.as_bytes() => return Ok(()),
                Some(_) => {
                    return Err(StoreError::MasterMismatch {
                        prefix: etcd.prefix().to_owned(),
                    })
                }
                None => match etcd.block_on(etcd.create(MASTER_CHECK, check.as_bytes())) {
                    Ok(_) => {
                        tracing::info!(prefix = etcd.prefix(), "first node of this cluster: its master key's check value is the cluster's");
                        return Ok(());
                    }
                    // Another node was first: compare with its value.
                    Err(EtcdError::Conflict { .. }) => continue,
                    Err(e) => return Err(unavailable(e)),
                },
            }
        }
    }

    fn listing(&self) -> Result<Listing, StoreError> {
        let etcd = &self.etcd;
        let listed = etcd.block_on(etcd.list(KEYS)).map_err(unavailable)?;
        let mut listing = Listing {
            revision: listed.revision as u64,
            ..Listing::default()
        };
        for e in listed.entries {
            if let Some(name) = e.key.strip_prefix(KEYS) {
                listing.records.push(Stored {
                    name: name.to_owned(),
                    bytes: e.value,
                    revision: e.mod_revision as u64,
                });
            }
        }
        Ok(listing)
    }

    /// A transaction that failed its compare, or whose answer was lost:
    /// committed if the key now holds exactly `bytes`.
    fn ours(&self, name: &str, bytes: Option<&[u8]>, e: EtcdError) -> Result<u64, StoreError> {
        let EtcdError::Conflict {
            maybe_ours: true, ..
        } = e
        else {
            return Err(unavailable(e));
        };
        let etcd = &self.etcd;
        let now = etcd
            .block_on(etcd.get(&key_of(name)))
            .map_err(unavailable)?;
        match (now, bytes) {
            (Some(entry), Some(b)) if entry.value == b => {
                tracing::info!(key = name, "a change whose answer was lost had committed");
                Ok(entry.mod_revision as u64)
            }
            _ => Err(StoreError::Conflict {
                name: name.to_owned(),
            }),
        }
    }
}

fn condition(name: &str, expect: Expect) -> Condition {
    match expect {
        Expect::Absent => Condition::Absent { key: key_of(name) },
        Expect::At(revision) => Condition::ModRevision {
            key: key_of(name),
            revision: revision as i64,
        },
    }
}

impl Backend for EtcdBackend {
    fn list(&self) -> Result<Listing, StoreError> {
        self.listing()
    }

    fn get(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let etcd = &self.etcd;
        let found = etcd
            .block_on(etcd.get(&key_of(name)))
            .map_err(unavailable)?;
        Ok(found.map(|e| Stored {
            name: name.to_owned(),
            bytes: e.value,
            revision: e.mod_revision as u64,
        }))
    }

    fn put(
        &self,
        name: &str,
        bytes: &[u8],
        expect: Expect,
        scheduled: bool,
    ) -> Result<u64, StoreError> {
        let etcd = &self.etcd;
        let writes = [Write::Put {
            key: key_of(name),
            value: bytes.to_vec(),
        }];
        let mut conditions = vec![condition(name, expect)];
        if scheduled {
            let fence = self.scheduler.locked().as_ref().and_then(Campaign::fence);
            conditions.push(fence.ok_or(StoreError::NotScheduler)?);
        }
        match etcd.block_on(etcd.commit(&conditions, &writes)) {
            Ok(revision) => Ok(revision as u64),
            Err(e) => self.ours(name, Some(bytes), e),
        }
    }

    fn put_all(&self, records: &[(String, Vec<u8>)]) -> Result<u64, StoreError> {
        let etcd = &self.etcd;
        let conditions: Vec<Condition> = records
            .iter()
            .map(|(name, _)| condition(name, Expect::Absent))
            .collect();
        let writes: Vec<Write> = records
            .iter()
            .map(|(name, bytes)| Write::Put {
                key: key_of(name),
                value: bytes.clone(),
            })
            .collect();
        match etcd.block_on(etcd.commit(&conditions, &writes)) {
            Ok(revision) => Ok(revision as u64),
            Err(e) => match records.first() {
                Some((name, bytes)) => self.ours(name, Some(bytes), e),
                None => Err(unavailable(e)),
            },
        }
    }

    fn delete(
        &self,
        name: &str,
        expect: Expect,
        tombstone: &[u8],
        scheduled: bool,
    ) -> Result<u64, StoreError> {
        // The tombstone takes the record's place: see `super::tombstone`.
        self.put(name, tombstone, expect, scheduled)
    }

    /// Campaigns (again, after a loss) and says whether this node leads.
    fn schedules(&self) -> bool {
        let mut campaign = self.scheduler.locked();
        if campaign
            .as_ref()
            .is_none_or(|c| matches!(c.state(), Leadership::Lost(_)))
        {
            let etcd = &self.etcd;
            *campaign = match etcd.block_on(etcd.campaign(SCHEDULER, &self.node, SCHEDULER_TTL)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot stand for scheduler");
                    None
                }
            };
        }
        let leads = campaign.as_ref().is_some_and(Campaign::is_leader);
        metrics::gauge!("vaultgate_vault_scheduler").set(if leads { 1.0 } else { 0.0 });
        leads
    }

    fn put_audit_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        let value = serde_json::to_vec(anchor).unwrap_or_default();
        let etcd = &self.etcd;
        let writes = [Write::Put {
            key: self.anchor_key(),
            value,
        }];
        etcd.block_on(etcd.commit(&[], &writes))
            .map(|_| ())
            .map_err(unavailable)
    }

    fn audit_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        let etcd = &self.etcd;
        let found = etcd
            .block_on(etcd.get(&self.anchor_key()))
            .map_err(unavailable)?;
        Ok(found.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    fn follow(&self, after: u64) -> Option<Box<dyn Follow>> {
        Some(Box::new(EtcdFollow {
            watch: Some(self.etcd.watch(KEYS, after as i64 + 1)),
            backend: EtcdBackend {
                etcd: self.etcd.clone(),
                node: self.node.clone(),
                scheduler: Mutex::new(None),
            },
        }))
    }
}

/// The changes under `keys/` after a revision, re-listing when the watch
/// ends (compaction past it, or etcd unreachable for too long).
struct EtcdFollow {
    backend: EtcdBackend,
    /// None: ended, to be re-listed and watched again.
    watch: Option<Watch>,
}

impl Follow for EtcdFollow {
    fn next(&mut self, wait: Duration) -> Option<Change> {
        let Some(watch) = &mut self.watch else {
            metrics::counter!("vaultgate_vault_store_watch_restarts_total").increment(1);
            return match self.backend.listing() {
                Ok(listing) => {
                    self.watch = Some(self.backend.etcd.watch(KEYS, listing.revision as i64 + 1));
                    Some(Change::Relisted(listing))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-list the keystore; serving what is held, retrying");
                    metrics::counter!("vaultgate_vault_store_errors_total").increment(1);
                    std::thread::park_timeout(wait);
                    None
                }
            };
        };
        let name = |key: &str| key.strip_prefix(KEYS).map(str::to_owned);
        match watch.recv_timeout(wait)? {
            WatchEvent::Put {
                key,
                value,
                mod_revision,
            } => Some(Change::Put(Stored {
                name: name(&key)?,
                bytes: value,
                revision: mod_revision as u64,
            })),
            WatchEvent::Delete { key, mod_revision } => Some(Change::Deleted {
                name: name(&key)?,
                revision: mod_revision as u64,
            }),
            WatchEvent::Compacted { compact_revision } => {
                tracing::warn!(
                    compact_revision,
                    "etcd compacted past this node's watch: re-listing"
                );
                self.watch = None;
                None
            }
            WatchEvent::Broken {
                next_revision,
                error,
            } => {
                tracing::warn!(next_revision, error = %error, "the keystore watch broke: re-listing");
                metrics::counter!("vaultgate_vault_store_errors_total").increment(1);
                self.watch = None;
                None
            }
        }
    }
}
