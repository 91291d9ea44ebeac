//! The security boundary: with a `vault:` key the private key's bytes are
//! nowhere in the proxy's memory; the same scan finds them in a proxy
//! that loaded the key from a file.

use crate::common::backends::Nginx;
use crate::common::proxy::{config, curl_ok, ProxyProc};
use crate::Setup;

/// Byte strings that would betray the key: its PKCS#8 DER, the private
/// scalar (big-endian, and in little-endian limb order) and the PEM text.
fn secrets(pkcs8: &[u8], pem: &str) -> Vec<(&'static str, Vec<u8>)> {
    // ECPrivateKey: INTEGER 1, then OCTET STRING of 32 bytes (the scalar).
    let at = pkcs8
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("P-256 scalar in PKCS#8");
    let scalar = pkcs8[at + 5..at + 37].to_vec();
    let mut reversed = scalar.clone();
    reversed.reverse();
    let b64_line = pem.lines().nth(1).expect("PEM body").as_bytes().to_vec();
    vec![
        ("pkcs8", pkcs8.to_vec()),
        ("scalar-mont-le", montgomery_le(&scalar)),
        ("scalar", scalar),
        ("scalar-le", reversed),
        ("pem", b64_line),
    ]
}

/// The scalar as ring holds a parsed P-256 key: d·2^256 mod n, in
/// little-endian 64-bit limbs (on x86_64: little-endian bytes). (AWS-LC
/// holds d itself in little-endian limbs: `scalar-le`.)
fn montgomery_le(scalar: &[u8]) -> Vec<u8> {
    let n = rsa::BigUint::parse_bytes(
        b"FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
        16,
    )
    .expect("P-256 order");
    let d = rsa::BigUint::from_bytes_be(scalar);
    let mut le = ((d << 256usize) % n).to_bytes_le();
    le.resize(32, 0);
    le
}

/// Which of `needles` occur anywhere in the readable memory of `pid`.
fn scan(pid: i32, needles: &[(&'static str, Vec<u8>)]) -> Vec<&'static str> {
    use std::io::{Read, Seek, SeekFrom};
    assert!(
        nix::unistd::geteuid().is_root(),
        "reading another process's memory needs root: run this test as root (as CI does)"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut found = Vec::new();
    let mut buf = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        buf.resize((end - start) as usize, 0);
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (name, needle) in needles {
            if !found.contains(name) && buf.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(*name);
            }
        }
    }
    found
}

#[test]
fn the_private_key_is_in_a_file_key_proxy_and_never_in_a_vault_key_proxy() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let (cert, key_file) = (s.path("imp.pem"), s.path("imp.key"));
    let key = s.ca.file_cert(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &["localhost"],
        &cert,
        &key_file,
    );
    let needles = secrets(&key.serialize_der(), &key.serialize_pem());
    s.vault.ok(&[
        "key",
        "import",
        "imp",
        "--pem",
        key_file.to_str().expect("utf-8"),
    ]);

    let fetch = |p: &ProxyProc| {
        let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
        let u = format!("https://localhost:{}/whoami", p.addr.port());
        assert_eq!(
            curl_ok(&[
                "-sS",
                "--cacert",
                s.ca_path().to_str().expect("utf-8"),
                "--resolve",
                &resolve,
                &u
            ]),
            b"n1\n"
        );
    };

    let vault_dir = tempfile::tempdir().expect("temp");
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:imp")],
        &[nginx.addr],
        "",
        "",
    );
    let vault_proxy = ProxyProc::start(vault_dir.path(), &cfg);
    fetch(&vault_proxy);
    let leaked = scan(vault_proxy.pid(), &needles);
    assert!(
        leaked.is_empty(),
        "vault: key proxy holds key material: {leaked:?}"
    );

    let file_dir = tempfile::tempdir().expect("temp");
    let cfg = config(
        &s.vault.socket,
        &[(
            &["localhost"],
            &cert,
            &format!("file:{}", key_file.display()),
        )],
        &[nginx.addr],
        "",
        "",
    );
    let file_proxy = ProxyProc::start(file_dir.path(), &cfg);
    fetch(&file_proxy);
    let found = scan(file_proxy.pid(), &needles);
    eprintln!("key material found in the file: proxy: {found:?}");
    // The live, parsed key, not just leftover file text: the scan sees a
    // key that is in use, so its silence about the vault: proxy means
    // something. AWS-LC (the proxy's provider) keeps the scalar as a
    // BIGNUM, little-endian limbs; ring kept it in Montgomery form.
    assert!(
        found.contains(&"scalar-le") || found.contains(&"scalar-mont-le"),
        "the scan should find the parsed key in a file: key proxy (else it proves nothing): {found:?}"
    );
    assert!(
        file_proxy.log().contains("no isolation"),
        "file: keys must warn at start"
    );
}
