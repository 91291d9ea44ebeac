//! "One of us does it": an etcd election on a lease, for work exactly
//! one node should run (the scheduler).
//!
//! Being elected is not mutual exclusion: a leader that stalls past its
//! lease is replaced while it still believes it leads (etcd's lock
//! notes; the Jepsen report on etcd locks). So the leader's writes carry
//! a fence, [`Campaign::fence`]: a compare that the election key this
//! node created is still there. A deposed leader's late write fails on
//! it in the same transaction.
//!
//! A task keeps the lease alive (etcd drops it ttl after the last
//! refresh) and reports the end of leadership: the lease gone at etcd,
//! or no refresh through any member for a whole ttl.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaderKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::endpoints::{retryable, Needs, OVERALL_TIMEOUT};
use super::error::EtcdError;
use super::kv::Condition;
use super::{Etcd, Shared};

/// Between campaign attempts on a failing member.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub enum Leadership {
    /// Waiting for the current leader to go.
    Campaigning,
    /// Elected; writes made as leader carry `fence`.
    Leader { fence: Condition },
    /// No longer leading or campaigning; a new campaign is needed.
    Lost(Lost),
}

#[derive(Clone, Debug)]
pub enum Lost {
    /// etcd no longer has the lease (it expired, or was revoked).
    LeaseExpired { lease: i64 },
    /// No refresh got through for a whole ttl: etcd has dropped the
    /// lease by now, or will before anyone could tell us otherwise.
    Unreachable { lease: i64, error: Arc<EtcdError> },
    /// etcd refused the campaign itself.
    Refused { error: Arc<EtcdError> },
}

/// A node's candidacy; dropping it resigns (revokes the lease), so the
/// next candidate takes over at once rather than after the ttl.
pub struct Campaign {
    state: watch::Receiver<Leadership>,
    lease: i64,
    ttl: Duration,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Etcd {
    /// Stands `node` for election `name` (relative to the prefix) on a
    /// lease of `ttl` (etcd raises very short ones to its minimum). Fails
    /// only if the lease cannot be granted; the result says when this
    /// node leads.
    pub async fn campaign(
        &self,
        name: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Campaign, EtcdError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let op = format!("lease for election {}", self.shared.full(name));
        let deadline = Instant::now() + OVERALL_TIMEOUT;
        let granted = self
            .shared
            .endpoints
            .call(&op, Needs::Leader, deadline, |mut c| async move {
                c.lease_grant(seconds, None).await
            })
            .await?
            .value;
        let lease = granted.id();
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
        let (tx, rx) = watch::channel(Leadership::Campaigning);
        let task = self.runtime().spawn(run(
            self.shared.clone(),
            self.shared.full(name),
            node.to_owned(),
            lease,
            ttl,
            tx,
        ));
        Ok(Campaign {
            state: rx,
            lease,
            ttl,
            task,
            shared: self.shared.clone(),
            runtime: self.runtime().clone(),
        })
    }
}

impl Campaign {
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease's ttl as etcd granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn state(&self) -> Leadership {
        self.state.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.state.borrow(), Leadership::Leader { .. })
    }

    /// The compare a leader's writes carry; `None` unless leading.
    pub fn fence(&self) -> Option<Condition> {
        match &*self.state.borrow() {
            Leadership::Leader { fence } => Some(fence.clone()),
            _ => None,
        }
    }

    /// Waits for the next change of state (and returns it), or for ever
    /// once the task has ended.
    pub async fn changed(&mut self) -> Leadership {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.state()
    }

    /// For a thread outside any runtime: waits up to `timeout` for a
    /// state that `want` accepts, and returns the state then.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Leadership) -> bool,
    ) -> Leadership {
        let state = &mut self.state;
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(timeout, state.wait_for(|s| want(s))).await;
        });
        self.state()
    }
}

impl Drop for Campaign {
    fn drop(&mut self) {
        self.task.abort();
        let (shared, lease) = (self.shared.clone(), self.lease);
        // Best effort: if it fails the lease still expires after its ttl.
        self.runtime.spawn(async move {
            let deadline = Instant::now() + OVERALL_TIMEOUT;
            let _ = shared
                .endpoints
                .call(
                    "revoke election lease",
                    Needs::Leader,
                    deadline,
                    |mut c| async move { c.lease_revoke(lease).await },
                )
                .await;
        });
    }
}

async fn run(
    shared: Arc<Shared>,
    name: String,
    node: String,
    lease: i64,
    ttl: Duration,
    tx: watch::Sender<Leadership>,
) {
    let alive = keep_alive(&shared, lease, ttl);
    tokio::pin!(alive);
    let elected = tokio::select! {
        lost = &mut alive => {
            let _ = tx.send(Leadership::Lost(lost));
            return;
        }
        elected = elect(&shared, &name, &node, lease) => elected,
    };
    match elected.and_then(|key| fence(&shared, &key)) {
        Ok(fence) => {
            let _ = tx.send(Leadership::Leader { fence });
        }
        Err(error) => {
            let _ = tx.send(Leadership::Lost(Lost::Refused {
                error: Arc::new(error),
            }));
            return;
        }
    }
    let _ = tx.send(Leadership::Lost(alive.await));
}

/// The fence of an elected key: the key as relative to the prefix (the
/// election name is under it) and the revision that created it.
fn fence(shared: &Shared, key: &LeaderKey) -> Result<Condition, EtcdError> {
    let raw = key.key();
    let relative = std::str::from_utf8(raw)
        .ok()
        .and_then(|k| k.strip_prefix(shared.prefix.as_str()))
        .ok_or_else(|| EtcdError::BadKey {
            key: String::from_utf8_lossy(raw).into_owned(),
        })?;
    Ok(Condition::CreateRevision {
        key: relative.to_owned(),
        revision: key.rev(),
    })
}

/// Campaigns until elected. etcd holds the call open while another node
/// leads, so there is no per-attempt deadline here: a dead member ends
/// the call by its transport error or unanswered ping, and the lease
/// task ends the whole campaign if etcd cannot be reached.
async fn elect(
    shared: &Shared,
    name: &str,
    node: &str,
    lease: i64,
) -> Result<LeaderKey, EtcdError> {
    let members = shared.endpoints.members();
    let mut i = 0;
    loop {
        let mut client = members[i].client(Needs::Leader);
        match client.campaign(name, node, lease).await {
            Ok(mut resp) => {
                if let Some(key) = resp.take_leader() {
                    return Ok(key);
                }
            }
            Err(source) if !retryable(&source) => {
                return Err(EtcdError::Refused {
                    op: format!("campaign for {name}"),
                    endpoint: members[i].url.clone(),
                    source,
                })
            }
            Err(e) => {
                tracing::debug!(endpoint = %members[i].url, error = %e, "etcd campaign attempt failed");
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        i = (i + 1) % members.len();
    }
}

/// Refreshes the lease every third of its ttl until it cannot; returns
/// why it ended.
pub(super) async fn keep_alive(shared: &Shared, lease: i64, ttl: Duration) -> Lost {
    let mut refreshed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = Instant::now();
        // Retry across members for as long as the lease can still be
        // alive at etcd, and no longer.
        let deadline = refreshed + ttl;
        let result = shared
            .endpoints
            .call(
                "lease keepalive",
                Needs::Leader,
                deadline,
                |mut c| async move { c.lease_keep_alive(lease).await },
            )
            .await;
        match result {
            Ok(_) => refreshed = sent,
            Err(EtcdError::Refused { .. }) => return Lost::LeaseExpired { lease },
            Err(error) => {
                return Lost::Unreachable {
                    lease,
                    error: Arc::new(error),
                }
            }
        }
    }
}
