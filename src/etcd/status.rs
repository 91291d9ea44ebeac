//! Each member as its endpoint reports it, for `cluster status`.

use etcd_client::StatusResponse;

use super::endpoints::{Needs, REQUEST_TIMEOUT};
use super::error::AttemptError;
use super::{Etcd, Revision};

#[derive(Debug)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// What the member said, or why it did not.
    pub member: Result<MemberStatus, AttemptError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    /// The leader this member follows; 0 while it has none.
    pub leader: u64,
    pub revision: Revision,
    pub raft_index: u64,
    pub version: String,
}

impl MemberStatus {
    pub fn is_leader(&self) -> bool {
        self.id != 0 && self.id == self.leader
    }

    fn from_response(r: &StatusResponse) -> MemberStatus {
        let header = r.header();
        MemberStatus {
            id: header.map_or(0, |h| h.member_id()),
            leader: r.leader(),
            revision: header.map_or(0, |h| h.revision()),
            raft_index: r.raft_index(),
            version: r.version().to_owned(),
        }
    }
}

impl Etcd {
    /// Asks every endpoint at once, each bounded by the request timeout:
    /// a dead member costs no more than a live one's answer.
    pub async fn status(&self) -> Vec<EndpointStatus> {
        let asks = self.shared.endpoints.members().iter().map(|m| async move {
            let mut client = m.client(Needs::Any);
            let member = match tokio::time::timeout(REQUEST_TIMEOUT, client.status()).await {
                Ok(Ok(r)) => Ok(MemberStatus::from_response(&r)),
                Ok(Err(source)) => Err(AttemptError::Rpc {
                    endpoint: m.url.clone(),
                    source,
                }),
                Err(_) => Err(AttemptError::Timeout {
                    endpoint: m.url.clone(),
                    after: REQUEST_TIMEOUT,
                }),
            };
            EndpointStatus {
                endpoint: m.url.clone(),
                member,
            }
        });
        futures_util::future::join_all(asks).await
    }
}
