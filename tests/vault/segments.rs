//! The audit log in segments, with the real vault: rotated by command and
//! by size while signatures keep coming, across a kill -9, pruned by
//! retention; a middle segment removed while the vault was stopped is
//! named by `audit verify` and raised as an alarm at start.

use std::path::Path;

use vaultgate::client::VaultClient;
use vaultgate::protocol::{scheme, Request};

use crate::common::vault::{http_get, Opts, VaultProc};

fn metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
    crate::common::proxy::metric(&text, name, labels)
}

/// The closed segments in the state dir, oldest first.
fn segments(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// `audit rotate`: the closed segment's name, which must be in the state dir.
fn rotate(v: &VaultProc) -> String {
    let name = v.ok(&["audit", "rotate"]).trim().to_owned();
    assert!(
        v.state.join(&name).is_file(),
        "{name} is not in the state dir"
    );
    name
}

fn sign(v: &VaultProc, n: usize) {
    for i in 0..n {
        let out = v.cli_stdin(
            &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
            &[i as u8],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The number `ok N records` reports.
fn records(verified: &str) -> u64 {
    verified
        .strip_prefix("ok ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an ok line: {verified}"))
}

#[test]
fn the_log_rotates_by_command_and_by_size_while_signing_goes_on() {
    let v = VaultProc::start_with(Opts {
        config: Some("[vault]\naudit_rotate_size = \"64KiB\"\naudit_sync = \"50ms\"\n".into()),
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    const TASKS: usize = 4;
    const EACH: usize = 1500;
    let signed = std::sync::atomic::AtomicUsize::new(0);
    let mut rotated = Vec::new();
    std::thread::scope(|s| {
        let signer = s.spawn(|| {
            crate::rt().block_on(async {
                let c = VaultClient::connect(&v.socket).await.expect("connect");
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let c = c.clone();
                        tokio::spawn(async move {
                            for i in 0..EACH {
                                let msg = format!("{t}-{i}");
                                if let Err(e) = c
                                    .sign("web", None, scheme::ECDSA_P256_SHA256, msg.as_bytes())
                                    .await
                                {
                                    return Err(format!("signature {t}-{i}: {e}"));
                                }
                                // Signatures alone fold into a few counted
                                // records; a describe is a record of its own
                                // and ends a fold, so records come by the
                                // thousand, as from varied callers.
                                if let Err(e) =
                                    c.json(&Request::Describe { key: "web".into() }).await
                                {
                                    return Err(format!("describe {t}-{i}: {e}"));
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task").expect("every signature succeeds");
                }
            });
            signed.store(TASKS * EACH, std::sync::atomic::Ordering::Release);
        });
        // Rotations by command while the signatures go on.
        while signed.load(std::sync::atomic::Ordering::Acquire) == 0 && rotated.len() < 3 {
            if v.audit_log().lines().count() > 50 {
                rotated.push(rotate(&v));
            }
        }
        signer.join().expect("signer");
    });
    assert!(
        !rotated.is_empty(),
        "no rotation by command landed during signing"
    );
    let verified = v.ok(&["audit", "verify"]);
    let closed = segments(&v.state);
    // 6000 records of ~230 bytes, 64 KiB segments: some closed by size.
    // A segment closes at the end of the writer round that crossed the
    // size, and a round lasts as long as its syncs take, so how many
    // depends on the disk; each one closed by size holds at least that.
    let by_size: Vec<&String> = closed.iter().filter(|c| !rotated.contains(c)).collect();
    assert!(!by_size.is_empty(), "no rotation by size: {closed:?}");
    for name in &by_size {
        let len = std::fs::metadata(v.state.join(name))
            .expect("segment")
            .len();
        assert!(len >= 64 * 1024, "{name}: {len} bytes");
    }
    for name in &rotated {
        assert!(closed.contains(name), "{name} not in {closed:?}");
    }
    assert!(records(&verified) > (TASKS * EACH) as u64, "{verified}");
    assert!(
        verified.contains(&format!("across {} closed segment(s)", closed.len())),
        "{verified}"
    );
    // Sequence numbers run on from each segment into the next.
    let mut next = 1;
    for name in &closed {
        let (first, last) = name
            .trim_start_matches("audit-")
            .trim_end_matches(".log")
            .split_once('-')
            .expect("a range");
        assert_eq!(first.parse::<u64>().unwrap(), next, "{name}");
        next = last.parse::<u64>().unwrap() + 1;
    }
    assert!(v.audit_log().starts_with(&format!("{{\"seq\":{next},")));
    assert_eq!(
        metric(&v, "vaultgate_vault_audit_segments", &[]),
        closed.len() as f64
    );
    assert!(metric(&v, "vaultgate_vault_audit_bytes", &[]) > (by_size.len() * 64 * 1024) as f64);
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"ok\""]
        ),
        (TASKS * EACH) as f64
    );
}

#[test]
fn a_vault_killed_after_rotations_starts_without_an_alarm() {
    let mut v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    for _ in 0..3 {
        sign(&v, 3);
        rotate(&v);
    }
    // Killed right after a rotation, and again after a few records more.
    v.kill9();
    v.restart();
    sign(&v, 2);
    v.kill9();
    v.restart();
    let verified = v.ok(&["audit", "verify"]);
    assert!(
        verified.contains("across 3 closed segment(s)"),
        "{verified}"
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_integrity_alarms_total",
            &["kind=\"audit-cut\""]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_integrity_alarms_total",
            &["kind=\"audit-replaced\""]
        ),
        0.0
    );
    v.stop();
    let (ok, out) = v.verify_offline();
    assert!(ok && out.contains("across 3 closed segment(s)"), "{out}");
}

#[test]
fn a_middle_segment_removed_while_stopped_is_named_and_raised() {
    let mut v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let closed: Vec<String> = (0..3)
        .map(|_| {
            sign(&v, 2);
            rotate(&v)
        })
        .collect();
    v.stop();
    std::fs::remove_file(v.state.join(&closed[1])).expect("remove the middle segment");
    let (ok, out) = v.verify_offline();
    assert!(
        !ok && out.contains(&closed[1]) && out.contains("missing"),
        "{out}"
    );
    v.restart();
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_integrity_alarms_total",
            &["kind=\"audit-segment-missing\""]
        ),
        1.0
    );
    let err = v.err(&["audit", "verify"]);
    assert!(err.contains(&closed[1]), "{err}");
    // The alarm is in the chain (`verify` flushed it), and the vault
    // serves on.
    assert!(
        v.audit_log()
            .lines()
            .any(|l| l.contains("integrity-alarm") && l.contains(&closed[1])),
        "{}",
        v.audit_log()
    );
    sign(&v, 1);
}

#[test]
fn retention_deletes_the_oldest_segments_and_the_rest_still_verifies() {
    let v = VaultProc::start_with(Opts {
        config: Some("[vault]\naudit_keep_segments = 2\n".into()),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let closed: Vec<String> = (0..4)
        .map(|_| {
            sign(&v, 2);
            rotate(&v)
        })
        .collect();
    assert_eq!(segments(&v.state), closed[2..]);
    let verified = v.ok(&["audit", "verify"]);
    assert!(
        verified.contains("across 2 closed segment(s)"),
        "{verified}"
    );
    // The chain is checked from the oldest kept record on.
    let first = &closed[2]["audit-".len()..]
        .split('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a first record");
    assert!(verified.contains(&format!("({first}..=")), "{verified}");
    let mut chain = String::new();
    for kept in segments(&v.state) {
        chain += &std::fs::read_to_string(v.state.join(kept)).expect("segment");
    }
    chain += &v.audit_log();
    for gone in &closed[..2] {
        assert!(
            chain
                .lines()
                .any(|l| l.contains("\"op\":\"audit-segment-deleted\"")
                    && l.contains(&format!("\"segment\":\"{gone}\""))),
            "no deletion record for {gone}"
        );
    }
}
