//! One leader at a time: the next candidate takes over when the leader
//! goes, and a deposed leader's fenced write fails.

use std::time::{Duration, Instant};

use vaultgate::etcd::{Campaign, Condition, Etcd, EtcdError, Leadership, Lost};

use crate::common::etcd::EtcdCluster;
use crate::common::wait_for;

const TTL: Duration = Duration::from_secs(3);
const ELECTION: &str = "elections/scheduler";

fn leads(c: &mut Campaign, within: Duration) -> Condition {
    match c.wait_for(within, |s| !matches!(s, Leadership::Campaigning)) {
        Leadership::Leader { fence } => fence,
        other => panic!("not elected within {within:?}: {other:?}"),
    }
}

/// Candidates' keys under the election, as etcd has them.
fn candidates(cluster: &EtcdCluster) -> usize {
    cluster
        .etcdctl(&[
            "get",
            "--prefix",
            &format!("/vg-test/{ELECTION}/"),
            "--keys-only",
        ])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

fn fenced_write(etcd: &Etcd, fence: &Condition, value: &[u8]) -> Result<i64, EtcdError> {
    etcd.block_on(etcd.txn_put_all(
        std::slice::from_ref(fence),
        &[("sched/state".into(), value.to_vec())],
    ))
}

/// Candidate a elected (with its fence), then b standing, its key at etcd.
fn a_leads_b_waits(
    cluster: &EtcdCluster,
    etcd_a: &Etcd,
    etcd_b: &Etcd,
) -> (Campaign, Condition, Campaign) {
    let mut a = etcd_a
        .block_on(etcd_a.campaign(ELECTION, "vault-a", TTL))
        .expect("campaign a");
    let fence_a = leads(&mut a, Duration::from_secs(5));
    let b = etcd_b
        .block_on(etcd_b.campaign(ELECTION, "vault-b", TTL))
        .expect("campaign b");
    wait_for("b's candidacy at etcd", Duration::from_secs(5), || {
        (candidates(cluster) == 2).then_some(())
    });
    (a, fence_a, b)
}

#[test]
fn the_next_candidate_leads_when_the_leader_resigns_and_the_old_fence_fails() {
    let cluster = EtcdCluster::start(3);
    let etcd_a = crate::client_in_order(&cluster, &[0, 1, 2]);
    let etcd_b = crate::client_in_order(&cluster, &[1, 2, 0]);
    let (a, fence_a, mut b) = a_leads_b_waits(&cluster, &etcd_a, &etcd_b);
    // Through a's lease refreshes, b keeps waiting: one leader at a time.
    // Any change of b's state ends the wait early and fails the check.
    let state = b.wait_for(TTL + Duration::from_secs(1), |s| {
        !matches!(s, Leadership::Campaigning)
    });
    assert!(
        a.is_leader() && matches!(state, Leadership::Campaigning),
        "a {:?}, b {state:?}",
        a.state()
    );
    fenced_write(&etcd_a, &fence_a, b"by a").expect("the leader's fenced write");

    let t = Instant::now();
    drop(a);
    let fence_b = leads(&mut b, TTL + Duration::from_secs(2));
    eprintln!("b leads {:?} after a resigned", t.elapsed());
    assert_ne!(fence_a, fence_b);

    // a's late write, fenced by the key it no longer holds, fails.
    let err = fenced_write(&etcd_a, &fence_a, b"late a").expect_err("a was deposed");
    assert!(
        matches!(&err, EtcdError::Conflict { key, .. } if key == fence_a.key()),
        "{err}"
    );
    fenced_write(&etcd_b, &fence_b, b"by b").expect("the new leader's write");
    let state = etcd_b
        .block_on(etcd_b.get("sched/state"))
        .expect("get")
        .expect("key");
    assert_eq!(state.value, b"by b");
}

#[test]
fn a_lease_revoked_at_etcd_is_reported_lost_and_the_next_candidate_leads() {
    let cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let (mut a, fence_a, mut b) = a_leads_b_waits(&cluster, &etcd, &etcd);
    assert!(!b.is_leader());

    // As when a's lease expired behind its back: etcd drops it.
    cluster.etcdctl(&["lease", "revoke", &format!("{:x}", a.lease())]);
    let t = Instant::now();
    let fence_b = leads(&mut b, TTL + Duration::from_secs(2));
    match a.wait_for(TTL + Duration::from_secs(2), |s| {
        matches!(s, Leadership::Lost(_))
    }) {
        Leadership::Lost(Lost::LeaseExpired { lease }) => assert_eq!(lease, a.lease()),
        other => panic!("a should know it lost the lease: {other:?}"),
    }
    eprintln!("a told of its loss {:?} after the revoke", t.elapsed());
    assert!(fenced_write(&etcd, &fence_a, b"late a").is_err());
    fenced_write(&etcd, &fence_b, b"by b").expect("the new leader's write");
}

#[test]
fn a_leader_cut_off_from_quorum_is_told_within_its_ttl() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = crate::client(&cluster);
    let mut a = etcd
        .block_on(etcd.campaign(ELECTION, "vault-a", TTL))
        .expect("campaign a");
    leads(&mut a, Duration::from_secs(5));
    cluster.stop(0);
    cluster.stop(1);
    let t = Instant::now();
    match a.wait_for(2 * TTL, |s| matches!(s, Leadership::Lost(_))) {
        Leadership::Lost(Lost::Unreachable { .. }) => {}
        other => panic!("a should have given up leading: {other:?}"),
    }
    let took = t.elapsed();
    // It must stop believing it leads no later than etcd drops the lease.
    assert!(took <= TTL + Duration::from_secs(1), "told after {took:?}");
    cluster.cont(0);
    cluster.cont(1);
}
