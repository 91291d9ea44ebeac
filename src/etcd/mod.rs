//! The etcd v3 client under the clustered keystore: a few operations,
//! each bounded in time, each failing over between members by itself.
//!
//! - [`endpoints`] — a channel per member, and the retry loop that fails over between them
//! - [`kv`]        — listings and compare-guarded transactions under the prefix
//! - [`watch`]     — changes from a revision, resumed across members, ended by compaction
//! - [`election`]  — one leader at a time on a kept-alive lease, with a fence for its writes
//! - [`register`]  — a key held on a kept-alive lease while its process lives (a node's name)
//! - [`status`]    — each member's view (leader, revision), for `cluster status`
//! - [`tls`]       — the CA and client certificate files, read into rustls options
//! - [`error`]     — [`EtcdError`], naming the endpoint, key or file
//!
//! Why its own runtime: the vault changes keys on blocking threads, and
//! a store call must work from there and from async code alike. So the
//! client owns a small runtime (threads named `etcd`) that drives its
//! channels, watches and lease; [`Etcd::block_on`] runs any of its async
//! operations from a plain thread.
//!
//! What it promises: every call answers within [`OVERALL_TIMEOUT`]
//! (5 s) — a value, a [`EtcdError::Conflict`], a refusal, or
//! [`EtcdError::Unavailable`] when no member could serve it (quorum
//! lost) — never a hang. Writes are only the conditional transactions of
//! [`kv`], which is what makes retrying them on another member safe: a
//! retry of a write that did commit fails its own compare, and says it
//! may have been ours.

mod election;
mod endpoints;
mod error;
mod kv;
mod register;
mod status;
mod tls;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use election::{Campaign, Leadership, Lost};
pub use endpoints::{OVERALL_TIMEOUT, REQUEST_TIMEOUT};
pub use error::{AttemptError, EndpointProblem, EtcdError};
pub use kv::{Condition, Entry, Listing, Write};
pub use register::{Refusal, Registration};
pub use status::{EndpointStatus, MemberStatus};
pub use watch::{Watch, WatchEvent};

use endpoints::Endpoints;

/// An etcd revision: the store's logical clock, one step per committed
/// transaction.
pub type Revision = i64;

/// Threads of the client's runtime: enough that a watch and a lease
/// refresh never wait behind a slow call.
const RUNTIME_THREADS: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key read or written is under it; keys given are relative.
    pub prefix: String,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

pub(crate) struct Shared {
    endpoints: Endpoints,
    prefix: String,
}

pub struct Etcd {
    shared: Arc<Shared>,
    /// Always `Some` until drop, which must not block: it may run on an
    /// async thread.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Etcd {
    /// Checks the configuration and sets up a channel per endpoint. No
    /// member is contacted yet: a cluster that is down shows at the first
    /// call, as [`EtcdError::Unavailable`].
    pub fn connect(config: &EtcdConfig) -> Result<Etcd, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        if config.prefix.is_empty() {
            return Err(EtcdError::EmptyPrefix);
        }
        let tls = tls::options(config)?;
        for endpoint in &config.endpoints {
            let why = if endpoint.starts_with("http://") {
                tls.is_some().then_some(EndpointProblem::PlainWithTls)
            } else if endpoint.starts_with("https://") {
                None
            } else {
                Some(EndpointProblem::Scheme)
            };
            if let Some(why) = why {
                return Err(EtcdError::BadEndpoint {
                    endpoint: endpoint.clone(),
                    why,
                });
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(EtcdError::Runtime)?;
        let endpoints = runtime.block_on(Endpoints::connect(&config.endpoints, tls))?;
        Ok(Etcd {
            shared: Arc::new(Shared {
                endpoints,
                prefix: config.prefix.clone(),
            }),
            runtime: Some(runtime),
        })
    }

    /// Runs one of this client's operations to completion from a thread
    /// that is not driving a runtime (a plain or `spawn_blocking`
    /// thread), as `etcd.block_on(etcd.list("keys/"))`.
    pub fn block_on<F: Future>(&self, operation: F) -> F::Output {
        self.runtime().block_on(operation)
    }

    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle(),
            None => unreachable!("the runtime is taken only by drop"),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            prefix: "/vaultgate/".into(),
            ..EtcdConfig::default()
        }
    }

    fn refused(config: &EtcdConfig) -> EtcdError {
        match Etcd::connect(config) {
            Ok(_) => panic!("{config:?} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_bad_configuration_is_refused_naming_what_is_wrong() {
        assert!(matches!(refused(&config(&[])), EtcdError::NoEndpoints));
        let mut c = config(&["http://127.0.0.1:2379"]);
        c.prefix.clear();
        assert!(matches!(refused(&c), EtcdError::EmptyPrefix));

        let e = refused(&config(&["http://127.0.0.1:2379", "127.0.0.2:2379"]));
        assert!(
            matches!(&e, EtcdError::BadEndpoint { endpoint, why: EndpointProblem::Scheme } if endpoint == "127.0.0.2:2379"),
            "{e}"
        );
        assert!(e.to_string().contains("`127.0.0.2:2379`"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_at_connect() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("ca.pem");
        let mut c = config(&["https://127.0.0.1:2379"]);
        c.tls_ca = Some(missing.clone());
        let e = refused(&c);
        assert!(
            matches!(&e, EtcdError::Tls { path, .. } if *path == missing),
            "{e}"
        );
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );

        let mut c = config(&["https://127.0.0.1:2379"]);
        c.tls_cert = Some(dir.path().join("cert.pem"));
        assert!(matches!(
            refused(&c),
            EtcdError::TlsIncomplete {
                given: "tls_cert",
                missing: "tls_key"
            }
        ));

        // TLS configured, yet an endpoint in plain http: refused, not
        // silently sent in the clear.
        std::fs::write(&missing, b"").expect("write ca");
        let mut c = config(&["https://127.0.0.1:2379", "http://127.0.0.2:2379"]);
        c.tls_ca = Some(missing);
        let e = refused(&c);
        assert!(
            matches!(&e, EtcdError::BadEndpoint { endpoint, why: EndpointProblem::PlainWithTls } if endpoint == "http://127.0.0.2:2379"),
            "{e}"
        );
    }

    #[test]
    fn a_cluster_that_is_down_answers_unavailable_within_the_deadline() {
        // Nothing listens on port 1 of these loopback addresses.
        let etcd = Etcd::connect(&config(&["http://127.0.0.1:1", "http://127.0.0.2:1"]))
            .expect("connect is lazy");
        let t = std::time::Instant::now();
        let e = etcd
            .block_on(etcd.create("k", b"v"))
            .expect_err("nobody there");
        assert!(
            t.elapsed() <= OVERALL_TIMEOUT + REQUEST_TIMEOUT,
            "{:?}",
            t.elapsed()
        );
        assert!(matches!(e, EtcdError::Unavailable { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("store unavailable") && text.contains("http://127.0.0.2:1"),
            "{text}"
        );
    }
}
