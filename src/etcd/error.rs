//! What can go wrong talking to etcd, each naming the endpoint, key or
//! file concerned.

use std::path::PathBuf;
use std::time::Duration;

/// Why one attempt at one endpoint did not answer. Kept as the last
/// cause of [`EtcdError::Unavailable`], so the operator sees the member
/// and what it did (refused, reset, said "no leader", hung).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    #[error("{endpoint}: {source}")]
    Rpc {
        endpoint: String,
        source: etcd_client::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    #[error("etcd key prefix is empty: every key the vault writes must be under one")]
    EmptyPrefix,
    #[error("etcd endpoint `{endpoint}`: {why}")]
    BadEndpoint {
        endpoint: String,
        why: EndpointProblem,
    },
    #[error("etcd endpoint `{endpoint}` is not usable: {source}")]
    Endpoint {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("etcd TLS file {}: {source}", path.display())]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd TLS: {given} is set without {missing}: a client certificate needs both")]
    TlsIncomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error("cannot start the etcd client's runtime: {0}")]
    Runtime(std::io::Error),
    /// No member could serve `op` before the deadline: quorum lost, every
    /// endpoint down, or the cluster busy electing for too long.
    #[error("store unavailable: {op} failed on every etcd endpoint ({endpoints}) within {waited:?}; last: {last}")]
    Unavailable {
        op: String,
        endpoints: String,
        waited: Duration,
        #[source]
        last: Box<AttemptError>,
    },
    /// A transaction's compare failed: `key` changed since it was read
    /// (or, for a create, exists). `maybe_ours` is set when an earlier
    /// attempt of this same call went unanswered: it may have committed,
    /// so the caller re-reads to tell its own write from another's.
    #[error("etcd key `{key}` changed concurrently{}", if *maybe_ours { " (an unanswered earlier attempt may have written it)" } else { "" })]
    Conflict { key: String, maybe_ours: bool },
    /// etcd answered and refused: permission, size, a lease it does not
    /// know. Retrying elsewhere would get the same answer.
    #[error("etcd refused {op} at {endpoint}: {source}")]
    Refused {
        op: String,
        endpoint: String,
        source: etcd_client::Error,
    },
    /// A key under the prefix that is not UTF-8: written by something else.
    #[error("etcd key {key:?} under the prefix is not UTF-8")]
    BadKey { key: String },
    #[error("etcd answered {op} without a response header")]
    NoHeader { op: String },
}

/// What is wrong with an endpoint URL as written.
#[derive(Debug, thiserror::Error)]
pub enum EndpointProblem {
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("is http:// but TLS files are configured: use https://")]
    PlainWithTls,
}
