//! A vault node's entry in its cluster: `nodes/NAME` under the etcd
//! prefix, held on a lease for as long as the node runs, so
//! `vaultgate cluster status` lists the live nodes and two live nodes
//! cannot share a name.
//!
//! The entry says where to reach the node and since when; it holds no
//! secret (etcd's operator sees it, as every name under the prefix).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::store::EtcdStore;
use crate::etcd::{Etcd, EtcdError, Refusal, Registration};

/// Where the entries are, under the prefix.
pub const NODES: &str = "nodes/";
/// How long an entry outlives a node that stopped without removing it.
const TTL: Duration = Duration::from_secs(10);

/// What `nodes/NAME` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    /// The host's name: with `pid`, what tells this node's own entry
    /// left by a crash from another node's.
    pub host: String,
    pub socket: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node name {node:?} is taken by a running node (socket {socket}, pid {pid}, started {started}): give this node another [vault.store] node name, or stop that one", socket = .other.socket, pid = .other.pid, started = .other.started)]
    Taken { node: String, other: Box<NodeEntry> },
    #[error("node name {node:?} is registered by something that is not a vault node ({value:?})")]
    TakenUnreadable { node: String, value: String },
    #[error("registering node {node:?}: {source}")]
    Etcd { node: String, source: EtcdError },
}

/// A running node's entry, removed by [`Registered::close`].
pub struct Registered {
    registration: Registration,
    /// The client the lease is kept alive on: it lives as long as this.
    _etcd: Etcd,
}

impl Registered {
    /// Removes the entry now (a clean stop): the name is free at once.
    pub fn close(self) {
        self.registration.close();
    }
}

/// Registers this node as `store.node`, or refuses naming the running
/// node that has the name. From a plain (blocking) thread.
pub fn register(store: &EtcdStore, socket: &Path) -> Result<Registered, NodeError> {
    let etcd_error = |source| NodeError::Etcd {
        node: store.node.clone(),
        source,
    };
    let etcd = Etcd::connect(&store.client_config()).map_err(etcd_error)?;
    let entry = NodeEntry {
        node: store.node.clone(),
        host: host(),
        socket: socket.display().to_string(),
        pid: std::process::id(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    // Plain fields only: serialising cannot fail.
    let value = serde_json::to_vec(&entry).unwrap_or_default();
    let key = format!("{NODES}{}", store.node);
    let mut replacing = None;
    loop {
        let holder = match etcd.block_on(etcd.register(&key, &value, TTL, replacing)) {
            Ok(registration) => {
                return Ok(Registered {
                    registration,
                    _etcd: etcd,
                })
            }
            Err(Refusal::Taken(holder)) => holder,
            Err(Refusal::Etcd(e)) => return Err(etcd_error(e)),
        };
        match serde_json::from_slice::<NodeEntry>(&holder.value) {
            // This node's own entry, from before a crash on this host, not
            // yet expired: restarting at once must not wait for its lease.
            Ok(other)
                if replacing.is_none()
                    && !entry.host.is_empty()
                    && other.host == entry.host
                    && !alive(other.pid) =>
            {
                tracing::info!(
                    node = store.node,
                    pid = other.pid,
                    "replacing this node's entry left by a process that is gone"
                );
                replacing = Some(holder.mod_revision);
            }
            Ok(other) => {
                return Err(NodeError::Taken {
                    node: store.node.clone(),
                    other: Box::new(other),
                })
            }
            Err(_) => {
                return Err(NodeError::TakenUnreadable {
                    node: store.node.clone(),
                    value: String::from_utf8_lossy(&holder.value).into_owned(),
                })
            }
        }
    }
}

/// This host's name; empty if unknown (then no entry is taken for this
/// node's own).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Whether process `pid` of this host still runs (signal 0 checks, sends
/// nothing).
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Every registered node, by name; an entry that does not parse is
/// returned as its key's name and raw text.
pub async fn list(etcd: &Etcd) -> Result<Vec<Result<NodeEntry, (String, String)>>, EtcdError> {
    let listed = etcd.list(NODES).await?;
    Ok(listed
        .entries
        .into_iter()
        .map(|e| {
            serde_json::from_slice(&e.value).map_err(|_| {
                let name = e.key.strip_prefix(NODES).unwrap_or(&e.key).to_owned();
                (name, String::from_utf8_lossy(&e.value).into_owned())
            })
        })
        .collect())
}
