//! Someone with write access to the state dir and no master key, while
//! the vault is stopped: cuts the audit log's tail, removes its head,
//! rolls back key records or the whole log, deletes records. Each is
//! found at the next start: refused by name where it concerns a key,
//! recorded as an integrity alarm (which `audit verify` fails on), logged
//! and counted; everything else is served.

use crate::common::vault::{http_get, Opts, VaultProc};

fn metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
    crate::common::proxy::metric(&text, name, labels)
}

/// `audit verify`, online; its stderr if it fails.
fn verify_fails(v: &VaultProc) -> String {
    v.err(&["audit", "verify"])
}

#[test]
fn a_log_cut_while_the_vault_was_stopped_is_an_alarm_not_a_fresh_start() {
    let mut v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    for i in 0..5u8 {
        v.cli_stdin(
            &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
            &[i],
        );
    }
    v.stop();
    // Cut the last three records at a line boundary.
    let log = v.audit_log();
    let lines: Vec<&str> = log.lines().collect();
    let keep = lines.len() - 3;
    std::fs::write(v.state.join("audit.log"), lines[..keep].join("\n") + "\n").expect("cut");
    v.restart();
    let err = verify_fails(&v);
    assert!(
        err.contains("integrity alarm") && err.contains("audit-cut") && err.contains("missing"),
        "{err}"
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_integrity_alarms_total",
            &["kind=\"audit-cut\""]
        ),
        1.0
    );
    // The vault serves on.
    v.cli_stdin(
        &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    // Restarting again does not make the alarm go away.
    v.restart();
    assert!(verify_fails(&v).contains("audit-cut"));
    v.kill9();
    let (ok, out) = v.verify_offline();
    assert!(!ok && out.contains("audit-cut"), "{out}");
}

#[test]
fn a_missing_head_and_a_partial_line_no_crash_explains_are_alarms() {
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]);
    v.kill9();
    std::fs::remove_file(v.state.join("audit.head")).expect("remove head");
    v.restart();
    assert!(verify_fails(&v).contains("audit-head-missing"));

    // A cut in the middle of a synced record is not a torn write: the
    // fragment is kept aside and the cut is an alarm.
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.stop();
    let log = v.audit_log();
    std::fs::write(v.state.join("audit.log"), &log[..log.len() - 30]).expect("cut mid-line");
    v.restart();
    let err = verify_fails(&v);
    assert!(
        err.contains("audit-fragment") && err.contains("audit-cut"),
        "{err}"
    );
    assert!(std::fs::read_dir(&v.state)
        .expect("state dir")
        .filter_map(Result::ok)
        .any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("audit.fragment-")));
}
