//! Successful uses folded into counted records, with the real vault: a
//! connection pipelining signatures grows the audit log by a few counted
//! records, each signature counted exactly once, and never folded across
//! a key change.

use crate::common::vault::VaultProc;
use crate::hostile::{pipeline, sign_request};

/// The audit log's records, parsed.
fn records(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).expect("an audit record"))
        .collect()
}

fn count(r: &serde_json::Value) -> u64 {
    r["count"].as_u64().unwrap_or(1)
}

#[test]
fn pipelined_signatures_are_audited_as_a_few_counted_records() {
    let v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]);
    let before = v.audit_log().len();
    const N: u32 = 10_000;
    let signs: Vec<_> = (0..N).map(|i| sign_request("web", i)).collect();
    let signed = |answers: Vec<(u32, u8)>| answers.iter().filter(|(_, op)| *op == 0x82).count();
    assert_eq!(signed(pipeline(&v.socket, &signs)), N as usize);
    // A key change between two floods of signatures.
    v.ok(&["key", "rotate", "web"]);
    assert_eq!(signed(pipeline(&v.socket, &signs)), N as usize);
    let verified = v.ok(&["audit", "verify"]);
    let log = v.audit_log();
    let all = records(&log);
    let new = records(&log[before..]);
    let sign_records: Vec<_> = new.iter().filter(|r| r["op"] == "sign").collect();
    let bytes = log.len() - before;
    eprintln!(
        "{} signatures: {} sign records, {bytes} bytes of audit log",
        2 * N,
        sign_records.len()
    );
    // Each signature counted once, in far fewer records than signatures.
    assert!(sign_records.iter().all(|r| r["result"] == "ok"));
    assert_eq!(
        sign_records.iter().map(|r| count(r)).sum::<u64>(),
        2 * u64::from(N)
    );
    assert!(
        sign_records.len() < N as usize / 10,
        "{} records for {} signatures",
        sign_records.len(),
        2 * N
    );
    // Folded never across the key change: version 1's before it, 2's after.
    let rotated = new
        .iter()
        .position(|r| r["op"] == "rotate")
        .expect("the rotation's record");
    for (i, r) in new.iter().enumerate().filter(|(_, r)| r["op"] == "sign") {
        let version = if i < rotated { 1 } else { 2 };
        assert_eq!(r["version"], version, "record {i}: {r}");
    }
    let by_version = |version: u64| -> u64 {
        sign_records
            .iter()
            .filter(|r| r["version"] == version)
            .map(|r| count(r))
            .sum()
    };
    assert_eq!((by_version(1), by_version(2)), (u64::from(N), u64::from(N)));
    // `audit verify` sums the counts too (the log's own records aside).
    let events: u64 = all
        .iter()
        .filter(|r| !r["op"].as_str().unwrap_or_default().starts_with("audit-"))
        .map(count)
        .sum();
    assert!(events > 2 * u64::from(N));
    assert!(
        verified.contains(&format!("for {events} operations and events")),
        "{verified}"
    );
}
