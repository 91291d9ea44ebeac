//! One etcd-client `Client` per endpoint, and the retry loop that moves
//! a request to the next endpoint when one fails.
//!
//! etcd-client balances over its endpoints but never fails over: a dead
//! member keeps getting its share of requests. So each endpoint gets its
//! own channel, and a request that meets a transport error, a timeout or
//! a "no leader" goes to the next one, round after round, until an
//! overall deadline. The endpoint that last answered is tried first, and
//! one that just hung or refused connections is tried last for a while,
//! so one dead member does not cost every request a timeout.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

use super::error::{AttemptError, EtcdError};
use crate::sync::Locked;

/// One attempt at one endpoint: long enough for a commit through a
/// healthy cluster, short enough that a hung member costs little.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// All attempts of one request: past this the store is unavailable.
pub const OVERALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings find a hung member under a long stream (watch, campaign).
/// etcd's server refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`) and closes the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Between rounds once every endpoint failed at once (all refusing, or
/// all without a leader while one is elected).
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// How long a member that hung or refused a connection goes to the back
/// of the queue.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Which members may answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// The member must have a leader (writes, linearizable reads,
    /// watches): a member cut off from quorum says so at once instead of
    /// hanging until its own timeout.
    Leader,
    /// Any member, from its own copy (serializable reads, status).
    Any,
}

pub(crate) struct Member {
    pub url: String,
    leader: Client,
    any: Client,
}

impl Member {
    pub fn client(&self, needs: Needs) -> Client {
        match needs {
            Needs::Leader => self.leader.clone(),
            Needs::Any => self.any.clone(),
        }
    }
}

pub(crate) struct Endpoints {
    members: Vec<Member>,
    health: Mutex<Health>,
}

struct Health {
    /// The member that answered last, tried first next time.
    preferred: usize,
    /// Until when each member is tried only after the others.
    suspect_until: Vec<Option<Instant>>,
}

/// How a call ended, besides its value.
pub(crate) struct Answered<T> {
    pub value: T,
    /// An attempt before the one that answered went unanswered: a write
    /// it carried may have committed.
    pub retried: bool,
}

impl Endpoints {
    /// Channels are lazy: nothing is dialled until the first request, so
    /// this fails only on endpoints that cannot be used at all.
    pub async fn connect(
        urls: &[String],
        tls: Option<etcd_client::TlsOptions>,
    ) -> Result<Endpoints, EtcdError> {
        let mut members = Vec::with_capacity(urls.len());
        for url in urls {
            let options = |require_leader: bool| {
                let o = ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
                    .with_require_leader(require_leader);
                match &tls {
                    Some(t) => o.with_tls(t.clone()),
                    None => o,
                }
            };
            let connect = |require_leader| async move {
                Client::connect([url.as_str()], Some(options(require_leader)))
                    .await
                    .map_err(|source| EtcdError::Endpoint {
                        endpoint: url.clone(),
                        source,
                    })
            };
            members.push(Member {
                url: url.clone(),
                leader: connect(true).await?,
                any: connect(false).await?,
            });
        }
        let suspect_until = vec![None; members.len()];
        Ok(Endpoints {
            members,
            health: Mutex::new(Health {
                preferred: 0,
                suspect_until,
            }),
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn list(&self) -> String {
        self.members
            .iter()
            .map(|m| m.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs `f` on one member after another until one answers, each
    /// attempt bounded by [`REQUEST_TIMEOUT`], all of them by `deadline`.
    /// An error etcd meant (a refusal) ends the loop at once.
    pub async fn call<T, F, Fut>(
        &self,
        op: &str,
        needs: Needs,
        deadline: Instant,
        mut f: F,
    ) -> Result<Answered<T>, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let n = self.members.len();
        let order = self.order(started);
        let mut last = None;
        for attempt in 0.. {
            let now = Instant::now();
            if attempt > 0 && attempt % n == 0 {
                tokio::time::sleep_until((now + ROUND_PAUSE).min(deadline)).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let i = order[attempt % n];
            let member = &self.members[i];
            let budget = remaining.min(REQUEST_TIMEOUT);
            match tokio::time::timeout(budget, f(member.client(needs))).await {
                Ok(Ok(value)) => {
                    let mut health = self.health.locked();
                    health.preferred = i;
                    health.suspect_until[i] = None;
                    drop(health);
                    return Ok(Answered {
                        value,
                        retried: attempt > 0,
                    });
                }
                Ok(Err(source)) if !retryable(&source) => {
                    return Err(EtcdError::Refused {
                        op: op.to_owned(),
                        endpoint: member.url.clone(),
                        source,
                    })
                }
                Ok(Err(source)) => {
                    if unreachable_member(&source) {
                        self.suspect(i);
                    }
                    tracing::debug!(endpoint = %member.url, %op, error = %source, "etcd attempt failed");
                    last = Some(AttemptError::Rpc {
                        endpoint: member.url.clone(),
                        source,
                    });
                }
                Err(_) => {
                    self.suspect(i);
                    tracing::debug!(endpoint = %member.url, %op, "etcd attempt timed out");
                    last = Some(AttemptError::Timeout {
                        endpoint: member.url.clone(),
                        after: budget,
                    });
                }
            }
        }
        Err(EtcdError::Unavailable {
            op: op.to_owned(),
            endpoints: self.list(),
            waited: started.elapsed(),
            last: Box::new(last.unwrap_or(AttemptError::Timeout {
                endpoint: self.list(),
                after: Duration::ZERO,
            })),
        })
    }
}

impl Endpoints {
    /// The members in the order to try them: from the preferred one on,
    /// those not suspect first.
    fn order(&self, now: Instant) -> Vec<usize> {
        let health = self.health.locked();
        let n = self.members.len();
        let mut order: Vec<usize> = (0..n).map(|k| (health.preferred + k) % n).collect();
        order.sort_by_key(|&i| health.suspect_until[i].is_some_and(|t| t > now));
        order
    }

    fn suspect(&self, i: usize) {
        self.health.locked().suspect_until[i] = Some(Instant::now() + SUSPECT_FOR);
    }
}

/// Whether the member itself could not be reached (as opposed to
/// answering that it cannot serve).
fn unreachable_member(e: &etcd_client::Error) -> bool {
    matches!(
        e,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)
    )
}

/// Whether another member might answer where this one failed: the
/// connection failed, the member has no leader or timed out, or the
/// stream broke. By kind and gRPC code, never by message.
pub(crate) fn retryable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::Internal
        ),
        _ => false,
    }
}
