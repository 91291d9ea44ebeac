//! `vaultgate check`: shipped configs parse; errors are located; a
//! certificate whose key does not match is refused.

use std::process::Command;

use crate::common::bin;
use crate::common::proxy::config;
use crate::Setup;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every file in `config/` parses and each section it has validates (the
/// certificate files they name live on a deployed machine, not here).
#[test]
fn every_shipped_config_parses_and_validates() {
    use vaultgate::config::{self, proxy::ProxySettings, run::RunSettings, vault::VaultSettings};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let loaded = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        VaultSettings::from_loaded(&loaded).unwrap_or_else(|e| panic!("{e}"));
        RunSettings::from_loaded(&loaded).unwrap_or_else(|e| panic!("{e}"));
        if loaded.file.proxy.is_some() {
            ProxySettings::from_loaded(&loaded).unwrap_or_else(|e| panic!("{e}"));
        }
        n += 1;
    }
    assert!(n >= 4, "expected the four shipped configs, found {n}");
    // The embedded default passes `check` as shipped: `run` issues its
    // certificate, so a missing one is a note, not an error.
    let (ok, text) = check(&dir.join("vaultgate.toml"));
    assert!(ok, "{text}");
}

#[test]
fn errors_name_file_line_and_column_and_exit_nonzero() {
    let dir = tempfile::tempdir().expect("temp");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[proxy]\nlisten = \"127.0.0.1:0\"\nsign_timeout = \"soon\"\n",
    )
    .expect("write");
    let (ok, text) = check(&p);
    assert!(!ok);
    assert!(
        text.contains(&format!("{}:3:16: invalid duration", p.display())),
        "{text}"
    );

    std::fs::write(&p, "[proxy\n").expect("write");
    let (ok, text) = check(&p);
    assert!(
        !ok && text.contains(&format!("{}:1:", p.display())),
        "{text}"
    );

    let (ok, text) = check(&dir.path().join("missing.toml"));
    assert!(!ok && text.contains("missing.toml: cannot read"), "{text}");

    // A certificate file that does not exist is an error at its line.
    let cfg = config(
        std::path::Path::new("/nonexistent.sock"),
        &[(
            &["a.test"],
            &dir.path().join("nope.pem"),
            "file:/nonexistent.key",
        )],
        &["127.0.0.1:1".parse().expect("addr")],
        "",
        "",
    );
    std::fs::write(&p, cfg).expect("write");
    let (ok, text) = check(&p);
    assert!(
        !ok && text.contains("bad.toml:10:8: certificate:") && text.contains("nope.pem"),
        "{text}"
    );
}

#[test]
fn refuses_certificates_whose_key_does_not_match() {
    let s = Setup::start();
    let good = s.vault_cert("tls-a", "ecdsa-p256", &["a.test"]);
    let other = s.vault_cert("tls-b", "ecdsa-p256", &["b.test"]);
    let (fcert, fkey) = (s.path("f.pem"), s.path("f.key"));
    s.ca.file_cert(&rcgen::PKCS_ECDSA_P256_SHA256, &["f.test"], &fcert, &fkey);
    let backends = ["127.0.0.1:1".parse().expect("addr")];
    let p = s.path("c.toml");

    let cfg = config(
        &s.vault.socket,
        &[
            (&["a.test"], &good, "vault:tls-a"),
            (&["f.test"], &fcert, &format!("file:{}", fkey.display())),
        ],
        &backends,
        "",
        "",
    );
    std::fs::write(&p, cfg).expect("write");
    let (ok, text) = check(&p);
    assert!(ok, "{text}");

    // vault:tls-a with tls-b's certificate: the vault's public key differs.
    let cfg = config(
        &s.vault.socket,
        &[(&["a.test"], &other, "vault:tls-a")],
        &backends,
        "",
        "",
    );
    std::fs::write(&p, cfg).expect("write");
    let (ok, text) = check(&p);
    assert!(
        !ok && text.contains("c.toml:11:7: vault key \"tls-a\"")
            && text.contains("no version whose public key matches"),
        "{text}"
    );

    // file: key with a vault key's certificate.
    let cfg = config(
        &s.vault.socket,
        &[(&["a.test"], &good, &format!("file:{}", fkey.display()))],
        &backends,
        "",
        "",
    );
    std::fs::write(&p, cfg).expect("write");
    let (ok, text) = check(&p);
    assert!(
        !ok && text.contains("does not match the public key of certificate"),
        "{text}"
    );
}

#[test]
fn check_reads_what_the_proxy_reads_as_the_user_it_runs_as() {
    crate::common::require_root("check re-runs itself as the proxy's user");
    crate::common::require_user("vaultgate-proxy");
    let s = Setup::start();
    let (fcert, fkey) = (s.path("f.pem"), s.path("f.key"));
    s.ca.file_cert(&rcgen::PKCS_ECDSA_P256_SHA256, &["f.test"], &fcert, &fkey);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&fkey, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let p = s.path("c.toml");
    let cfg = config(
        &s.vault.socket,
        &[(&["f.test"], &fcert, &format!("file:{}", fkey.display()))],
        &["127.0.0.1:1".parse().expect("addr")],
        "user = \"vaultgate-proxy\"",
        "",
    );
    std::fs::write(&p, cfg).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // Root could read the key; the proxy, as its user, could not: refused.
    let (ok, text) = check(&p);
    assert!(
        !ok && text.contains("checking as vaultgate-proxy")
            && text.contains(&fkey.display().to_string())
            && text.contains("Permission denied"),
        "{text}"
    );
    std::fs::set_permissions(&fkey, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, text) = check(&p);
    assert!(ok, "{text}");
}
