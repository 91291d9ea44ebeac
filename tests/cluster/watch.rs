//! Watching from a revision: every change once, in order; compaction
//! ends the watch with what the caller needs to list and watch again.

use std::time::Duration;

use vaultgate::etcd::{Etcd, Watch, WatchEvent};

use crate::common::etcd::EtcdCluster;
use crate::common::wait_for;

const EVENT: Duration = Duration::from_secs(10);

/// The next event as `(kind, key, value)`, asserting revisions go up.
fn next(w: &mut Watch, last: &mut i64) -> (&'static str, String, Vec<u8>) {
    let event = w.recv_timeout(EVENT).expect("an event within 10 s");
    let (kind, key, value, rev) = match event {
        WatchEvent::Put {
            key,
            value,
            mod_revision,
        } => ("put", key, value, mod_revision),
        WatchEvent::Delete { key, mod_revision } => ("delete", key, Vec::new(), mod_revision),
        other => panic!("want a change, got {other:?}"),
    };
    assert!(rev > *last, "revision {rev} after {last}");
    *last = rev;
    (kind, key, value)
}

fn put(etcd: &Etcd, key: &str, value: &[u8]) -> i64 {
    match etcd.block_on(etcd.get(key)).expect("get") {
        Some(e) => etcd.block_on(etcd.replace(key, value, e.mod_revision)),
        None => etcd.block_on(etcd.create(key, value)),
    }
    .expect("write")
}

#[test]
fn a_watch_sees_every_change_in_order_and_relists_after_compaction() {
    let cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    put(&etcd, "outside", b"not watched");
    let start = etcd.block_on(etcd.list("keys/")).expect("list");
    assert!(start.entries.is_empty());

    put(&etcd, "keys/a", b"1");
    put(&etcd, "keys/b", b"1");
    let a = put(&etcd, "keys/a", b"2");
    etcd.block_on(etcd.delete_if("keys/a", a))
        .expect("delete a");
    put(&etcd, "outside", b"still not watched");

    // From the listing's revision on: the past changes, then live ones.
    let mut w = etcd.watch("keys/", start.revision + 1);
    let mut last = start.revision;
    let want = [
        ("put", "keys/a", &b"1"[..]),
        ("put", "keys/b", b"1"),
        ("put", "keys/a", b"2"),
        ("delete", "keys/a", b""),
    ];
    for (kind, key, value) in want {
        assert_eq!(next(&mut w, &mut last), (kind, key.into(), value.to_vec()));
    }
    put(&etcd, "keys/c", b"live");
    assert_eq!(
        next(&mut w, &mut last),
        ("put", "keys/c".into(), b"live".to_vec())
    );
    drop(w);

    // A watcher that fell behind a compaction is told so, with the
    // revision the history now starts after.
    let compacted_at = cluster.compact_now();
    let mut behind = etcd.watch("keys/", start.revision + 1);
    match behind.recv_timeout(EVENT) {
        Some(WatchEvent::Compacted { compact_revision }) => {
            assert_eq!(compact_revision, compacted_at);
        }
        other => panic!("want Compacted, got {other:?}"),
    }
    assert!(
        behind.recv_timeout(Duration::from_secs(1)).is_none(),
        "the watch has ended"
    );

    // List again, and a change made between the listing and the new
    // watch is not missed.
    let relisted = etcd.block_on(etcd.list("keys/")).expect("relist");
    let keys: Vec<&str> = relisted.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["keys/b", "keys/c"]);
    put(&etcd, "keys/d", b"between");
    let mut again = etcd.watch("keys/", relisted.revision + 1);
    let mut last = relisted.revision;
    assert_eq!(
        next(&mut again, &mut last),
        ("put", "keys/d".into(), b"between".to_vec())
    );
    put(&etcd, "keys/b", b"2");
    assert_eq!(
        next(&mut again, &mut last),
        ("put", "keys/b".into(), b"2".to_vec())
    );
}

#[test]
fn a_watch_moves_to_another_member_when_its_own_dies() {
    let mut cluster = EtcdCluster::start(3);
    // The watch rides member 0 first; kill it under the watch.
    let etcd = crate::client_in_order(&cluster, &[0, 1, 2]);
    let from = put(&etcd, "keys/a", b"0");
    let mut w = etcd.watch("keys/", from + 1);
    put(&etcd, "keys/a", b"1");
    let mut last = from;
    assert_eq!(
        next(&mut w, &mut last),
        ("put", "keys/a".into(), b"1".to_vec())
    );
    cluster.kill(0);
    for i in 2..6 {
        put(&etcd, "keys/a", i.to_string().as_bytes());
    }
    for i in 2..6 {
        assert_eq!(
            next(&mut w, &mut last),
            ("put", "keys/a".into(), i.to_string().into_bytes()),
            "every change once, in order, across the member's death"
        );
    }
}

#[test]
fn without_quorum_a_watch_breaks_and_resumes_from_where_it_stopped() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let from = put(&etcd, "keys/a", b"0");
    let mut w = etcd.watch("keys/", from + 1);
    put(&etcd, "keys/a", b"1");
    let mut last = from;
    assert_eq!(
        next(&mut w, &mut last),
        ("put", "keys/a".into(), b"1".to_vec())
    );

    // Quorum lost: the watch cannot be carried by a member that does not
    // know the latest writes, so it ends rather than going quiet.
    cluster.stop(0);
    cluster.stop(1);
    let next_revision = match w.recv_timeout(Duration::from_secs(20)) {
        Some(WatchEvent::Broken {
            next_revision,
            error,
        }) => {
            assert!(error.to_string().contains("store unavailable"), "{error}");
            next_revision
        }
        other => panic!("want Broken, got {other:?}"),
    };
    assert_eq!(
        next_revision,
        last + 1,
        "it stopped after the last change it passed on"
    );

    cluster.cont(0);
    cluster.cont(1);
    let rev = wait_for("writes to work again", Duration::from_secs(15), || {
        let seen = etcd.block_on(etcd.get("keys/a")).ok()??;
        etcd.block_on(etcd.replace("keys/a", b"2", seen.mod_revision))
            .ok()
    });
    let mut again = etcd.watch("keys/", next_revision);
    assert_eq!(
        next(&mut again, &mut last),
        ("put", "keys/a".into(), b"2".to_vec())
    );
    assert_eq!(last, rev);
}
