//! "I am here": a key that lives exactly as long as this process keeps
//! its lease, for the list of a cluster's nodes.
//!
//! The key is created only if absent, so two live processes cannot hold
//! one name; a process that dies leaves it for one ttl at most. If the
//! lease is lost (etcd unreachable for a whole ttl) the key is gone at
//! etcd, so the task puts it back on a new lease once it can, unless
//! another process took the name meanwhile.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::election::keep_alive;
use super::endpoints::{Needs, OVERALL_TIMEOUT};
use super::error::EtcdError;
use super::kv::Entry;
use super::{Etcd, Revision, Shared};

/// Between attempts to register again after the lease was lost.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A registered key; [`Registration::close`] removes it at once (else it
/// goes one ttl after the process stops refreshing it).
pub struct Registration {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    lease: Arc<std::sync::atomic::AtomicI64>,
    runtime: tokio::runtime::Handle,
}

/// Why a key could not be registered.
#[derive(Debug)]
pub enum Refusal {
    /// Another live process holds it: what it wrote.
    Taken(Entry),
    Etcd(EtcdError),
}

impl From<EtcdError> for Refusal {
    fn from(e: EtcdError) -> Refusal {
        Refusal::Etcd(e)
    }
}

impl Etcd {
    /// Creates `key` (relative to the prefix) holding `value` on a lease
    /// of `ttl`, kept alive until [`Registration::close`] or the end of
    /// this client; refused if the key exists, unless it is still as
    /// read at `replacing` (an entry its caller knows to be stale).
    pub async fn register(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        replacing: Option<Revision>,
    ) -> Result<Registration, Refusal> {
        let (lease, ttl) = create(&self.shared, key, value, ttl, replacing).await?;
        let lease = Arc::new(std::sync::atomic::AtomicI64::new(lease));
        let task = self.runtime().spawn(hold(
            self.shared.clone(),
            key.to_owned(),
            value.to_vec(),
            ttl,
            lease.clone(),
        ));
        Ok(Registration {
            task,
            shared: self.shared.clone(),
            lease,
            runtime: self.runtime().clone(),
        })
    }
}

impl Registration {
    /// Removes the key now (revoking its lease), waiting at most a
    /// request's time. For a plain thread, as at a clean stop.
    pub fn close(self) {
        self.task.abort();
        let lease = self.lease.load(std::sync::atomic::Ordering::Acquire);
        let shared = self.shared.clone();
        self.runtime.block_on(async move {
            let deadline = Instant::now() + super::REQUEST_TIMEOUT;
            if let Err(e) = shared
                .endpoints
                .call("revoke registration lease", Needs::Leader, deadline, |mut c| async move {
                    c.lease_revoke(lease).await
                })
                .await
            {
                tracing::warn!(error = %e, "could not remove this node's registration; it expires with its lease");
            }
        });
    }
}

/// Grants a lease and creates `key` on it if absent (or as read at
/// `replacing`): the lease and the ttl etcd granted.
async fn create(
    shared: &Shared,
    key: &str,
    value: &[u8],
    ttl: Duration,
    replacing: Option<Revision>,
) -> Result<(i64, Duration), Refusal> {
    let full = shared.full(key);
    let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
    let deadline = Instant::now() + OVERALL_TIMEOUT;
    let granted = shared
        .endpoints
        .call(
            &format!("lease for {full}"),
            Needs::Leader,
            deadline,
            |mut c| async move { c.lease_grant(seconds, None).await },
        )
        .await?
        .value;
    let lease = granted.id();
    let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
    let txn = Txn::new()
        .when([match replacing {
            None => Compare::version(full.clone(), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(full.clone(), CompareOp::Equal, r),
        }])
        .and_then([TxnOp::put(
            full.clone(),
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(full.clone(), Some(GetOptions::new()))]);
    let resp = shared
        .endpoints
        .call(
            &format!("register {full}"),
            Needs::Leader,
            deadline,
            |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            },
        )
        .await?
        .value;
    if resp.succeeded() {
        return Ok((lease, ttl));
    }
    let holder = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    match holder {
        // A retry of our own create whose answer was lost.
        Some(kv) if kv.lease() == lease => Ok((lease, ttl)),
        Some(kv) => {
            let entry = shared.entry(&kv)?;
            // Best effort: unused, the lease expires by itself anyway.
            let _ = shared
                .endpoints
                .call(
                    "revoke unused lease",
                    Needs::Leader,
                    deadline,
                    |mut c| async move { c.lease_revoke(lease).await },
                )
                .await;
            Err(Refusal::Taken(entry))
        }
        // Gone between the compare and the read: say so as a conflict.
        None => Err(Refusal::Etcd(EtcdError::Conflict {
            key: key.to_owned(),
            maybe_ours: false,
        })),
    }
}

/// Keeps the lease alive; when it is lost, registers again on a new one.
async fn hold(
    shared: Arc<Shared>,
    key: String,
    value: Vec<u8>,
    mut ttl: Duration,
    lease: Arc<std::sync::atomic::AtomicI64>,
) {
    loop {
        let current = lease.load(std::sync::atomic::Ordering::Acquire);
        let lost = keep_alive(&shared, current, ttl).await;
        tracing::warn!(
            key,
            ?lost,
            "this node's registration lapsed; registering again"
        );
        loop {
            tokio::time::sleep(RETRY_PAUSE).await;
            match create(&shared, &key, &value, ttl, None).await {
                Ok((new, granted)) => {
                    lease.store(new, std::sync::atomic::Ordering::Release);
                    ttl = granted;
                    tracing::info!(key, "registered again");
                    break;
                }
                Err(Refusal::Taken(holder)) => {
                    tracing::error!(key, holder = %String::from_utf8_lossy(&holder.value), "this node's name was taken while its registration lapsed; retrying");
                }
                Err(Refusal::Etcd(e)) => {
                    tracing::debug!(key, error = %e, "cannot register again yet");
                }
            }
        }
    }
}
