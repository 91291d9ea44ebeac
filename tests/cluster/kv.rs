//! Compare-guarded writes: one winner, the loser told which key moved.

use std::sync::{Arc, Barrier};

use vaultgate::etcd::{Condition, EtcdError};

use crate::common::etcd::EtcdCluster;

#[test]
fn two_replaces_from_one_revision_have_exactly_one_winner() {
    let cluster = EtcdCluster::start(3);
    let etcd = Arc::new(crate::client(&cluster));
    let mut seen = etcd
        .block_on(etcd.create("keys/web", b"v0"))
        .expect("create");
    // One side from a plain thread, the other from a runtime's blocking
    // pool, as the vault calls: both must work.
    let rt = crate::common::current_thread_rt();
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let race = |who: &'static str| {
            let (etcd, barrier) = (etcd.clone(), barrier.clone());
            move || {
                let value = format!("{who}{round}");
                barrier.wait();
                (
                    value.clone(),
                    etcd.block_on(etcd.replace("keys/web", value.as_bytes(), seen)),
                )
            }
        };
        let a = std::thread::spawn(race("a"));
        let b = rt
            .block_on(async { tokio::task::spawn_blocking(race("b")).await })
            .expect("b");
        let a = a.join().expect("a");
        let (winner, revision) = match (&a.1, &b.1) {
            (
                Ok(r),
                Err(EtcdError::Conflict {
                    key,
                    maybe_ours: false,
                }),
            ) if key == "keys/web" => (&a.0, *r),
            (
                Err(EtcdError::Conflict {
                    key,
                    maybe_ours: false,
                }),
                Ok(r),
            ) if key == "keys/web" => (&b.0, *r),
            other => panic!("round {round}: want one winner and one conflict, got {other:?}"),
        };
        let now = etcd
            .block_on(etcd.get("keys/web"))
            .expect("get")
            .expect("the key is there");
        assert_eq!(now.value, winner.as_bytes(), "round {round}");
        assert_eq!(now.mod_revision, revision, "round {round}");
        seen = revision;
    }
}

#[test]
fn a_failed_transaction_names_the_key_that_moved_and_writes_nothing() {
    let cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let a = etcd
        .block_on(etcd.create("keys/a", b"a0"))
        .expect("create a");
    let b = etcd
        .block_on(etcd.create("keys/b", b"b0"))
        .expect("create b");
    etcd.block_on(etcd.replace("keys/b", b"b1", b))
        .expect("move b on");
    let err = etcd
        .block_on(etcd.txn_put_all(
            &[
                Condition::ModRevision {
                    key: "keys/a".into(),
                    revision: a,
                },
                Condition::ModRevision {
                    key: "keys/b".into(),
                    revision: b,
                },
            ],
            &[
                ("keys/a".into(), b"a1".to_vec()),
                ("audit/head".into(), b"h".to_vec()),
            ],
        ))
        .expect_err("b moved on");
    assert!(
        matches!(&err, EtcdError::Conflict { key, .. } if key == "keys/b"),
        "{err}"
    );
    assert!(err.to_string().contains("keys/b"), "{err}");
    let listing = etcd.block_on(etcd.list("")).expect("list");
    let got: Vec<(&str, &[u8])> = listing
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_slice()))
        .collect();
    assert_eq!(got, [("keys/a", &b"a0"[..]), ("keys/b", &b"b1"[..])]);
    // A create over an existing key is the same refusal.
    let err = etcd
        .block_on(etcd.create("keys/a", b"again"))
        .expect_err("exists");
    assert!(
        matches!(&err, EtcdError::Conflict { key, .. } if key == "keys/a"),
        "{err}"
    );
}
