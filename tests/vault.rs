//! The vault as users meet it: the real `vaultgate vault` process, driven
//! through the CLI, the library client and raw bytes on its socket.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

mod common;

#[path = "vault/backup.rs"]
mod backup;
#[path = "vault/compact.rs"]
mod compact;
#[path = "vault/crash.rs"]
mod crash;
#[path = "vault/disk.rs"]
mod disk;
#[path = "vault/fairness.rs"]
mod fairness;
#[path = "vault/hostile.rs"]
mod hostile;
#[path = "vault/manifest.rs"]
mod manifest;
#[path = "vault/privdrop.rs"]
mod privdrop;
#[path = "vault/rollback.rs"]
mod rollback;
#[path = "vault/segments.rs"]
mod segments;
#[path = "vault/starting.rs"]
mod starting;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::vault::{http_get, run_cli, Opts, VaultProc};
use vaultgate::client::VaultClient;
use vaultgate::protocol::{scheme, ErrorCode, KeyType, Request};

/// The runtime the vault tests drive their async clients on.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const SHORT_DELETION: &str = "[vault]\nmin_deletion_wait = \"1s\"\n";

#[test]
fn key_lifecycle_through_the_cli() {
    let v = VaultProc::start_with(Opts {
        config: Some(SHORT_DELETION.into()),
        ..Opts::default()
    });
    // The exact surface users script against.
    assert!(v
        .ok(&["key", "create", "web", "--type", "ecdsa-p256"])
        .contains("created web"));
    let list = v.ok(&["key", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("web ") && l.contains("ecdsa-p256") && l.contains("enabled")),
        "{list}"
    );

    for t in [
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ed25519",
        "aes-256",
    ] {
        v.ok(&["key", "create", &format!("k-{t}"), "--type", t]);
    }
    let listed: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 7);

    // duplicate names, bad names and bad types are refused with a reason
    assert!(v
        .err(&["key", "create", "web", "--type", "ed25519"])
        .contains("already-exists"));
    assert!(v
        .err(&["key", "create", "../x", "--type", "ed25519"])
        .contains("invalid key name"));
    assert!(v
        .err(&["key", "create", "x", "--type", "dsa"])
        .contains("unknown key type"));

    // sign with every scheme each type allows; verify through the vault
    let cases: &[(&str, &[&str])] = &[
        ("web", &["ecdsa-p256-sha256"]),
        ("k-ecdsa-p384", &["ecdsa-p384-sha384"]),
        ("k-ed25519", &["ed25519"]),
        (
            "k-rsa-3072",
            &[
                "rsa-pkcs1-sha256",
                "rsa-pkcs1-sha384",
                "rsa-pkcs1-sha512",
                "rsa-pss-sha256",
                "rsa-pss-sha384",
                "rsa-pss-sha512",
            ],
        ),
    ];
    for (key, schemes) in cases {
        for s in *schemes {
            let out = v.cli_stdin(&["key", "sign", key, "--scheme", s], b"to be signed");
            assert!(
                out.status.success(),
                "{key} {s}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sig = v.dir.path().join("sig");
            std::fs::write(&sig, &out.stdout).unwrap();
            let sig = sig.to_str().unwrap();
            let ok = v.cli_stdin(
                &["key", "verify", key, "--scheme", s, "--signature", sig],
                b"to be signed",
            );
            assert!(ok.status.success(), "{key} {s} should verify");
            let bad = v.cli_stdin(
                &["key", "verify", key, "--scheme", s, "--signature", sig],
                b"tampered",
            );
            assert!(!bad.status.success(), "{key} {s} verified a wrong message");
        }
    }
    // import a PKCS#8 PEM made elsewhere; its public key is the one served
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem_path = v.dir.path().join("imported.pem");
    std::fs::write(&pem_path, kp.serialize_pem()).unwrap();
    let pem_path = pem_path.to_str().unwrap();
    assert!(v
        .ok(&["key", "import", "legacy", "--pem", pem_path])
        .contains("imported legacy (ecdsa-p256)"));
    let served = v.ok(&["key", "public", "legacy"]);
    assert!(served.starts_with(&kp.public_key_pem()), "{served}");
    let kp2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(v.dir.path().join("imported.pem"), kp2.serialize_pem()).unwrap();
    assert!(v
        .ok(&[
            "key",
            "import",
            "legacy",
            "--pem",
            pem_path,
            "--new-version"
        ])
        .contains("version 2"));
    assert!(v
        .ok(&["key", "public", "legacy"])
        .starts_with(&kp2.public_key_pem()));
    assert!(v
        .ok(&["key", "public", "legacy", "--version", "1"])
        .starts_with(&kp.public_key_pem()));
    std::fs::write(v.dir.path().join("imported.pem"), "not a key").unwrap();
    assert!(v
        .err(&["key", "import", "junk", "--pem", pem_path])
        .contains("invalid-input"));

    let wrong = v.cli_stdin(&["key", "sign", "web", "--scheme", "rsa-pss-sha256"], b"m");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unsupported"));

    // public key: PEM plus the SPKI SHA-256 id, matching describe
    let public = v.ok(&["key", "public", "web"]);
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let id = public
        .lines()
        .last()
        .unwrap()
        .strip_prefix("spki-sha256: ")
        .unwrap()
        .to_owned();
    let described: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "describe", "web"])).unwrap();
    assert_eq!(described["versions"][0]["spki_sha256"], id.as_str());
    assert_eq!(described["state"], "enabled");

    // disable / enable
    v.ok(&["key", "disable", "web"]);
    let out = v.cli_stdin(
        &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
    v.ok(&["key", "enable", "web"]);

    // deletion: pending, refused, cancelled (comes back disabled), then for real
    assert!(v
        .err(&["key", "schedule-deletion", "web", "--wait", "0s"])
        .contains("shorter than the minimum"));
    v.ok(&["key", "schedule-deletion", "web", "--wait", "1h"]);
    let out = v.cli_stdin(
        &["key", "sign", "web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pending-deletion"));
    assert!(v
        .ok(&["key", "cancel-deletion", "web"])
        .contains("disabled"));
    v.ok(&["key", "schedule-deletion", "web", "--wait", "1s"]);
    common::wait_for("the key to be deleted", Duration::from_secs(10), || {
        (!v.ok(&["key", "list"]).contains("web ")).then_some(())
    });
    assert!(v.err(&["key", "describe", "web"]).contains("not-found"));
    // Records reach the file asynchronously (within 10 ms); `audit verify`
    // flushes the queue first, as in the other tests.
    v.ok(&["audit", "verify"]);
    assert!(v.audit_log().contains("\"op\":\"delete\",\"key\":\"web\""));
}

#[test]
fn envelope_encryption_survives_rotations_and_a_crash() {
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "data", "--type", "aes-256"]);
    let secret = (0..=255u8).cycle().take(10_000).collect::<Vec<u8>>(); // binary-safe
    let enc = v.cli_stdin(
        &["data", "encrypt", "--key", "data", "--context", "tenant=1"],
        &secret,
    );
    assert!(enc.status.success());
    let blob = enc.stdout;
    let gen = v.ok(&["data", "generate-key", "--key", "data"]);
    let gen: serde_json::Value = serde_json::from_str(&gen).unwrap();

    for _ in 0..3 {
        v.ok(&["key", "rotate", "data"]);
    }
    v.kill9();
    v.restart();
    let described: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "describe", "data"])).unwrap();
    assert_eq!(described["primary"], 4);

    let dec = v.cli_stdin(&["data", "decrypt", "--context", "tenant=1"], &blob);
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(dec.stdout, secret);
    // wrong context, tampered blob: refused
    let wrong = v.cli_stdin(&["data", "decrypt", "--context", "tenant=2"], &blob);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("invalid-ciphertext"));
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(!v
        .cli_stdin(&["data", "decrypt", "--context", "tenant=1"], &bad)
        .status
        .success());

    // the data key's wrapped copy opens to its plaintext
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrapped = b64.decode(gen["ciphertext"].as_str().unwrap()).unwrap();
    let plain = b64.decode(gen["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plain.len(), 32);
    assert_eq!(v.cli_stdin(&["data", "decrypt"], &wrapped).stdout, plain);

    // new encryptions use the new primary version
    rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.unwrap();
        let b = c.encrypt("data", b"x", b"").await.unwrap();
        let (_, version, _) = c.decrypt(&b, b"").await.unwrap();
        assert_eq!(version, 4);
        // signing keys cannot encrypt, aes keys cannot sign
        let e = c
            .sign("data", None, scheme::ED25519, b"m")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unsupported));
    });
}

#[test]
fn kill9_between_operations_loses_nothing_committed() {
    let mut v = VaultProc::start();
    let mut expected = Vec::new();
    for i in 0..6 {
        let name = format!("k{i}");
        let t = ["ecdsa-p256", "ed25519", "aes-256"][i % 3];
        v.ok(&["key", "create", &name, "--type", t]);
        if i % 2 == 0 {
            v.ok(&["key", "rotate", &name]);
        }
        expected.push((name, t, if i % 2 == 0 { 2 } else { 1 }));
        v.kill9();
        v.restart();
    }
    for (name, t, primary) in &expected {
        let d: serde_json::Value = serde_json::from_str(&v.ok(&["key", "describe", name])).unwrap();
        assert_eq!(
            (d["type"].as_str().unwrap(), d["primary"].as_u64().unwrap()),
            (*t, *primary as u64),
            "{name}"
        );
    }
    // nothing half-written is left in the keystore directory
    let stray: Vec<_> = std::fs::read_dir(v.state.join("keys"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".json") && n != "MANIFEST")
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(v.ok(&["audit", "verify"]).starts_with("ok "));
}

#[test]
fn tampering_with_keystore_and_audit_log_is_detected() {
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "good", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "victim", "--type", "ecdsa-p256"]);
    v.kill9();

    // flip one byte inside the victim's sealed material
    let path = v.state.join("keys/victim.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"sealed\": \"")
        .unwrap()
        + 15;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &bytes).unwrap();
    v.restart();

    let out = v.cli_stdin(
        &["key", "sign", "victim", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt-key") && err.contains("victim"),
        "{err}"
    );
    assert!(v.ok(&["key", "list"]).contains("corrupt"));
    // the rest is served
    let ok = v.cli_stdin(
        &["key", "sign", "good", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(ok.status.success());

    // audit: edit one record's key name
    assert!(v.ok(&["audit", "verify"]).starts_with("ok "));
    v.kill9();
    let log = v.audit_log();
    std::fs::write(
        v.state.join("audit.log"),
        log.replacen("\"key\":\"good\"", "\"key\":\"gooD\"", 1),
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(&v.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit record") && err.contains("MAC mismatch"),
        "{err}"
    );
}

#[test]
fn callers_are_refused_beyond_their_grants_and_refusals_are_audited() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test spawns clients as other uids and must run as root (CI does; locally: sudo -E scripts/test.sh)"
    );
    let me = nix::unistd::geteuid().as_raw();
    let config = format!(
        r#"[vault]
socket_mode = "0660"
socket_group = "65534"
[[vault.grant]]
principal = "uid:{me}"
keys = ["*"]
ops = ["admin"]
[[vault.grant]]
principal = "uid:65534"
keys = ["shared-*"]
ops = ["sign", "public-key"]
"#
    );
    let v = VaultProc::start_with(Opts {
        config: Some(config),
        metrics: true,
        ..Opts::default()
    });
    // admin may create but, without a use grant, not sign
    v.ok(&["key", "create", "shared-web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "private", "--type", "ecdsa-p256"]);
    let out = v.cli_stdin(
        &["key", "sign", "shared-web", "--scheme", "ecdsa-p256-sha256"],
        b"m",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"));

    let as_uid = |uid: u32, gid: u32, args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(args).uid(uid).gid(gid).current_dir("/");
        run_cli(&mut cmd, &v.socket, b"message")
    };
    // nobody (65534, in the socket's group) may sign with shared-*, nothing more
    let ok = as_uid(
        65534,
        65534,
        &["key", "sign", "shared-web", "--scheme", "ecdsa-p256-sha256"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for args in [
        &["key", "sign", "private", "--scheme", "ecdsa-p256-sha256"][..],
        &["key", "rotate", "shared-web"][..],
        &["key", "create", "shared-new", "--type", "ed25519"][..],
        &["key", "disable", "shared-web"][..],
        // no `list` grant at all: refused, not an empty table
        &["key", "list"][..],
    ] {
        let out = as_uid(65534, 65534, args);
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("denied"),
            "{args:?}"
        );
    }
    // a uid outside the socket's group cannot even connect
    let out = as_uid(65533, 65533, &["key", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("socket_group"),
        "{err}"
    );

    v.ok(&["audit", "verify"]);
    let log = v.audit_log();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"uid\":65534") && l.contains("\"result\":\"denied\""))
        .collect();
    assert_eq!(denied.len(), 5, "{log}");
    assert!(denied.iter().any(|l| l.contains("\"op\":\"rotate\"")));
    assert!(log.lines().any(|l| l.contains("\"uid\":65534")
        && l.contains("\"op\":\"sign\"")
        && l.contains("\"result\":\"ok\"")));
    // and counted: nobody's five, and the admin's sign
    let metrics = http_get(v.metrics.expect("metrics address"), "/metrics");
    let denied =
        |labels: &[&str]| common::proxy::metric(&metrics, "vaultgate_vault_denied_total", labels);
    assert_eq!(denied(&[]), 6.0, "{metrics}");
    assert_eq!(denied(&["op=\"list\""]), 1.0);
    assert_eq!(denied(&["op=\"sign\""]), 2.0);
    assert_eq!(denied(&["op=\"rotate\""]), 1.0);
    assert_eq!(
        common::proxy::metric(
            &metrics,
            "vaultgate_vault_requests_total",
            &["result=\"denied\""]
        ),
        6.0
    );
}

#[test]
fn bad_frames_close_the_connection_and_the_vault_lives() {
    let v = VaultProc::start();
    let junk: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",                         // wrong protocol
        &[1, 2, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff], // huge length
        &[1, 0x77, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0],          // unknown opcode
        &[1, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0x01, 0],    // truncated field
    ];
    for bytes in junk {
        let mut s = UnixStream::connect(&v.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        // the vault answers with an error frame (where it can) and closes
        s.read_to_end(&mut answer)
            .expect("vault closed the connection");
        if !answer.is_empty() {
            assert_eq!(answer[1], 0xff, "error frame expected");
        }
    }
    // a client that stops mid-frame
    let mut s = UnixStream::connect(&v.socket).unwrap();
    s.write_all(&[1, 1, 0, 0]).unwrap();
    drop(s);

    // everyone else is still served
    rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.unwrap();
        assert_eq!(c.ping(b"still here").await.unwrap(), b"still here");
    });
    v.ok(&["audit", "verify"]);
    let bad = v
        .audit_log()
        .lines()
        .filter(|l| l.contains("\"op\":\"bad-frame\""))
        .count();
    assert_eq!(bad, 5, "{}", v.audit_log());
}

#[test]
fn many_signatures_in_flight_on_one_connection() {
    let v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "rsa", "--type", "rsa-2048"]);
    rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.unwrap();
        let (_, _, spki) = c.public_key("web", None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..256u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let (key, s) = if i % 8 == 0 {
                    ("rsa", scheme::RSA_PSS_SHA256)
                } else {
                    ("web", scheme::ECDSA_P256_SHA256)
                };
                let msg = i.to_be_bytes();
                let (version, sig) = c.sign(key, None, s, &msg).await.unwrap();
                (i, key, version, sig)
            }));
        }
        for t in tasks {
            let (i, key, version, sig) = t.await.unwrap();
            assert_eq!(version, 1);
            if key == "web" {
                // each answer belongs to its own request: verify independently
                let pk = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_ASN1,
                    &spki[26..],
                );
                pk.verify(&i.to_be_bytes(), &sig)
                    .expect("signature matches its request");
            }
        }
        let e = c
            .call(&Request::Describe { key: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
        let (t, _, _) = c.public_key("rsa", None).await.unwrap();
        assert_eq!(t, KeyType::Rsa2048);
    });
    let metrics = http_get(v.metrics.expect("metrics address"), "/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("vaultgate_vault_requests_total{")
                && l.contains("op=\"sign\"")
                && l.contains("result=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no sign counter in:\n{metrics}"));
    assert!(line.ends_with(" 256"), "{line}");
    assert!(metrics.contains("vaultgate_vault_request_duration_seconds_bucket"));
}

#[test]
fn backup_restores_into_an_empty_vault() {
    let a = VaultProc::start();
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    a.ok(&["key", "rotate", "web"]);
    a.ok(&["key", "create", "data", "--type", "aes-256"]);
    let blob = a
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"kept")
        .stdout;
    let file = a.dir.path().join("backup.json");
    let file_s = file.to_str().unwrap();
    let export = a.cli_stdin(
        &["backup", "export", "--out", file_s],
        b"long backup passphrase\n",
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("PRIVATE"), "backup must hold no clear key");

    let b = VaultProc::start();
    let wrong = b.cli_stdin(
        &["backup", "import", "--in", file_s],
        b"wrong passphrase!\n",
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    let restore = b.cli_stdin(
        &["backup", "import", "--in", file_s],
        b"long backup passphrase\n",
    );
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(
        a.ok(&["key", "public", "web", "--version", "1"]),
        b.ok(&["key", "public", "web", "--version", "1"])
    );
    assert_eq!(
        a.ok(&["key", "public", "web"]),
        b.ok(&["key", "public", "web"])
    );
    assert_eq!(b.cli_stdin(&["data", "decrypt"], &blob).stdout, b"kept");
    // restoring over existing keys is refused
    let again = b.cli_stdin(
        &["backup", "import", "--in", file_s],
        b"long backup passphrase\n",
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already-exists"));
}

#[test]
fn passphrase_master_key_and_socket_ownership() {
    let env = vec![("VG_TEST_PW".to_owned(), "correct horse battery".to_owned())];
    let mut v = VaultProc::start_with(Opts {
        env: env.clone(),
        args: vec!["--master-key".into(), "passphrase-env:VG_TEST_PW".into()],
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ed25519"]);
    let before = v.ok(&["key", "public", "web"]);

    // a second vault on a live socket refuses to start
    let err = v
        .try_start_again()
        .expect_err("second vault must not start");
    assert!(err.contains("another process is listening"), "{err}");

    // after a crash the stale socket is replaced; the same passphrase opens the keystore
    v.restart();
    assert_eq!(v.ok(&["key", "public", "web"]), before);

    // a wrong passphrase is refused at start, with a clear message
    v.kill9();
    let out = Command::new(common::bin())
        .args([
            "vault",
            "--master-key",
            "passphrase-env:VG_TEST_PW",
            "--socket",
        ])
        .arg(&v.socket)
        .arg("--state-dir")
        .arg(&v.state)
        .env("VG_TEST_PW", "battery staple")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match this keystore"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(v.state.join("keys/web.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn rotation_keeps_the_old_version_signing_for_the_grace_period_and_pushes_events() {
    let v = VaultProc::start_with(Opts {
        config: Some("[vault]\nsign_grace = \"2s\"\n".into()),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.unwrap();
        let mut events = c.subscribe().await.unwrap();

        v.ok(&["key", "rotate", "web"]);
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((e.key.as_str(), e.primary), ("web", 2));
        let described: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert!(described["versions"][0]["retire_at"].is_u64());

        // within the grace period both versions sign; the primary by default
        let (v1, _) = c
            .sign("web", Some(1), scheme::ECDSA_P256_SHA256, b"m")
            .await
            .unwrap();
        let (v2, _) = c
            .sign("web", None, scheme::ECDSA_P256_SHA256, b"m")
            .await
            .unwrap();
        assert_eq!((v1, v2), (1, 2));
        // after it, version 1 is retired for signing but still verifies
        let (_, old_sig) = c
            .sign("web", Some(1), scheme::ECDSA_P256_SHA256, b"x")
            .await
            .unwrap();
        let retired = common::wait_for("version 1 to retire", Duration::from_secs(10), || {
            let out = v.cli_stdin(
                &[
                    "key",
                    "sign",
                    "web",
                    "--version",
                    "1",
                    "--scheme",
                    "ecdsa-p256-sha256",
                ],
                b"m",
            );
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            (!out.status.success()).then_some(err)
        });
        assert!(retired.contains("version-retired"), "{retired}");
        assert!(c
            .verify("web", Some(1), scheme::ECDSA_P256_SHA256, b"x", &old_sig)
            .await
            .unwrap());

        // state changes are pushed too
        v.ok(&["key", "disable", "web"]);
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        let described: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(described["state"], "disabled");
    });
}

#[test]
fn certificates_bind_to_the_key_version_they_match() {
    let v = VaultProc::start();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = v.dir.path().join("k.pem");
    std::fs::write(&pem, kp.serialize_pem()).unwrap();
    v.ok(&["key", "import", "web", "--pem", pem.to_str().unwrap()]);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let chain = v.dir.path().join("chain.pem");
    std::fs::write(&chain, cert.pem()).unwrap();
    let chain = chain.to_str().unwrap();

    assert!(v
        .err(&["cert", "show", "web"])
        .contains("no certificate is bound"));
    assert!(v
        .ok(&["cert", "install", "web", "--chain", chain])
        .contains("version 1"));
    assert_eq!(v.ok(&["cert", "show", "web"]), cert.pem());

    // after a rotation the new version has a new key: the old cert does not fit it
    v.ok(&["key", "rotate", "web"]);
    let err = v.err(&["cert", "install", "web", "--chain", chain]);
    assert!(err.contains("is not key \"web\" version 2"), "{err}");
    assert_eq!(v.ok(&["cert", "show", "web", "--version", "1"]), cert.pem());
    std::fs::write(v.dir.path().join("chain.pem"), "junk").unwrap();
    assert!(v
        .err(&["cert", "install", "web", "--chain", chain, "--version", "1"])
        .contains("no certificate in the chain"));
}

#[test]
fn keys_rotate_on_their_schedule() {
    let v = VaultProc::start();
    v.ok(&[
        "key",
        "create",
        "data",
        "--type",
        "aes-256",
        "--rotate-every",
        "1s",
    ]);
    let blob = v
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"before")
        .stdout;
    common::wait_for("a scheduled rotation", Duration::from_secs(15), || {
        let d: serde_json::Value =
            serde_json::from_str(&v.ok(&["key", "describe", "data"])).ok()?;
        (d["primary"].as_u64()? >= 2).then_some(())
    });
    assert_eq!(v.cli_stdin(&["data", "decrypt"], &blob).stdout, b"before");
    v.ok(&["audit", "verify"]);
    assert!(v.audit_log().lines().any(|l| l
        .contains("\"op\":\"scheduled-rotate\",\"key\":\"data\"")
        && l.contains("\"result\":\"ok\"")));
}

#[test]
fn a_ca_key_in_the_vault_issues_and_reissues_across_rotations() {
    let v = VaultProc::start();
    v.ok(&["key", "create", "ca", "--type", "ecdsa-p384"]);
    v.ok(&["cert", "issue", "ca", "--is-ca", "--common-name", "test CA"]);
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    assert!(v
        .err(&["cert", "issue", "web", "--ca", "ca"])
        .contains("needs at least one name"));
    v.ok(&[
        "cert",
        "issue",
        "web",
        "--ca",
        "ca",
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--days",
        "30",
    ]);

    let ca_pem = v.ok(&["cert", "show", "ca"]);
    use rustls::client::danger::ServerCertVerifier;
    let verify = |chain_pem: &str| {
        // the leaf verifies against the CA for its names, as a TLS client would
        let certs: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let ca = rustls_pemfile::certs(&mut ca_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf verifies against the vault CA");
        certs[0].clone()
    };
    let first = verify(&v.ok(&["cert", "show", "web"]));

    // rotate, reissue without naming anything: same names, new key
    v.ok(&["key", "rotate", "web"]);
    v.ok(&["cert", "issue", "web", "--ca", "ca"]);
    let second = verify(&v.ok(&["cert", "show", "web"]));
    assert_ne!(first, second);
    let d: serde_json::Value = serde_json::from_str(&v.ok(&["key", "describe", "web"])).unwrap();
    assert_eq!(d["versions"][1]["certificate"], true);

    // a CSR for an external CA, signed by the vault key
    let csr = v.ok(&["cert", "csr", "web", "--name", "www.example.test"]);
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
}

#[test]
fn sighup_reloads_grants_and_an_invalid_config_changes_nothing() {
    let me = nix::unistd::geteuid().as_raw();
    let grants = |ops: &str| {
        format!(
            "[vault]\n[[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"*\"]\nops = [{ops}]\n"
        )
    };
    let v = VaultProc::start_with(Opts {
        config: Some(grants("\"use\"")),
        ..Opts::default()
    });
    let config = v.config.clone().unwrap();
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(v.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    let reloads = |v: &VaultProc| v.audit_log().matches("\"op\":\"config-reload\"").count();

    assert!(v
        .err(&["key", "create", "a", "--type", "ed25519"])
        .contains("denied"));
    std::fs::write(&config, grants("\"use\", \"admin\"")).unwrap();
    hup();
    common::wait_for("the reload to be audited", Duration::from_secs(10), || {
        // flushes the log; denied (but still flushing) until the reload lands
        let _ = v.cli(&["audit", "verify"]);
        (reloads(&v) == 1).then_some(())
    });
    v.ok(&["key", "create", "a", "--type", "ed25519"]);

    // an invalid config: logged with its location, the running grants stay
    std::fs::write(
        &config,
        "[vault]\n[[vault.grant]]\nprincipal = \"uid:x\"\nkeys = [\"*\"]\nops = [\"all\"]\n",
    )
    .unwrap();
    hup();
    common::wait_for(
        "the failed reload to be audited",
        Duration::from_secs(10),
        || {
            v.ok(&["audit", "verify"]);
            (reloads(&v) == 2).then_some(())
        },
    );
    let log = v.audit_log();
    let failed = log
        .lines()
        .rev()
        .find(|l| l.contains("config-reload"))
        .unwrap();
    assert!(
        failed.contains("\"result\":\"error\"") && failed.contains("vault.toml:3:13"),
        "{failed}"
    );
    v.ok(&["key", "create", "b", "--type", "ed25519"]);
}

#[test]
fn vaultgate_reload_reaches_the_vault_through_its_pid_file_and_hears_its_verdict() {
    let me = nix::unistd::geteuid().as_raw();
    let grants = |ops: &str| {
        format!(
            "[vault]\npid_file = \"{{dir}}/vault.pid\"\n[[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"*\"]\nops = [{ops}]\n"
        )
    };
    let v = VaultProc::start_with(Opts {
        config: Some(grants("\"use\"")),
        ..Opts::default()
    });
    let config = v.config.clone().unwrap();
    let dir = config.parent().unwrap().display().to_string();
    let pid = std::fs::read_to_string(config.with_file_name("vault.pid")).unwrap();
    assert_eq!(pid.trim(), v.child.id().to_string());
    assert!(v
        .err(&["key", "create", "a", "--type", "ed25519"])
        .contains("denied"));
    std::fs::write(&config, grants("\"use\", \"admin\"").replace("{dir}", &dir)).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["reload", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("vault (pid {}) reloaded its config", v.child.id())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The verdict came after the reload: the new grants are in force.
    v.ok(&["key", "create", "a", "--type", "ed25519"]);
}

#[test]
fn a_caller_that_never_reads_is_cut_off_and_others_are_served() {
    let v = VaultProc::start_with(Opts {
        config: Some("[vault]\nclient_write_timeout = \"1s\"\n".into()),
        metrics: true,
        ..Opts::default()
    });
    // Thousands of pings with 4 KiB payloads, answers never read: far more
    // than the socket buffers hold, so the vault's writes block.
    let mut flood = UnixStream::connect(&v.socket).unwrap();
    let mut one = bytes::BytesMut::new();
    let mut wire = Vec::new();
    for id in 0..4000u32 {
        one.clear();
        Request::Ping {
            payload: vec![7; 4096],
        }
        .to_frame(id)
        .encode(&mut one)
        .unwrap();
        wire.extend_from_slice(&one);
    }
    let writer = {
        let mut s = flood.try_clone().unwrap();
        std::thread::spawn(move || {
            // ends with an error once the vault hangs up
            let _ = s.write_all(&wire);
        })
    };
    // meanwhile everyone else is served
    rt().block_on(async {
        let c = VaultClient::connect(&v.socket).await.unwrap();
        for _ in 0..10 {
            assert_eq!(c.ping(b"x").await.unwrap(), b"x");
        }
    });
    common::wait_for(
        "the flooding caller to be disconnected",
        Duration::from_secs(20),
        || {
            v.ok(&["audit", "verify"]);
            v.audit_log()
                .contains("did not read its answers")
                .then_some(())
        },
    );
    let _ = writer.join();
    // the vault hung up: reading drains what was sent, then ends
    flood
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = flood.read_to_end(&mut sink);
    assert!(
        sink.len() < 4000 * (4096 + 17),
        "the vault kept answering a caller that never read"
    );
    let metrics = http_get(v.metrics.expect("metrics address"), "/metrics");
    assert_eq!(
        common::proxy::metric(
            &metrics,
            "vaultgate_vault_disconnects_total",
            &["reason=\"not-reading\""]
        ),
        1.0,
        "{metrics}"
    );
}
