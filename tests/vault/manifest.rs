//! Someone with write access to the state dir and no master key, while
//! the vault is stopped, puts back older copies of key records, deletes
//! them, or puts back the whole `keys/` dir. The keystore manifest finds
//! each at the next start: the key refused by name, an integrity alarm
//! audited (which `audit verify` fails on), logged and counted; every
//! other key serves. Crashes around changes raise no alarm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::vault::{http_get, Opts, VaultProc};

fn metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
    crate::common::proxy::metric(&text, name, labels)
}

fn alarms(v: &VaultProc, kind: &str) -> f64 {
    let label = format!("kind=\"{kind}\"");
    metric(v, "vaultgate_vault_integrity_alarms_total", &[&label])
}

fn with_metrics() -> VaultProc {
    VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    })
}

fn record(v: &VaultProc, name: &str) -> PathBuf {
    v.state.join("keys").join(format!("{name}.json"))
}

fn sign(v: &VaultProc, key: &str) -> std::process::Output {
    v.cli_stdin(&["key", "sign", key, "--scheme", "ecdsa-p256-sha256"], b"m")
}

fn signs(v: &VaultProc, key: &str) {
    let out = sign(v, key);
    assert!(
        out.status.success(),
        "{key} should sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn an_older_copy_of_a_key_record_is_refused_by_name_and_the_others_sign() {
    let mut v = with_metrics();
    for name in ["web", "api", "rot"] {
        v.ok(&["key", "create", name, "--type", "ecdsa-p256"]);
    }
    let enabled = std::fs::read(record(&v, "web")).expect("web");
    let before_rotation = std::fs::read(record(&v, "rot")).expect("rot");
    v.ok(&["key", "disable", "web"]);
    v.ok(&["key", "rotate", "rot"]);
    v.stop();
    std::fs::write(record(&v, "web"), enabled).expect("put back web");
    std::fs::write(record(&v, "rot"), before_rotation).expect("put back rot");
    v.restart();

    let err = String::from_utf8_lossy(&sign(&v, "web").stderr).into_owned();
    assert!(
        err.contains("\"web\"") && err.contains("rolled back"),
        "{err}"
    );
    let err = v.err(&["key", "describe", "rot"]);
    assert!(
        err.contains("\"rot\"") && err.contains("rolled back"),
        "{err}"
    );
    signs(&v, "api");
    let err = v.err(&["audit", "verify"]);
    assert!(
        err.contains("key-rolled-back") && err.contains("\"web\"") && err.contains("\"rot\""),
        "{err}"
    );
    assert_eq!(alarms(&v, "key-rolled-back"), 2.0);
    // Still refused at the next start: the manifest is not rewritten to fit.
    v.restart();
    assert!(String::from_utf8_lossy(&sign(&v, "web").stderr).contains("rolled back"));
}

#[test]
fn a_deleted_key_record_is_an_alarm_naming_it() {
    let mut v = with_metrics();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "api", "--type", "ecdsa-p256"]);
    v.stop();
    std::fs::remove_file(record(&v, "api")).expect("delete api");
    v.restart();
    let err = String::from_utf8_lossy(&sign(&v, "api").stderr).into_owned();
    assert!(err.contains("\"api\"") && err.contains("missing"), "{err}");
    let err = v.err(&["audit", "verify"]);
    assert!(
        err.contains("key-missing") && err.contains("\"api\""),
        "{err}"
    );
    assert_eq!(alarms(&v, "key-missing"), 1.0);
    signs(&v, "web");
    // The name is not free for a new key: the old one is not known gone.
    let err = v.err(&["key", "create", "api", "--type", "ecdsa-p256"]);
    assert!(err.contains("api"), "{err}");
}

#[test]
fn a_deleted_keys_record_put_back_is_refused() {
    let mut v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some("[vault]\nmin_deletion_wait = \"0s\"\n".into()),
        ..Opts::default()
    });
    v.ok(&["key", "create", "old", "--type", "aes-256"]);
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let copy = std::fs::read(record(&v, "old")).expect("old");
    v.ok(&["key", "schedule-deletion", "old", "--wait", "0s"]);
    let path = record(&v, "old");
    crate::common::wait_for("the deletion", Duration::from_secs(10), || {
        (!path.exists()).then_some(())
    });
    v.stop();
    std::fs::write(&path, copy).expect("put back");
    v.restart();
    let out = v.cli_stdin(&["data", "encrypt", "--key", "old"], b"secret");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("\"old\"") && err.contains("deleted"),
        "{err}"
    );
    let err = v.err(&["audit", "verify"]);
    assert!(
        err.contains("key-unknown") && err.contains("\"old\""),
        "{err}"
    );
    assert_eq!(alarms(&v, "key-unknown"), 1.0);
    signs(&v, "web");
}

#[test]
fn the_whole_keys_dir_put_back_from_an_older_copy_is_an_alarm() {
    let mut v = with_metrics();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "disable", "web"]);
    let keys = v.state.join("keys");
    let copy = v.dir.path().join("keys-copy");
    copy_dir(&keys, &copy);
    v.ok(&["key", "enable", "web"]);
    v.ok(&["key", "disable", "web"]);
    v.stop();
    std::fs::remove_dir_all(&keys).expect("rm keys");
    copy_dir(&copy, &keys);
    v.restart();
    let err = v.err(&["audit", "verify"]);
    assert!(err.contains("manifest-rolled-back"), "{err}");
    assert_eq!(alarms(&v, "manifest-rolled-back"), 1.0);
}

#[test]
fn kill9_around_keystore_changes_raises_no_alarm() {
    let mut v = VaultProc::start();
    for i in 0..6u64 {
        let name = format!("k{i}");
        v.ok(&["key", "create", &name, "--type", "ed25519"]);
        // Kill while a rotation is on its way, at a different step each
        // round: as its request is sent, once the key's record has been
        // replaced, once the manifest has. Watched, not timed: each step
        // is seen on disk the moment it lands.
        let keys = v.state.join("keys");
        let watched = match i % 3 {
            0 => None,
            1 => Some(keys.join(format!("{name}.json"))),
            _ => Some(keys.join("MANIFEST")),
        };
        let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let before = watched.as_deref().and_then(stamp);
        let socket = v.socket.clone();
        let rotate = std::thread::spawn(move || {
            crate::common::vault::run_cli(
                std::process::Command::new(crate::common::bin()).args(["key", "rotate", &name]),
                &socket,
                b"",
            )
        });
        if let Some(path) = &watched {
            while stamp(path) == before && !rotate.is_finished() {
                std::thread::yield_now();
            }
        }
        v.kill9();
        let _ = rotate.join();
        v.restart();
        let out = v.ok(&["audit", "verify"]);
        assert!(out.starts_with("ok "), "{out}");
        for j in 0..=i {
            let out = v.cli_stdin(
                &["key", "sign", &format!("k{j}"), "--scheme", "ed25519"],
                b"m",
            );
            assert!(
                out.status.success(),
                "k{j}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_removed_manifest_is_an_alarm_and_the_keys_serve_on() {
    let mut v = with_metrics();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]);
    v.stop();
    let manifest = v.state.join("keys").join("MANIFEST");
    std::fs::remove_file(&manifest).expect("remove manifest");
    v.restart();
    let err = v.err(&["audit", "verify"]);
    assert!(err.contains("manifest-missing"), "{err}");
    assert_eq!(alarms(&v, "manifest-missing"), 1.0);
    assert!(manifest.exists(), "no manifest written again");
    signs(&v, "web");
    // Written again: the next start raises no new alarm.
    v.restart();
    assert_eq!(alarms(&v, "manifest-missing"), 0.0);
}

#[test]
fn an_older_audit_log_and_head_put_back_or_removed_are_alarms() {
    let mut v = with_metrics();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]);
    v.stop();
    let copy = v.dir.path().join("audit-copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for f in ["audit.log", "audit.head"] {
        std::fs::copy(v.state.join(f), copy.join(f)).expect("copy");
    }
    v.restart();
    v.ok(&["key", "rotate", "web"]);
    v.ok(&["key", "disable", "web"]);
    v.stop();
    // Older, and consistent with its head: the log alone cannot tell.
    for f in ["audit.log", "audit.head"] {
        std::fs::copy(copy.join(f), v.state.join(f)).expect("put back");
    }
    v.restart();
    let err = v.err(&["audit", "verify"]);
    assert!(err.contains("audit-rolled-back"), "{err}");
    assert_eq!(alarms(&v, "audit-rolled-back"), 1.0);
    let out = v.cli(&["key", "describe", "web"]);
    assert!(out.status.success(), "the keys serve on");

    // Removed altogether.
    let mut v = with_metrics();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "rotate", "web"]);
    v.stop();
    for f in ["audit.log", "audit.head"] {
        std::fs::remove_file(v.state.join(f)).expect("remove");
    }
    v.restart();
    let err = v.err(&["audit", "verify"]);
    assert!(err.contains("audit-rolled-back"), "{err}");
    signs(&v, "web");
}

#[test]
fn audit_verify_prints_the_anchor_to_ship_elsewhere() {
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let online = v.ok(&["audit", "verify"]);
    let line = online
        .lines()
        .find(|l| l.starts_with("anchor seq="))
        .unwrap_or_else(|| panic!("no anchor in {online}"));
    let (seq, mac) = line
        .trim_start_matches("anchor seq=")
        .split_once(" mac=")
        .expect("seq and mac");
    let last: serde_json::Value = v
        .audit_log()
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("record"))
        .expect("a record");
    assert!(last["seq"].as_u64().expect("seq") >= seq.parse::<u64>().expect("a number"));
    assert_eq!(mac.len(), 64, "{line}");
    v.stop();
    let out = std::process::Command::new(crate::common::bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(&v.state)
        .output()
        .expect("run verify");
    let offline = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = offline
        .lines()
        .find(|l| l.starts_with("anchor seq="))
        .unwrap_or_else(|| panic!("no anchor in {offline}"));
    let last: serde_json::Value =
        serde_json::from_str(v.audit_log().lines().last().expect("a record")).expect("record");
    assert_eq!(
        line,
        format!(
            "anchor seq={} mac={}",
            last["seq"],
            last["mac"].as_str().expect("mac")
        )
    );
}
