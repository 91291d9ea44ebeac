//! The promise, under load: while 32 clients send requests (half on
//! keep-alive connections, half with a new TLS connection and a full
//! handshake per request), the TLS key rotates 20 times and the config is
//! reloaded 10 times (one of them invalid) — and not one request fails.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, https_get, ProxyProc};
use crate::common::{bin, wait_for};

/// One request on an open keep-alive connection; the body, or None if the
/// connection or the response was bad.
fn keep_alive_get(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
) -> Option<Vec<u8>> {
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return None;
        }
        let body = &raw[end + 4..];
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if body.len() >= len {
                return Some(body[..len].to_vec());
            }
        } else if body.ends_with(b"0\r\n\r\n") {
            return Some(body.to_vec());
        }
    }
}

fn cli(cfg: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--config", cfg])
        .output()
        .expect("vaultgate")
}

#[test]
fn rotations_and_reloads_under_load_fail_no_request() {
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-load-")
        .tempdir_in("/tmp")
        .expect("temp");
    let cfg_path = super::run::run_config(dir.path(), nginx.addr);
    let cfg = cfg_path.display().to_string();
    let shipped = std::fs::read_to_string(&cfg_path).expect("config");
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg]);
    let ca = dir.path().join("certs/dev-ca.pem");

    // Data sealed before everything: it must still open afterwards.
    let out = cli(&cfg, &["key", "create", "data", "--type", "aes-256"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut enc = Command::new(bin())
        .args(["data", "encrypt", "--key", "data", "--config", &cfg])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("encrypt");
    enc.stdin
        .take()
        .expect("stdin")
        .write_all(b"sealed before")
        .expect("write");
    let blob = enc.wait_with_output().expect("encrypt").stdout;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Full handshakes by the SHA-256 of the certificate's public key.
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut clients = Vec::new();
    for i in 0..32 {
        let (stop, ok, failures, ca) = (stop.clone(), ok.clone(), failures.clone(), ca.clone());
        let seen = seen.clone();
        let addr = p.addr;
        clients.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                // A new connection, a full handshake (fresh client: no
                // resumption), one request.
                while !stop.load(Ordering::Relaxed) {
                    let r = std::panic::catch_unwind(|| {
                        https_get(
                            addr,
                            "localhost",
                            &client_config(&ca, false, &[]),
                            "/whoami",
                        )
                    });
                    match r {
                        Ok(f) if f.status == 200 && f.body == b"n1\n" && !f.resumed => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let spki = vaultgate::pki::cert_spki(&f.peer_cert).expect("spki");
                            *seen
                                .lock()
                                .unwrap()
                                .entry(vaultgate::internals::spki_sha256(spki))
                                .or_default() += 1;
                        }
                        Ok(f) => failures
                            .lock()
                            .unwrap()
                            .push(format!("new connection: {} {:?}", f.status, f.body)),
                        Err(_) => failures
                            .lock()
                            .unwrap()
                            .push("new connection: handshake or I/O failed".into()),
                    }
                }
            } else {
                // Keep-alive: one connection, many requests.
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let conn =
                    rustls::ClientConnection::new(client_config(&ca, false, &[b"http/1.1"]), name)
                        .expect("client");
                let sock = std::net::TcpStream::connect(addr).expect("connect");
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut tls = rustls::StreamOwned::new(conn, sock);
                while !stop.load(Ordering::Relaxed) {
                    match keep_alive_get(&mut tls) {
                        Some(b) if b == b"n1\n" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("keep-alive: {other:?}"));
                            return;
                        }
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    let mut delays = Vec::new();
    let mut reloads = 0;
    for round in 0..20 {
        // Rotate; a new connection sees the new certificate.
        let before = https_get(
            p.addr,
            "localhost",
            &client_config(&ca, false, &[]),
            "/whoami",
        )
        .peer_cert;
        let out = cli(&cfg, &["key", "rotate", "default"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        wait_for("the rotated certificate", Duration::from_secs(5), || {
            let f = https_get(
                p.addr,
                "localhost",
                &client_config(&ca, false, &[]),
                "/whoami",
            );
            (f.peer_cert != before).then_some(())
        });
        delays.push(t.elapsed());
        // Every other round, reload a changed config (the 5th one invalid).
        if round % 2 == 1 {
            let text = if round == 9 {
                shipped.replace("backends = [", "backends = [42, ")
            } else {
                shipped.replace(
                    "access_log = true",
                    &format!("access_log = {}", round % 4 == 1),
                )
            };
            std::fs::write(&cfg_path, text).expect("config");
            let out = cli(&cfg, &["reload"]);
            if round == 9 {
                assert!(!out.status.success(), "an invalid config must be refused");
                // Sent anyway, the running process refuses it too.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid()),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .expect("SIGHUP");
                wait_for("the refused reload", Duration::from_secs(5), || {
                    p.log().contains("config reload failed").then_some(())
                });
                // Admin commands read the same file to find the vault.
                std::fs::write(&cfg_path, &shipped).expect("config");
            } else {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            reloads += 1;
        }
    }
    // The load must last at least 10 seconds in all: here the clock is the
    // requirement, not a readiness guess.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().unwrap().clone();
    let served = ok.load(Ordering::Relaxed);
    delays.sort();
    eprintln!(
        "under load: {served} requests, {} failures, {reloads} reloads, rotation delay median {:?} max {:?}",
        failures.len(),
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(served > 100, "too little traffic: {served}");
    // Rotations are pushed by the vault's key events (median ~50 ms here);
    // the bound tells that from a periodic check, with room for a 2-core
    // machine under this load (one of 20 took 1.04 s in CI).
    assert!(
        delays[delays.len() - 1] < Duration::from_secs(5),
        "{delays:?}"
    );
    assert!(
        p.log().contains("config reload failed"),
        "the invalid config was not refused"
    );

    // Each handshake verified its certificate against the dev CA, and its
    // signature against that certificate's key (rustls checks both): so
    // the key that signed is the one in the certificate. Ask the vault
    // which version of `default` that is, and check its audit log shows
    // that version signing.
    let mut versions = HashMap::new();
    for v in 1..=21 {
        let out = cli(
            &cfg,
            &["key", "public", "default", "--version", &v.to_string()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hash = text
            .lines()
            .find_map(|l| l.strip_prefix("spki-sha256: "))
            .expect("spki-sha256 line")
            .to_owned();
        versions.insert(hash, v);
    }
    let audit = std::fs::read_to_string(dir.path().join("var/vault/audit.log")).expect("audit log");
    let signed: std::collections::HashSet<i64> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["op"] == "sign" && e["key"] == "default" && e["result"] == "ok")
        .filter_map(|e| e["version"].as_i64())
        .collect();
    let seen = seen.lock().unwrap().clone();
    let mut by_version = std::collections::BTreeMap::new();
    for (hash, n) in &seen {
        let v = versions.get(hash).unwrap_or_else(|| {
            panic!("{n} handshakes served a key that is no version of `default`: {hash}")
        });
        assert!(
            signed.contains(&(*v as i64)),
            "version {v} served {n} handshakes but the audit log shows it never signed"
        );
        by_version.insert(*v, *n);
    }
    eprintln!(
        "full handshakes per key version (each cross-checked with the vault): {by_version:?}"
    );
    assert!(
        by_version.len() >= 10,
        "handshakes saw only versions {by_version:?} across 20 rotations"
    );

    let mut dec = Command::new(bin())
        .args(["data", "decrypt", "--config", &cfg])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("decrypt");
    dec.stdin
        .take()
        .expect("stdin")
        .write_all(&blob)
        .expect("write");
    assert_eq!(
        dec.wait_with_output().expect("decrypt").stdout,
        b"sealed before"
    );
}
