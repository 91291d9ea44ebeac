//! Backups as someone who gets hold of the file edits them: entries
//! dropped, reordered, duplicated, flipped, and (with the passphrase)
//! entries sealed again with crafted content. Each import is refused with
//! its reason and leaves the target vault as it was; a clash imports
//! nothing; a good backup restores keys that sign and decrypt as before.

use std::process::Output;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use vaultgate::internals::{reseal, unseal};

use crate::common::vault::VaultProc;

const PASS: &[u8] = b"long backup passphrase";

fn with_newline(p: &[u8]) -> Vec<u8> {
    [p, b"\n"].concat()
}

/// A vault holding `data` (aes-256), `sig` (ed25519) and `web` (ecdsa,
/// two versions), and its backup: entries in name order, so `web` is
/// the third.
fn exported() -> (VaultProc, Vec<u8>) {
    let a = VaultProc::start();
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    a.ok(&["key", "rotate", "web"]);
    a.ok(&["key", "create", "data", "--type", "aes-256"]);
    a.ok(&["key", "create", "sig", "--type", "ed25519"]);
    let file = a.dir.path().join("backup.json");
    let out = a.cli_stdin(
        &[
            "backup",
            "export",
            "--out",
            file.to_str().expect("utf-8 path"),
        ],
        &with_newline(PASS),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported 3 keys"));
    let bytes = std::fs::read(&file).expect("the backup");
    (a, bytes)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn import(v: &VaultProc, bytes: &[u8], extra: &[&str]) -> Output {
    let file = v.dir.path().join("restore.json");
    std::fs::write(&file, bytes).expect("write the backup");
    let mut args = vec![
        "backup",
        "import",
        "--in",
        file.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    v.cli_stdin(&args, &with_newline(PASS))
}

/// Every key of `v` as the vault describes it: names, versions, states.
fn keys_of(v: &VaultProc) -> String {
    v.ok(&["key", "list", "--json"])
}

/// Imports `bytes` into `v`, expects a refusal saying `reason`, and
/// checks that `v`'s keys are exactly what they were.
fn refused(v: &VaultProc, what: &str, bytes: &[u8], reason: &str) {
    let before = keys_of(v);
    let out = import(v, bytes, &[]);
    assert!(!out.status.success(), "{what}: imported");
    let err = stderr(&out);
    assert!(
        err.contains(reason),
        "{what}: {err:?} does not say {reason:?}"
    );
    assert_eq!(keys_of(v), before, "{what}: the vault changed");
}

/// The backup with its JSON edited, as anyone holding the file can.
fn edited(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut file: Value = serde_json::from_slice(bytes).expect("backup JSON");
    f(&mut file);
    serde_json::to_vec(&file).expect("JSON")
}

fn entries(file: &mut Value) -> &mut Vec<Value> {
    file["keys"].as_array_mut().expect("keys array")
}

/// The backup with entry `at`'s content edited and everything sealed
/// again under the passphrase: what its holder could craft.
fn crafted(bytes: &[u8], at: usize, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut u = unseal(bytes, PASS).expect("the backup opens");
    let mut entry: Value = serde_json::from_slice(&u.entries[at]).expect("entry JSON");
    f(&mut entry);
    u.entries[at] = zeroize::Zeroizing::new(serde_json::to_vec(&entry).expect("JSON"));
    reseal(&u, PASS).expect("reseal")
}

#[test]
fn an_edited_backup_file_is_refused_naming_the_edit_and_the_vault_is_unchanged() {
    let (_a, good) = exported();
    let b = VaultProc::start();
    b.ok(&["key", "create", "other", "--type", "ed25519"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an entry dropped",
            edited(&good, |f| {
                entries(f).remove(1);
            }),
            "the header says 3 keys but the file holds 2",
        ),
        (
            "an entry dropped and the count edited to match",
            edited(&good, |f| {
                entries(f).remove(1);
                f["count"] = 2.into();
            }),
            "no entry authenticates under the header",
        ),
        (
            "two entries swapped",
            edited(&good, |f| entries(f).swap(0, 1)),
            "entry 0 is the backup's entry 1: entries were reordered",
        ),
        (
            "an entry copied over another",
            edited(&good, |f| {
                let first = entries(f)[0].clone();
                entries(f)[2] = first;
            }),
            "entry 2 is the backup's entry 0",
        ),
        (
            "an entry duplicated at the end",
            edited(&good, |f| {
                let first = entries(f)[0].clone();
                entries(f).push(first);
            }),
            "the header says 3 keys but the file holds 4",
        ),
        (
            "a byte of the third entry flipped",
            edited(&good, |f| {
                let e = &mut entries(f)[2];
                let mut raw = B64.decode(e.as_str().expect("entry")).expect("base64");
                let mid = raw.len() / 2;
                raw[mid] ^= 0x01;
                *e = B64.encode(raw).into();
            }),
            "entry 2 does not authenticate",
        ),
        (
            "the creation time edited",
            edited(&good, |f| {
                f["created"] = (f["created"].as_u64().expect("created") - 1).into();
            }),
            "no entry authenticates under the header",
        ),
        (
            "the tag edited",
            edited(&good, |f| f["tag"] = B64.encode([0u8; 32]).into()),
            "the backup's tag does not match its content",
        ),
        (
            "an old per-entry backup",
            br#"{"format":1,"salt":"AAAAAAAAAAAAAAAAAAAAAA==","keys":[]}"#.to_vec(),
            "backup format 1",
        ),
        (
            "an unknown format",
            edited(&good, |f| f["format"] = 3.into()),
            "unknown backup format 3",
        ),
    ];
    for (what, bytes, reason) in &cases {
        refused(&b, what, bytes, reason);
    }
    // the wrong passphrase is told apart from an edit
    let before = keys_of(&b);
    let file = b.dir.path().join("good.json");
    std::fs::write(&file, &good).expect("write");
    let out = b.cli_stdin(
        &["backup", "import", "--in", file.to_str().expect("utf-8")],
        b"not the passphrase\n",
    );
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    assert_eq!(keys_of(&b), before);
    // and the file itself was good all along
    let out = import(&b, &good, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn crafted_entries_are_refused_field_by_field_and_nothing_is_imported() {
    let (_a, good) = exported();
    let b = VaultProc::start();
    let web = 2; // the third entry
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "version 4294967295",
            crafted(&good, web, |e| {
                e["versions"][1]["version"] = u32::MAX.into();
                e["primary"] = u32::MAX.into();
            }),
            "entry 2 (key \"web\"): version 4294967295: versions are 1 to 1000000",
        ),
        (
            "a version twice",
            crafted(&good, web, |e| e["versions"][1]["version"] = 1.into()),
            "version 1 follows version 1: versions must increase",
        ),
        (
            "versions out of order",
            crafted(&good, web, |e| {
                e["versions"].as_array_mut().expect("versions").swap(0, 1)
            }),
            "version 1 follows version 2",
        ),
        (
            "no versions",
            crafted(&good, web, |e| e["versions"] = Value::Array(Vec::new())),
            "no versions",
        ),
        (
            "a primary not among the versions",
            crafted(&good, web, |e| e["primary"] = 7.into()),
            "primary version 7 is not among its versions",
        ),
        (
            "a name create refuses",
            crafted(&good, web, |e| e["name"] = "../web".into()),
            "invalid key name \"../web\"",
        ),
        (
            "two entries of one name",
            crafted(&good, 1, |e| e["name"] = "data".into()),
            "entries 0 and 1 are both key \"data\"",
        ),
        (
            "a key id that is not one",
            crafted(&good, web, |e| e["id"] = "x".into()),
            "invalid key id \"x\"",
        ),
        (
            "an unknown type",
            crafted(&good, web, |e| e["type"] = "rsa-1024".into()),
            "entry 2: does not parse",
        ),
        (
            "material of another type",
            crafted(&good, web, |e| e["type"] = "ed25519".into()),
            "version 1: stored key material for ed25519 does not parse",
        ),
        (
            "a short AES key",
            crafted(&good, 0, |e| {
                e["versions"][0]["secret"] = B64.encode([7u8; 16]).into()
            }),
            "entry 0 (key \"data\"): version 1: stored key material for aes-256",
        ),
        (
            "a key made after its backup",
            crafted(&good, web, |e| e["created"] = (u64::MAX / 2).into()),
            "created 9223372036854775807 is after the backup was made",
        ),
        (
            "a retirement past the year 9999",
            crafted(&good, web, |e| {
                e["versions"][0]["retire_at"] = u64::MAX.into()
            }),
            "version 1 retire_at 18446744073709551615 is past the year 9999",
        ),
        (
            "rotation every 0 seconds",
            crafted(&good, web, |e| e["rotate_every"] = 0.into()),
            "rotate_every 0s",
        ),
        (
            "pending deletion without a time",
            crafted(&good, web, |e| e["state"] = "pending-deletion".into()),
            "a deletion time goes with pending-deletion",
        ),
        (
            "a certificate of another key",
            crafted(&good, web, |e| {
                let other = rcgen::KeyPair::generate().expect("key");
                let cert = rcgen::CertificateParams::new(vec!["web.test".into()])
                    .expect("params")
                    .self_signed(&other)
                    .expect("cert");
                e["versions"][1]["cert_chain"] = cert.pem().into();
            }),
            "version 2: certificate: the certificate's public key",
        ),
    ];
    for (what, bytes, reason) in &cases {
        refused(&b, what, bytes, reason);
    }
    // The first two entries were good: none of them is in the vault.
    assert_eq!(keys_of(&b).trim(), "[]", "a refused import left keys");
    assert!(b.err(&["key", "describe", "data"]).contains("no key named"));
}

#[test]
fn an_import_that_clashes_imports_nothing_unless_told_to_skip() {
    let (a, good) = exported();
    let b = VaultProc::start();
    b.ok(&["key", "create", "sig", "--type", "ed25519"]);
    let own = b.ok(&["key", "public", "sig"]);
    refused(
        &b,
        "a name that exists",
        &good,
        "keys [\"sig\"] already exist; nothing was imported",
    );
    assert!(b.err(&["key", "describe", "web"]).contains("no key named"));

    let out = import(&b, &good, &["--skip-existing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("skipped sig (exists)"), "{said}");
    assert!(said.contains("restored 2 keys"), "{said}");
    assert_eq!(
        b.ok(&["key", "public", "sig"]),
        own,
        "a skipped key changed"
    );
    assert_eq!(
        b.ok(&["key", "public", "web"]),
        a.ok(&["key", "public", "web"])
    );
}

#[test]
fn a_restored_backup_signs_and_decrypts_as_the_original_and_each_key_is_audited() {
    let (a, good) = exported();
    let sealed = a
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"kept")
        .stdout;
    let b = VaultProc::start();
    let out = import(&b, &good, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        b.ok(&["key", "describe", "web"]),
        a.ok(&["key", "describe", "web"]),
        "the restored key differs"
    );
    // signatures made by the restored versions verify with the original keys
    for (key, scheme, version) in [
        ("web", "ecdsa-p256-sha256", "1"),
        ("web", "ecdsa-p256-sha256", "2"),
        ("sig", "ed25519", "1"),
    ] {
        let signed = b.cli_stdin(
            &["key", "sign", key, "--scheme", scheme, "--version", version],
            b"restored",
        );
        assert!(signed.status.success(), "{}", stderr(&signed));
        let sig = a.dir.path().join("sig.bin");
        std::fs::write(&sig, &signed.stdout).expect("write");
        let verified = a.cli_stdin(
            &[
                "key",
                "verify",
                key,
                "--scheme",
                scheme,
                "--version",
                version,
                "--signature",
                sig.to_str().expect("utf-8"),
            ],
            b"restored",
        );
        assert!(
            verified.status.success(),
            "{key} v{version}: {}",
            stderr(&verified)
        );
    }
    assert_eq!(b.cli_stdin(&["data", "decrypt"], &sealed).stdout, b"kept");
    b.ok(&["audit", "verify"]);
    let log = b.audit_log();
    for key in ["data", "sig", "web"] {
        assert!(
            log.lines().any(|l| l.contains("\"op\":\"backup-import\"")
                && l.contains(&format!("\"key\":\"{key}\""))
                && l.contains("\"result\":\"ok\"")),
            "no import record for {key}:\n{log}"
        );
    }
}

#[test]
fn a_key_restored_at_the_last_version_refuses_to_rotate() {
    let (_a, good) = exported();
    // web with one version, numbered the highest a key may have
    let top = crafted(&good, 2, |e| {
        let versions = e["versions"].as_array_mut().expect("versions");
        versions.remove(0);
        versions[0]["version"] = 1_000_000.into();
        e["primary"] = 1_000_000.into();
    });
    let b = VaultProc::start();
    let out = import(&b, &top, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = b.ok(&["key", "describe", "web"]);
    let err = b.err(&["key", "rotate", "web"]);
    assert!(
        err.contains("key \"web\" is at version 1000000; a key has at most 1000000 versions"),
        "{err}"
    );
    assert_eq!(b.ok(&["key", "describe", "web"]), before);
}
