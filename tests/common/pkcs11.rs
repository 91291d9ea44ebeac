//! Support for the PKCS#11 module's tests: the built module, a vault whose
//! grants cover a web server's root master and its www-data workers, the
//! OpenSSL engine and provider configs, the vault's audit records and who
//! holds connections to its socket.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::require_tool;
use super::vault::{Opts, VaultProc};

/// `target/release/libvaultgate_pkcs11.so`, beside the `vaultgate` binary
/// these tests run. `cargo test` does not build a cdylib, so the test
/// command builds first (`scripts/test.sh`); a module older than its
/// sources fails the test rather than test old code.
pub fn module() -> PathBuf {
    let bin = Path::new(super::bin());
    let so = bin.with_file_name("libvaultgate_pkcs11.so");
    let built = std::fs::metadata(&so)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --release` first (scripts/test.sh does)",
                so.display()
            )
        });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("pkcs11");
    let newest = newest_mtime(&src.join("src")).max(newest_mtime(&src.join("Cargo.toml")));
    assert!(
        built >= newest,
        "{} is older than its sources: run `cargo build --release` first (scripts/test.sh does)",
        so.display()
    );
    so
}

fn newest_mtime(p: &Path) -> std::time::SystemTime {
    let Ok(meta) = std::fs::metadata(p) else {
        return std::time::UNIX_EPOCH;
    };
    if !meta.is_dir() {
        return meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    }
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| newest_mtime(&e.path()))
        .max()
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// A temp dir a web server's workers (www-data) can read.
pub fn server_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    dir
}

/// The vault's socket is in www-data's group, so web server workers (and
/// a test's other uids, given that group) can connect; root administers
/// and loads keys (nginx's and Apache's masters), `grants` follow.
pub fn vault(grants: &[(&str, &str, &str)]) -> VaultProc {
    let (_, www_gid) = super::require_user("www-data");
    let mut config = format!("[vault]\nsocket_group = \"{www_gid}\"\nmin_deletion_wait = \"1s\"\n");
    for (principal, keys, ops) in [("uid:0", r#""*""#, r#""all""#)].iter().chain(grants) {
        config += &format!(
            "[[vault.grant]]\nprincipal = \"{principal}\"\nkeys = [{keys}]\nops = [{ops}]\n"
        );
    }
    VaultProc::start_with(Opts {
        config: Some(config),
        ..Opts::default()
    })
}

/// A vault with an ECDSA P-256 key `web` and an RSA-2048 key `rsa`, each
/// with a self-signed certificate for localhost bound in the vault, that
/// www-data may use.
pub fn web_vault() -> VaultProc {
    let v = vault(&[("user:www-data", r#""web", "rsa""#, r#""use""#)]);
    for (name, t) in [("web", "ecdsa-p256"), ("rsa", "rsa-2048")] {
        v.ok(&["key", "create", name, "--type", t]);
        v.ok(&["cert", "issue", name, "--name", "localhost"]);
    }
    v
}

/// The key's public key PEM, as `vaultgate key public` prints it.
pub fn public_pem(v: &VaultProc, key: &str) -> String {
    pem_block(&v.ok(&["key", "public", key]))
}

/// The bound certificate chain, written to `dir/NAME.crt`.
pub fn cert_file(v: &VaultProc, key: &str, dir: &Path) -> PathBuf {
    let p = dir.join(format!("{key}.crt"));
    std::fs::write(&p, v.ok(&["cert", "show", key])).expect("write cert");
    p
}

/// The first PEM block of `text`.
pub fn pem_block(text: &str) -> String {
    let start = text.find("-----BEGIN").expect("a PEM block");
    let end_marker = text[start..].find("-----END").expect("PEM end") + start;
    let end = text[end_marker..]
        .find('\n')
        .map_or(text.len(), |n| end_marker + n + 1);
    text[start..end].to_owned()
}

/// The key id the module shows as CKA_ID (the vault's key id, hex).
pub fn key_id(v: &VaultProc, key: &str) -> String {
    let d: serde_json::Value =
        serde_json::from_str(&v.ok(&["key", "describe", key])).expect("describe json");
    d["id"].as_str().expect("id").to_owned()
}

/// An OpenSSL config loading libp11's engine with the module (the
/// engine route of Debian 12's nginx 1.22 and Apache 2.4).
pub fn engine_conf(dir: &Path) -> PathBuf {
    let engine = Path::new("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so");
    assert!(
        engine.exists(),
        "{} is missing: run `apt-get install libengine-pkcs11-openssl` (scripts/test.sh does)",
        engine.display()
    );
    let p = dir.join("engine.cnf");
    std::fs::write(
        &p,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
             [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
             dynamic_path = {}\nMODULE_PATH = {}\nPIN = any\n",
            engine.display(),
            module().display()
        ),
    )
    .expect("write engine.cnf");
    p
}

/// An OpenSSL config loading pkcs11-provider with the module, the default
/// provider active beside it.
pub fn provider_conf(dir: &Path) -> PathBuf {
    let provider = Path::new("/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so");
    assert!(
        provider.exists(),
        "{} is missing: run `apt-get install -t bookworm-backports pkcs11-provider` (scripts/test.sh adds the source and does)",
        provider.display()
    );
    let p = dir.join("provider.cnf");
    std::fs::write(
        &p,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n\
             [provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\
             [default_sect]\nactivate = 1\n[pkcs11_sect]\nmodule = {}\n\
             pkcs11-module-path = {}\npkcs11-module-token-pin = any\nactivate = 1\n",
            provider.display(),
            module().display()
        ),
    )
    .expect("write provider.cnf");
    p
}

/// pkcs11-provider's key file for servers that only read files (nginx
/// 1.22): `SEQUENCE { VisibleString "PKCS#11 Provider URI v1.0",
/// UTF8String uri }` under the provider's PEM label.
pub fn provider_uri_pem(uri: &str) -> String {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            out.extend_from_slice(&[0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        out.extend_from_slice(body);
        out
    }
    let mut body = tlv(0x1a, b"PKCS#11 Provider URI v1.0");
    body.extend(tlv(0x0c, uri.as_bytes()));
    let der = tlv(0x30, &body);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PKCS#11 PROVIDER URI-----\n{b64}\n-----END PKCS#11 PROVIDER URI-----\n")
}

/// Runs `pkcs11-tool --module M ARGS` with the vault's socket in its
/// environment.
pub fn pkcs11_tool(v: &VaultProc, args: &[&str]) -> Output {
    let tool = require_tool("pkcs11-tool", "opensc");
    Command::new(tool)
        .arg("--module")
        .arg(module())
        .args(args)
        .env("VAULTGATE_SOCKET", &v.socket)
        .output()
        .expect("run pkcs11-tool")
}

/// `out`'s stdout, asserting success.
pub fn ok_stdout(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The vault's audit records, parsed.
pub fn audit(v: &VaultProc) -> Vec<serde_json::Value> {
    v.audit_log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The audit records once `done` holds for them (the vault writes its
/// audit log beside answering, so a record may land just after the
/// answer); fails after 10 s, showing the records.
pub fn audit_until(
    v: &VaultProc,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = audit(v);
        if done(&records) {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never showed {what}: {records:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Records of `op` as `uid` with `result` (any when `None`).
pub fn matching<'a>(
    records: &'a [serde_json::Value],
    op: &'a str,
    uid: u32,
    result: Option<&'a str>,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    records
        .iter()
        .filter(move |r| r["op"] == op && r["uid"] == uid)
        .filter(move |r| result.is_none_or(|want| r["result"] == want))
}

/// The operations `records` stand for: a counted record (uses folded
/// while queued) is `count` of them.
pub fn total<'a>(records: impl Iterator<Item = &'a serde_json::Value>) -> u64 {
    records.map(|r| r["count"].as_u64().unwrap_or(1)).sum()
}

/// The pids with audited `op` requests as `uid`, waiting until there is
/// at least one.
pub fn wait_audited(v: &VaultProc, op: &str, uid: u32, result: Option<&str>) -> BTreeSet<i64> {
    let what = format!("{op} by uid {uid} ({result:?})");
    let records = audit_until(v, &what, |r| matching(r, op, uid, result).next().is_some());
    matching(&records, op, uid, result)
        .filter_map(|r| r["pid"].as_i64())
        .collect()
}

/// The pids that made audited `op` requests as `uid` (any result when
/// `result` is `None`).
pub fn audited_pids(v: &VaultProc, op: &str, uid: u32, result: Option<&str>) -> BTreeSet<i64> {
    matching(&audit(v), op, uid, result)
        .filter_map(|r| r["pid"].as_i64())
        .collect()
}

/// For each pid, the connections to the vault's socket it holds and no
/// other process shares (from `ss -xp`: the vault's end names the socket
/// path, the caller's end names the vault's end as its peer).
pub fn own_vault_connections(socket: &Path) -> BTreeMap<i64, usize> {
    let ss = require_tool("ss", "iproute2");
    let out = Command::new(ss).args(["-xpn"]).output().expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let path = socket.display().to_string();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Columns: Netid State Recv-Q Send-Q Local Port Peer Port Process.
    let vault_ends: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.len() >= 8 && r[4] == path)
        .map(|r| r[5])
        .collect();
    let mut own = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.len() >= 9 && vault_ends.contains(r[7]))
    {
        let pids: BTreeSet<i64> = r[8]
            .split("pid=")
            .skip(1)
            .filter_map(|s| s.split(',').next()?.parse().ok())
            .collect();
        if pids.len() == 1 {
            *own.entry(*pids.iter().next().expect("one pid"))
                .or_insert(0) += 1;
        }
    }
    own
}

/// One HTTPS GET with curl, pinned to one TLS version; the body, or why
/// it failed.
pub fn curl(port: u16, ca: &Path, tls: &str) -> Result<String, String> {
    let curl = require_tool("curl", "curl");
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("--tlsv{tls}"))
        .arg("--tls-max")
        .arg(tls)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
