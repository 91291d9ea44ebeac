//! Keys and values under the prefix: consistent listings, and every
//! change as one transaction guarded by what the caller read.
//!
//! Keys given and returned are relative to the prefix; values are bytes
//! (what they mean is the caller's).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;

use super::endpoints::{Needs, OVERALL_TIMEOUT};
use super::error::EtcdError;
use super::{Etcd, Revision, Shared};

/// One key as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
    pub create_revision: Revision,
}

/// A range read and the store revision it was taken at: watching from
/// `revision + 1` misses nothing and repeats nothing.
#[derive(Clone, Debug)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub revision: Revision,
}

/// What a transaction requires of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The key does not exist.
    Absent { key: String },
    /// The key was last written at `revision` (as read).
    ModRevision { key: String, revision: Revision },
    /// The key was created at `revision`: a fencing token, the elected
    /// leader's key still being the one it created.
    CreateRevision { key: String, revision: Revision },
}

impl Condition {
    pub fn key(&self) -> &str {
        match self {
            Condition::Absent { key }
            | Condition::ModRevision { key, .. }
            | Condition::CreateRevision { key, .. } => key,
        }
    }

    fn holds_for(&self, now: Option<&etcd_client::KeyValue>) -> bool {
        match (self, now) {
            (Condition::Absent { .. }, now) => now.is_none(),
            (Condition::ModRevision { revision, .. }, Some(kv)) => kv.mod_revision() == *revision,
            (Condition::CreateRevision { revision, .. }, Some(kv)) => {
                kv.create_revision() == *revision
            }
            (_, None) => false,
        }
    }
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Shared {
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn entry(&self, kv: &etcd_client::KeyValue) -> Result<Entry, EtcdError> {
        let raw = kv.key();
        let key = std::str::from_utf8(raw)
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .ok_or_else(|| EtcdError::BadKey {
                key: String::from_utf8_lossy(raw).into_owned(),
            })?;
        Ok(Entry {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        })
    }

    pub(crate) async fn range(
        &self,
        key: &str,
        prefix: bool,
        needs: Needs,
    ) -> Result<Listing, EtcdError> {
        let full = self.full(key);
        let mut options = GetOptions::new();
        if prefix {
            options = options.with_prefix();
        }
        if needs == Needs::Any {
            options = options.with_serializable();
        }
        let op = format!("read {full}");
        let deadline = Instant::now() + OVERALL_TIMEOUT;
        let resp = self
            .endpoints
            .call(&op, needs, deadline, |mut c| {
                let (full, options) = (full.clone(), options.clone());
                async move { c.get(full, Some(options)).await }
            })
            .await?
            .value;
        let revision = resp.header().ok_or(EtcdError::NoHeader { op })?.revision();
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| self.entry(kv))
            .collect::<Result<_, _>>()?;
        Ok(Listing { entries, revision })
    }

    /// The transaction: all `conditions` hold, then every write. When a
    /// condition fails, the keys are read back in the same transaction to
    /// name the one that changed.
    pub(crate) async fn commit(
        &self,
        conditions: &[Condition],
        writes: &[Write],
    ) -> Result<Revision, EtcdError> {
        let compares: Vec<Compare> = conditions
            .iter()
            .map(|c| {
                let full = self.full(c.key());
                match c {
                    Condition::Absent { .. } => Compare::version(full, CompareOp::Equal, 0),
                    Condition::ModRevision { revision, .. } => {
                        Compare::mod_revision(full, CompareOp::Equal, *revision)
                    }
                    Condition::CreateRevision { revision, .. } => {
                        Compare::create_revision(full, CompareOp::Equal, *revision)
                    }
                }
            })
            .collect();
        let then: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                Write::Put { key, value } => TxnOp::put(self.full(key), value.clone(), None),
                Write::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let reread: Vec<TxnOp> = conditions
            .iter()
            .map(|c| TxnOp::get(self.full(c.key()), Some(GetOptions::new().with_keys_only())))
            .collect();
        let txn = Txn::new().when(compares).and_then(then).or_else(reread);
        let first = writes
            .first()
            .map(|w| match w {
                Write::Put { key, .. } | Write::Delete { key } => key.as_str(),
            })
            .or(conditions.first().map(Condition::key))
            .unwrap_or_default();
        let op = format!("transaction on {}", self.full(first));
        let deadline = Instant::now() + OVERALL_TIMEOUT;
        let answered = self
            .endpoints
            .call(&op, Needs::Leader, deadline, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let resp = answered.value;
        if resp.succeeded() {
            return Ok(resp.header().ok_or(EtcdError::NoHeader { op })?.revision());
        }
        let changed = conditions
            .iter()
            .zip(resp.op_responses())
            .find(|(c, r)| {
                let now = match r {
                    TxnOpResponse::Get(g) => g.kvs().first(),
                    _ => None,
                };
                !c.holds_for(now)
            })
            .map_or(first, |(c, _)| c.key());
        Err(EtcdError::Conflict {
            key: changed.to_owned(),
            maybe_ours: answered.retried,
        })
    }
}

impl Etcd {
    /// Every key under `sub_prefix`, in one linearizable read.
    pub async fn list(&self, sub_prefix: &str) -> Result<Listing, EtcdError> {
        self.shared.range(sub_prefix, true, Needs::Leader).await
    }

    /// `list` from whichever member answers, from its own copy: works
    /// without quorum, and may be behind.
    pub async fn list_serializable(&self, sub_prefix: &str) -> Result<Listing, EtcdError> {
        self.shared.range(sub_prefix, true, Needs::Any).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Entry>, EtcdError> {
        let listing = self.shared.range(key, false, Needs::Leader).await?;
        Ok(listing.entries.into_iter().next())
    }

    /// Writes `key` if it does not exist; the committed revision.
    pub async fn create(&self, key: &str, value: &[u8]) -> Result<Revision, EtcdError> {
        self.commit(
            &[Condition::Absent { key: key.into() }],
            &[Write::Put {
                key: key.into(),
                value: value.to_vec(),
            }],
        )
        .await
    }

    /// Writes `key` if it is still as read at `mod_revision`.
    pub async fn replace(
        &self,
        key: &str,
        value: &[u8],
        mod_revision: Revision,
    ) -> Result<Revision, EtcdError> {
        self.commit(
            &[Condition::ModRevision {
                key: key.into(),
                revision: mod_revision,
            }],
            &[Write::Put {
                key: key.into(),
                value: value.to_vec(),
            }],
        )
        .await
    }

    /// Deletes `key` if it is still as read at `mod_revision`.
    pub async fn delete_if(
        &self,
        key: &str,
        mod_revision: Revision,
    ) -> Result<Revision, EtcdError> {
        self.commit(
            &[Condition::ModRevision {
                key: key.into(),
                revision: mod_revision,
            }],
            &[Write::Delete { key: key.into() }],
        )
        .await
    }

    /// Puts every `(key, value)` if every condition holds: a record and
    /// what must move with it (an audit anchor), under the record's
    /// revision and a fence.
    pub async fn txn_put_all(
        &self,
        conditions: &[Condition],
        puts: &[(String, Vec<u8>)],
    ) -> Result<Revision, EtcdError> {
        let writes: Vec<Write> = puts
            .iter()
            .map(|(key, value)| Write::Put {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        self.commit(conditions, &writes).await
    }

    /// The general transaction: every write, if every condition holds;
    /// [`EtcdError::Conflict`] names the first condition that failed.
    pub async fn commit(
        &self,
        conditions: &[Condition],
        writes: &[Write],
    ) -> Result<Revision, EtcdError> {
        self.shared.commit(conditions, writes).await
    }
}
