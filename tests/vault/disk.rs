//! A full disk, a read-only state dir and an audit log that cannot be
//! written: key changes fail with an error naming the cause, nothing
//! stored is damaged, signatures go on while they can be audited, and
//! nothing is done that cannot be audited.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vaultgate::client::VaultClient;
use vaultgate::protocol::{scheme, ErrorCode, Request};

use crate::common::vault::{http_get, Opts, VaultProc};
use crate::common::{require_tool, wait_for};

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts file systems and must run as root (CI does; locally: sudo -E scripts/test.sh)"
    );
}

fn run(tool: &str, package: &str, args: &[&str]) {
    let out = Command::new(require_tool(tool, package))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed (the test needs root, as CI has): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Something mounted on `path` by the test; lazily unmounted on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// A tmpfs of `size` (a small disk to fill) on `path`.
    fn tmpfs(path: &Path, size: &str) -> Mount {
        assert_root();
        std::fs::create_dir_all(path).expect("mount point");
        run(
            "mount",
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                path.to_str().expect("utf-8"),
            ],
        );
        Mount {
            path: path.to_owned(),
        }
    }

    /// `path` made read-only where it is (a read-only bind mount of it on
    /// itself): even root gets EROFS. Files already open stay writable.
    fn read_only(path: &Path) -> Mount {
        assert_root();
        let p = path.to_str().expect("utf-8");
        run("mount", "mount", &["--bind", p, p]);
        let m = Mount {
            path: path.to_owned(),
        };
        run("mount", "mount", &["-o", "remount,ro,bind", p]);
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `path` with one file until a write
/// fails; returns the error.
fn fill(path: &Path) -> std::io::Error {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            return e;
        }
    }
}

fn stray_temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// `n` signatures with `key`, pipelined; how many succeeded, and the
/// first error.
async fn sign_many(c: &VaultClient, key: &str, n: usize) -> (usize, Option<String>) {
    let calls = (0..n).map(|i| async move {
        c.sign(key, None, scheme::ECDSA_P256_SHA256, &i.to_be_bytes())
            .await
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let err = results
        .into_iter()
        .find_map(|r| r.err())
        .map(|e| e.to_string());
    (ok, err)
}

/// `n` describes of `key` at once: the first error, if any.
async fn describe_many(c: &VaultClient, key: &str, n: usize) -> Option<String> {
    let req = Request::Describe { key: key.into() };
    let calls = (0..n).map(|_| c.json(&req));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .find_map(|r| r.err())
        .map(|e| e.to_string())
}

fn metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
    crate::common::proxy::metric(&text, name, labels)
}

#[test]
fn a_full_disk_refuses_key_changes_and_the_vault_keeps_signing() {
    let mnt = tempfile::Builder::new()
        .prefix("vg-disk-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    // Room for the keystore and the audit log's 1 MiB reserve, little more.
    let disk = Mount::tmpfs(mnt.path(), "3m");
    let mut v = VaultProc::start_with(Opts {
        state_dir: Some(disk.path.join("state")),
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "data", "--type", "aes-256"]);
    let blob = v
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"kept")
        .stdout;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let pem = v.dir.path().join("import.pem"); // not on the full disk
    std::fs::write(&pem, kp.serialize_pem()).expect("pem");
    let pem = pem.to_str().expect("utf-8");
    let keys = v.state.join("keys");
    let web_record = std::fs::read(keys.join("web.json")).expect("record");

    let full = fill(&disk.path.join("filler"));
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");

    // Every change fails, saying why, and changes nothing.
    for args in [
        &["key", "create", "new", "--type", "ecdsa-p256"][..],
        &["key", "rotate", "web"][..],
        &["key", "import", "imported", "--pem", pem][..],
        &["key", "disable", "web"][..],
    ] {
        let err = v.err(args);
        assert!(
            err.contains("storage") && err.contains("No space left on device"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(keys.join("web.json")).expect("record"),
        web_record
    );
    assert!(stray_temps(&keys).is_empty(), "{:?}", stray_temps(&keys));
    let d: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "describe", "web"])).expect("json");
    assert_eq!(
        (d["primary"].as_u64(), d["state"].as_str()),
        (Some(1), Some("enabled"))
    );
    assert!(v.err(&["key", "describe", "new"]).contains("not-found"));
    assert!(
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"create\"", "result=\"error\""]
        ) >= 1.0
    );

    // Signatures and decryption go on, audited in the log's reserve,
    // across a restart on the full disk too.
    crate::rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.expect("connect");
        assert_eq!(sign_many(&c, "web", 500).await, (500, None));
    });
    v.restart();
    assert_eq!(
        v.cli_stdin(&["data", "decrypt"], &blob).stdout,
        b"kept",
        "decrypt on a full disk"
    );
    v.ok(&["audit", "verify"]);

    // Once the reserve is spent too, the vault stops: nothing unaudited.
    let refused = crate::rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.expect("connect");
        let mut signed = 0;
        for _ in 0..40 {
            let (ok, err) = sign_many(&c, "web", 500).await;
            signed += ok;
            // Signatures fold into a few counted records; describes, a
            // record each, spend the reserve.
            if let Some(e) = err.or(describe_many(&c, "web", 500).await) {
                return (signed, e);
            }
        }
        panic!("{signed} signatures on a full disk and the audit log never filled up");
    });
    assert!(
        refused.1.contains("audit log cannot be written") && refused.1.contains("No space left"),
        "{refused:?}"
    );
    eprintln!(
        "full disk: the audit log's reserve took {} more signatures",
        refused.0
    );
    assert!(
        refused.0 >= 1000,
        "the reserve held only {} records",
        refused.0
    );
    assert!(v
        .err(&["key", "list"])
        .contains("audit log cannot be written"));
    assert_eq!(metric(&v, "vaultgate_vault_audit_failing", &[]), 1.0);
    assert!(metric(&v, "vaultgate_vault_audit_write_errors_total", &[]) >= 1.0);

    // Room again: the vault resumes by itself, and changes work.
    std::fs::remove_file(disk.path.join("filler")).expect("free the disk");
    wait_for("signing to resume", Duration::from_secs(10), || {
        v.cli_stdin(
            &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
            b"m",
        )
        .status
        .success()
        .then_some(())
    });
    v.ok(&["key", "create", "new", "--type", "ecdsa-p256"]);
    v.ok(&["key", "rotate", "web"]);
    v.kill9();
    v.restart();
    assert!(v.ok(&["key", "list"]).contains("new "));
    let d: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "describe", "web"])).expect("json");
    assert_eq!(d["primary"].as_u64(), Some(2));
    assert!(v.ok(&["audit", "verify"]).starts_with("ok "));
    let log = v.audit_log();
    assert!(log.lines().any(|l| l.contains("\"op\":\"create\"")
        && l.contains("\"result\":\"error\"")
        && l.contains("No space left on device")));
}

#[test]
fn a_read_only_state_dir_refuses_key_changes_and_signing_goes_on() {
    let v = VaultProc::start_with(Opts {
        config: Some("[vault]\nmin_deletion_wait = \"0s\"\n".into()),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let keys = v.state.join("keys");
    let record = std::fs::read(keys.join("web.json")).expect("record");
    {
        let _ro = Mount::read_only(&v.state);
        for args in [
            &["key", "create", "new", "--type", "ed25519"][..],
            &["key", "rotate", "web"][..],
            &["key", "schedule-deletion", "web", "--wait", "0s"][..],
        ] {
            let err = v.err(args);
            assert!(
                err.contains("storage") && err.contains("Read-only file system"),
                "{args:?}: {err}"
            );
        }
        // The audit log, open before, still takes records: signing goes on.
        for i in 0..20u8 {
            let out = v.cli_stdin(
                &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
                &[i],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            std::fs::read(keys.join("web.json")).expect("record"),
            record
        );
        assert!(v.ok(&["key", "list"]).contains("enabled"));
    }
    assert!(stray_temps(&keys).is_empty());
    v.ok(&["key", "rotate", "web"]);
    v.ok(&["audit", "verify"]);
    let log = v.audit_log();
    assert!(log
        .lines()
        .any(|l| l.contains("\"op\":\"rotate\"") && l.contains("Read-only file system")));
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_the_vault_until_it_can() {
    assert_root();
    let prlimit = require_tool("prlimit", "util-linux");
    let v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]); // everything so far is on disk
    let pid = v.child.id().to_string();
    let limit = |l: &str| {
        let out = Command::new(&prlimit)
            .args(["--pid", &pid, &format!("--fsize={l}")])
            .output()
            .expect("prlimit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // No file of the vault may grow past its current audit log: the next
    // batch of records fails (EFBIG; SIGXFSZ must not kill the vault).
    // Records are written in batches 10 ms after their first: wait until
    // the last records of the commands above (their disconnects) are in,
    // i.e. the size holds across a poll (20 ms apart).
    let log_size = || {
        std::fs::metadata(v.state.join("audit.log"))
            .expect("log")
            .len()
    };
    let mut last = u64::MAX;
    let size = wait_for("the audit log to settle", Duration::from_secs(5), || {
        let now = log_size();
        let settled = now == last;
        last = now;
        settled.then_some(now)
    });
    limit(&format!("{size}:"));
    // Signatures are answered before their records are written, so the
    // first (or first few) still are; each must reach the log later.
    let mut answered = 0;
    let refusal = wait_for("the vault to refuse", Duration::from_secs(10), || {
        let out = v.cli_stdin(
            &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
            b"m",
        );
        answered += usize::from(out.status.success());
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    assert!(answered >= 1, "refused before any record failed");
    assert!(
        refusal.contains("storage")
            && refusal.contains("audit log cannot be written")
            && refusal.contains("File too large"),
        "{refusal}"
    );
    // Nothing is performed meanwhile, not even a change that would fit.
    assert!(v
        .err(&["key", "create", "unaudited", "--type", "ed25519"])
        .contains("audit log cannot be written"));
    crate::rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.expect("connect");
        assert_eq!(c.ping(b"alive").await.expect("ping"), b"alive");
        let e = c
            .sign("web", None, scheme::ECDSA_P256_SHA256, b"m")
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::Storage));
    });
    assert_eq!(metric(&v, "vaultgate_vault_audit_failing", &[]), 1.0);
    assert!(metric(&v, "vaultgate_vault_audit_write_errors_total", &[]) >= 1.0);
    assert!(
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"unaudited\""]
        ) >= 1.0
    );

    limit("unlimited");
    wait_for("the vault to resume", Duration::from_secs(10), || {
        v.cli_stdin(
            &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
            b"again",
        )
        .status
        .success()
        .then_some(())
    });
    assert_eq!(metric(&v, "vaultgate_vault_audit_failing", &[]), 0.0);
    assert!(v
        .err(&["key", "describe", "unaudited"])
        .contains("not-found"));
    v.ok(&["audit", "verify"]);
    // The signatures answered just before the failure were kept and written.
    let log = v.audit_log();
    let signed: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["op"] == "sign" && r["result"] == "ok")
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(signed, answered as u64 + 1, "{log}");
}

#[test]
fn a_disk_filling_up_half_way_through_an_import_imports_nothing() {
    // A backup of 24 keys, made on an ordinary disk.
    let a = VaultProc::start();
    for i in 0..24 {
        a.ok(&["key", "create", &format!("k{i:02}"), "--type", "ed25519"]);
    }
    let file = a.dir.path().join("backup.json");
    let file = file.to_str().expect("utf-8");
    let pass = b"long backup passphrase\n";
    let out = a.cli_stdin(&["backup", "export", "--out", file], pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mnt = tempfile::Builder::new()
        .prefix("vg-disk-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let disk = Mount::tmpfs(mnt.path(), "3m");
    let v = VaultProc::start_with(Opts {
        state_dir: Some(disk.path.join("state")),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let before = v.ok(&["key", "list", "--json"]);
    // Full, then room for a few records (a page each) and not 24.
    let filler = disk.path.join("filler");
    let full = fill(&filler);
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("filler");
    let len = f.metadata().expect("filler size").len();
    f.set_len(len - 4 * 4096).expect("free four pages");
    f.sync_all().expect("sync");
    drop(f); // an open file's pages are not freed by removing it

    let out = v.cli_stdin(&["backup", "import", "--in", file], pass);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "imported on a full disk");
    assert!(
        err.contains("storage") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(
        v.ok(&["key", "list", "--json"]),
        before,
        "a key was imported"
    );
    let keys = v.state.join("keys");
    let mut left: Vec<String> = std::fs::read_dir(&keys)
        .expect("keys dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["MANIFEST", "web.json"],
        "the import left files behind"
    );
    // Once there is room, the same file imports whole.
    std::fs::remove_file(&filler).expect("free the disk");
    let out = v.cli_stdin(&["backup", "import", "--in", file], pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored 24 keys"));
}

#[test]
fn a_filling_disk_is_warned_of_before_it_is_full_and_its_recovery_too() {
    let mnt = tempfile::Builder::new()
        .prefix("vg-disk-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let disk = Mount::tmpfs(mnt.path(), "16m");
    let v = VaultProc::start_with(Opts {
        state_dir: Some(disk.path.join("state")),
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let gauge = |name: &str| {
        let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
        crate::common::proxy::metric(&text, name, &[])
    };
    let size = gauge("vaultgate_vault_state_size_bytes");
    assert_eq!(size, 16.0 * 1024.0 * 1024.0);
    assert!(gauge("vaultgate_vault_state_free_bytes") > 0.5 * size);
    let audited = |op: &str| {
        v.ok(&["audit", "verify"]);
        v.audit_log()
            .lines()
            .filter(|l| l.contains(&format!("\"op\":\"{op}\"")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(audited("disk-low").is_empty());

    // Something else fills the disk to 95 %: the vault still has room,
    // and says it is running out.
    let filler = disk.path.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let free = gauge("vaultgate_vault_state_free_bytes") as usize;
    let leave = (0.05 * size) as usize;
    f.write_all(&vec![0u8; free - leave]).expect("fill");
    f.sync_all().expect("sync");
    let low = wait_for("the low-space warning", Duration::from_secs(10), || {
        audited("disk-low").into_iter().next()
    });
    assert!(low.contains("MiB of 16 MiB free"), "{low}");
    assert!(gauge("vaultgate_vault_state_free_bytes") < 0.10 * size);
    // Signing goes on, and the warning is not repeated every second.
    let out = v.cli_stdin(
        &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(f);
    std::fs::remove_file(&filler).expect("free the disk");
    wait_for("the recovery notice", Duration::from_secs(10), || {
        audited("disk-recovered").into_iter().next()
    });
    assert_eq!(audited("disk-low").len(), 1);
}
