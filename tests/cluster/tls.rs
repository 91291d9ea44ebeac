//! etcd over mutual TLS, as production runs it: the client checks the
//! members against the configured CA and shows its own certificate.

use std::time::Duration;

use vaultgate::etcd::{Etcd, EtcdConfig, WatchEvent};

use crate::common::etcd::EtcdCluster;

#[test]
fn the_client_speaks_mutual_tls_and_no_member_serves_it_without_a_certificate() {
    let cluster = EtcdCluster::start_tls(3);
    let tls = cluster.tls.as_ref().expect("a TLS cluster");
    let config = |with_cert: bool| EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/vg-test/".into(),
        tls_ca: Some(tls.ca.clone()),
        tls_cert: with_cert.then(|| tls.cert.clone()),
        tls_key: with_cert.then(|| tls.key.clone()),
    };
    assert!(cluster
        .endpoints()
        .iter()
        .all(|e| e.starts_with("https://")));

    let etcd = Etcd::connect(&config(true)).expect("connect");
    let rev = etcd
        .block_on(etcd.create("keys/k", b"v1"))
        .expect("create over TLS");
    let mut w = etcd.watch("keys/", rev);
    match w.recv_timeout(Duration::from_secs(10)) {
        Some(WatchEvent::Put { key, value, .. }) => {
            assert_eq!((key.as_str(), &value[..]), ("keys/k", &b"v1"[..]))
        }
        other => panic!("want the put over TLS, got {other:?}"),
    }

    // The CA alone is not enough: the members require a client certificate.
    let anonymous = Etcd::connect(&config(false)).expect("connect");
    let err = anonymous
        .block_on(anonymous.get("keys/k"))
        .expect_err("no client certificate");
    let text = err.to_string();
    assert!(
        cluster
            .endpoints()
            .iter()
            .any(|e| text.contains(e.as_str())),
        "the error names a member: {text}"
    );
}
