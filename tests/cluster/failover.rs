//! Members dying and hanging under the client: every call answers within
//! the overall deadline, writes resume by themselves, and without quorum
//! writes fail fast while serializable reads go on.

use std::time::{Duration, Instant};

use vaultgate::etcd::{Etcd, EtcdError, OVERALL_TIMEOUT};

use crate::common::etcd::EtcdCluster;
use crate::common::wait_for;

/// What a call may take past the overall deadline: the last attempt's
/// own end and scheduling on a busy machine.
const SLACK: Duration = Duration::from_secs(1);

/// One guarded write of `value` over what `etcd` has now.
fn write(etcd: &Etcd, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
    etcd.block_on(async {
        let seen = etcd.get(key).await?.map_or(0, |e| e.mod_revision);
        etcd.replace(key, value, seen).await
    })
}

#[test]
fn writes_survive_the_leader_being_killed() {
    let mut cluster = EtcdCluster::start(3);
    let leader = cluster.leader();
    // The leader first, so the client's traffic is on the member killed.
    let order: Vec<usize> = std::iter::once(leader)
        .chain((0..3).filter(|&i| i != leader))
        .collect();
    let etcd = crate::client_in_order(&cluster, &order);
    etcd.block_on(etcd.create("keys/k", b"0")).expect("create");

    let mut killed_at = None;
    let mut resumed_after = None;
    let mut committed = 0;
    let mut failed = Vec::new();
    let started = Instant::now();
    for i in 1.. {
        let t = Instant::now();
        let result = write(&etcd, "keys/k", i.to_string().as_bytes());
        let took = t.elapsed();
        // Two calls (read, write), each bounded.
        assert!(
            took <= 2 * OVERALL_TIMEOUT + SLACK,
            "write {i} took {took:?}: {result:?}"
        );
        match result {
            Ok(_) => {
                committed += 1;
                if let (Some(k), None) = (killed_at, resumed_after) {
                    resumed_after = Some(Instant::elapsed(&k));
                }
            }
            // Another write of this loop that committed unanswered.
            Err(EtcdError::Conflict {
                maybe_ours: true, ..
            }) => {}
            Err(e @ EtcdError::Unavailable { .. }) => failed.push(e.to_string()),
            Err(e) => panic!("write {i}: {e}"),
        }
        if killed_at.is_none() && committed >= 20 {
            cluster.kill(leader);
            killed_at = Some(Instant::now());
        }
        if resumed_after.is_some() && committed >= 60 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "writes did not resume: {committed} committed, failures {failed:?}"
        );
    }
    let resumed = resumed_after.expect("resumed");
    assert!(
        resumed < Duration::from_secs(10),
        "writes resumed {resumed:?} after the leader died; failures {failed:?}"
    );
    // The value is the last committed write's or a later ambiguous one:
    // never an older one.
    let now = etcd
        .block_on(etcd.get("keys/k"))
        .expect("get")
        .expect("key");
    let n: u64 = String::from_utf8_lossy(&now.value)
        .parse()
        .expect("a number");
    assert!(n >= committed, "value {n} after {committed} commits");
    eprintln!(
        "leader killed: writes resumed after {resumed:?}; {} failed: {failed:?}",
        failed.len()
    );
}

#[test]
fn without_quorum_writes_fail_fast_and_serializable_reads_go_on() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let rev = etcd
        .block_on(etcd.create("keys/k", b"before"))
        .expect("create");
    // Member 0 is the one the client prefers now; hang it and one more.
    cluster.stop(0);
    cluster.stop(1);

    let t = Instant::now();
    let err = etcd
        .block_on(etcd.replace("keys/k", b"during", rev))
        .expect_err("no quorum");
    let took = t.elapsed();
    assert!(matches!(err, EtcdError::Unavailable { .. }), "{err}");
    assert!(
        took <= OVERALL_TIMEOUT + SLACK,
        "Unavailable after {took:?}: {err}"
    );
    assert!(err.to_string().contains("store unavailable"), "{err}");

    let t = Instant::now();
    let listing = etcd
        .block_on(etcd.list_serializable("keys/"))
        .expect("a serializable read from the member left");
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].value, b"before");
    assert!(t.elapsed() <= OVERALL_TIMEOUT, "took {:?}", t.elapsed());
    // A linearizable read needs quorum as a write does.
    assert!(matches!(
        etcd.block_on(etcd.list("keys/")),
        Err(EtcdError::Unavailable { .. })
    ));

    cluster.cont(0);
    cluster.cont(1);
    // The refused write may still commit now: a leader left alone keeps
    // it in its log and commits it once followers return. So read again
    // before writing, as the keystore does after `Unavailable`.
    let rev = wait_for("writes to work again", Duration::from_secs(15), || {
        let seen = etcd.block_on(etcd.get("keys/k")).ok()??;
        assert!(
            seen.value == b"before" || seen.value == b"during",
            "{:?}",
            String::from_utf8_lossy(&seen.value)
        );
        etcd.block_on(etcd.replace("keys/k", b"after", seen.mod_revision))
            .ok()
    });
    let now = etcd
        .block_on(etcd.get("keys/k"))
        .expect("get")
        .expect("key");
    assert_eq!(
        (now.value.as_slice(), now.mod_revision),
        (&b"after"[..], rev)
    );
}

#[test]
fn status_names_the_leader_and_the_dead_member() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let leader = cluster.leader();
    let dead = (leader + 1) % 3;
    cluster.kill(dead);
    let t = Instant::now();
    let status = etcd.block_on(etcd.status());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(status.len(), 3);
    for (i, s) in status.iter().enumerate() {
        assert_eq!(s.endpoint, cluster.endpoint(i));
        match (&s.member, i) {
            (Err(e), i) if i == dead => assert!(e.to_string().contains(cluster.endpoint(i)), "{e}"),
            (Ok(m), i) if i != dead => {
                assert_eq!(m.is_leader(), i == leader, "member {i}: {m:?}");
                assert!(m.revision > 0);
            }
            (other, i) => panic!("member {i}: {other:?}"),
        }
    }
}
