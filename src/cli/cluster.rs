//! `vaultgate cluster status`: the cluster as etcd holds it, read with
//! the config's `[vault.store]` and no vault socket, so it works with
//! every vault node down.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::args::{ClusterCommand, ConfigArg};
use super::fail;
use crate::config::store::{EtcdStore, StoreSettings};
use crate::config::vault::VaultSettings;
use crate::etcd::{Etcd, EtcdError};
use crate::vault::node::{self, NodeEntry};

/// The config's `[vault]` settings and its etcd store, or a failure
/// naming the file when its store is local.
pub(super) fn etcd_store(config: Option<PathBuf>) -> Result<(VaultSettings, EtcdStore), ExitCode> {
    let loaded = super::load_config(&ConfigArg { config })?;
    let settings = VaultSettings::from_loaded(&loaded).map_err(fail)?;
    match &settings.store {
        StoreSettings::Etcd(store) => {
            let store = store.clone();
            Ok((settings, store))
        }
        StoreSettings::Local => Err(fail(format!(
            "{}: [vault.store] is the local store (the state dir); a cluster needs kind = \"etcd\"",
            loaded.path.display()
        ))),
    }
}

#[derive(Serialize)]
struct Status {
    prefix: String,
    endpoints: Vec<Endpoint>,
    /// `None` when etcd could not be read (no quorum).
    nodes: Option<Vec<Node>>,
    /// Key records under the prefix (deleted keys' tombstones not counted).
    keys: Option<usize>,
    deleted: Option<usize>,
    /// Why the nodes or keys could not be read.
    error: Option<String>,
}

#[derive(Serialize)]
struct Endpoint {
    endpoint: String,
    reachable: bool,
    leader: bool,
    revision: Option<i64>,
    version: Option<String>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Node {
    node: String,
    host: Option<String>,
    socket: Option<String>,
    pid: Option<u32>,
    started: Option<String>,
    version: Option<String>,
    /// What an entry that is not a vault node's holds.
    unreadable: Option<String>,
}

impl From<Result<NodeEntry, (String, String)>> for Node {
    fn from(r: Result<NodeEntry, (String, String)>) -> Node {
        match r {
            Ok(e) => Node {
                node: e.node,
                host: Some(e.host),
                socket: Some(e.socket),
                pid: Some(e.pid),
                started: Some(e.started),
                version: Some(e.version),
                unreadable: None,
            },
            Err((node, raw)) => Node {
                node,
                host: None,
                socket: None,
                pid: None,
                started: None,
                version: None,
                unreadable: Some(raw),
            },
        }
    }
}

pub fn main(cmd: ClusterCommand) -> ExitCode {
    let ClusterCommand::Status { json, config } = cmd;
    let (_, store) = match etcd_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let etcd = match Etcd::connect(&store.client_config()) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let status = gather(&etcd);
    if json {
        // Plain fields only: serialising cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", human(&status));
    }
    match &status.error {
        Some(e) if !json => fail(e),
        Some(_) => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    }
}

fn gather(etcd: &Etcd) -> Status {
    let endpoints = etcd
        .block_on(etcd.status())
        .into_iter()
        .map(|s| match s.member {
            Ok(m) => Endpoint {
                endpoint: s.endpoint,
                reachable: true,
                leader: m.is_leader(),
                revision: Some(m.revision),
                version: Some(m.version),
                error: None,
            },
            Err(e) => Endpoint {
                endpoint: s.endpoint,
                reachable: false,
                leader: false,
                revision: None,
                version: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let read = || -> Result<(Vec<Node>, usize, usize), EtcdError> {
        let nodes = etcd.block_on(node::list(etcd))?;
        let records = etcd.block_on(etcd.list("keys/"))?;
        let deleted = records
            .entries
            .iter()
            .filter(|e| is_tombstone(&e.value))
            .count();
        Ok((
            nodes.into_iter().map(Node::from).collect(),
            records.entries.len() - deleted,
            deleted,
        ))
    };
    let (nodes, keys, deleted, error) = match read() {
        Ok((n, k, d)) => (Some(n), Some(k), Some(d), None),
        Err(e) => (None, None, None, Some(e.to_string())),
    };
    Status {
        prefix: etcd.prefix().to_owned(),
        endpoints,
        nodes,
        keys,
        deleted,
        error,
    }
}

/// A deleted key's tombstone, told from a key record by its shape alone
/// (its MAC needs the master key, which this command has no need of).
fn is_tombstone(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v.get("deleted").is_some() && v.get("versions").is_none())
}

/// Columns padded to their widest cell.
pub(super) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human(s: &Status) -> String {
    let dash = || "-".to_owned();
    let mut rows = vec![["ENDPOINT", "STATE", "LEADER", "REVISION", "VERSION"]
        .map(str::to_owned)
        .to_vec()];
    for e in &s.endpoints {
        rows.push(vec![
            e.endpoint.clone(),
            if e.reachable {
                "reachable"
            } else {
                "unreachable"
            }
            .to_owned(),
            if e.leader { "yes" } else { "" }.to_owned(),
            e.revision.map_or_else(dash, |r| r.to_string()),
            e.version.clone().unwrap_or_else(dash),
        ]);
    }
    let mut out = format!("etcd (prefix {})\n{}", s.prefix, table(&rows));
    for e in &s.endpoints {
        if let Some(error) = &e.error {
            out.push_str(&format!("  {}: {error}\n", e.endpoint));
        }
    }
    match &s.nodes {
        Some(nodes) if nodes.is_empty() => out.push_str("nodes: none running\n"),
        Some(nodes) => {
            let mut rows = vec![["NODE", "HOST", "SOCKET", "PID", "STARTED", "VERSION"]
                .map(str::to_owned)
                .to_vec()];
            for n in nodes {
                rows.push(vec![
                    n.node.clone(),
                    n.host.clone().unwrap_or_else(dash),
                    n.socket.clone().unwrap_or_else(|| {
                        format!(
                            "(not a vault node: {})",
                            n.unreadable.as_deref().unwrap_or("")
                        )
                    }),
                    n.pid.map_or_else(dash, |p| p.to_string()),
                    n.started.clone().unwrap_or_else(dash),
                    n.version.clone().unwrap_or_else(dash),
                ]);
            }
            out.push_str(&format!("nodes\n{}", table(&rows)));
        }
        None => out.push_str("nodes: unknown\n"),
    }
    if let (Some(keys), Some(deleted)) = (s.keys, s.deleted) {
        out.push_str(&format!("keys: {keys} ({deleted} deleted)\n"));
    }
    out
}
