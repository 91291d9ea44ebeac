//! The etcd client layer against a real 3-member etcd cluster: what the
//! clustered keystore relies on, under the failures it must survive.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

mod common;

#[path = "cluster/election.rs"]
mod election;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/kv.rs"]
mod kv;
#[path = "cluster/migrate.rs"]
mod migrate;
#[path = "cluster/tls.rs"]
mod tls;
#[path = "cluster/vaults.rs"]
mod vaults;
#[path = "cluster/watch.rs"]
mod watch;

use common::etcd::EtcdCluster;
use vaultgate::etcd::{Etcd, EtcdConfig};

/// A client of `cluster` under `/vg-test/`, its endpoints in `order`.
pub fn client_in_order(cluster: &EtcdCluster, order: &[usize]) -> Etcd {
    Etcd::connect(&EtcdConfig {
        endpoints: order
            .iter()
            .map(|&i| cluster.endpoint(i).to_owned())
            .collect(),
        prefix: "/vg-test/".into(),
        ..EtcdConfig::default()
    })
    .expect("connect")
}

pub fn client(cluster: &EtcdCluster) -> Etcd {
    client_in_order(cluster, &[0, 1, 2])
}
