//! TLS: SNI and wildcard certificates, ECDSA and RSA side by side,
//! resumption without the vault, and a vault that goes away and returns.

use std::time::{Duration, Instant};

use crate::common::backends::Nginx;
use crate::common::proxy::{
    client_config, client_config_versions, config, curl, curl_ok, https_get, metric, ProxyProc,
};
use crate::Setup;

fn der_of(pem_path: &std::path::Path) -> Vec<u8> {
    vaultgate::pki::read_pem_certs(pem_path).expect("read cert")[0].to_vec()
}

#[test]
fn sni_picks_the_certificate_for_each_hostname() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let a = s.vault_cert("tls-a", "ecdsa-p256", &["a.test"]);
    let b = s.vault_cert("tls-b", "ecdsa-p384", &["*.b.test"]);
    let cfg = config(
        &s.vault.socket,
        &[
            (&["a.test"], &a, "vault:tls-a"),
            (&["*.b.test"], &b, "vault:tls-b"),
        ],
        &[nginx.addr],
        "default_server_name = \"a.test\"",
        "",
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let client = client_config(s.ca_path(), false, &[b"http/1.1"]);
    let fa = https_get(p.addr, "a.test", &client, "/whoami");
    assert_eq!((fa.status, fa.body.as_slice()), (200, &b"n1\n"[..]));
    assert!(fa.peer_cert == der_of(&a), "a.test got another certificate");
    let fb = https_get(p.addr, "www.b.test", &client, "/whoami");
    assert!(
        fb.peer_cert == der_of(&b),
        "www.b.test got another certificate"
    );

    // curl, by name, verifying each certificate against the test CA.
    for host in ["a.test", "x.b.test"] {
        let resolve = format!("{host}:{}:127.0.0.1", p.addr.port());
        let u = format!("https://{host}:{}/whoami", p.addr.port());
        let out = curl_ok(&[
            "-sS",
            "--cacert",
            s.ca_path().to_str().expect("utf-8"),
            "--resolve",
            &resolve,
            &u,
        ]);
        assert_eq!(out, b"n1\n");
    }
    // A client without SNI (an IP address) gets the default: a.test's.
    let out = curl(&[
        "-sS",
        "-k",
        "-w",
        "%{ssl_verify_result}",
        "-o",
        "/dev/null",
        &format!("https://127.0.0.1:{}/", p.addr.port()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_rsa_only_client_gets_the_rsa_certificate() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let ec = s.vault_cert("tls-ec", "ecdsa-p256", &["localhost"]);
    let rsa = s.vault_cert("tls-rsa", "rsa-2048", &["localhost"]);
    let cfg = config(
        &s.vault.socket,
        &[
            (&["localhost"], &rsa, "vault:tls-rsa"),
            (&["localhost"], &ec, "vault:tls-ec"),
        ],
        &[nginx.addr],
        "",
        "",
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(s.ca_path(), false, &[]),
        "/whoami",
    );
    assert!(
        f.status == 200 && f.peer_cert == der_of(&ec),
        "a modern client should get the ECDSA certificate"
    );
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(s.ca_path(), true, &[]),
        "/whoami",
    );
    assert!(
        f.status == 200 && f.peer_cert == der_of(&rsa),
        "an RSA-only client should get the RSA certificate"
    );

    // TLS 1.2 with only ECDHE-RSA suites: the suite decides, and curl
    // verifies the RSA certificate the vault signed for.
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8");
    let out = curl_ok(&[
        "-sS",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-RSA-AES128-GCM-SHA256",
        &u,
    ]);
    assert_eq!(out, b"n1\n");
    let out = curl_ok(&[
        "-sS",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        &u,
    ]);
    assert_eq!(out, b"n1\n");
}

#[test]
fn a_client_that_cannot_verify_any_certificate_gets_handshake_failure_counted_once() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    // The proxy has only an ECDSA certificate; this client accepts only
    // RSA signatures.
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(s.ca_path(), true, &[]), name)
        .expect("client connection");
    let sock = std::net::TcpStream::connect(p.addr).expect("connect proxy");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let err = tls
        .conn
        .complete_io(&mut tls.sock)
        .expect_err("the handshake must fail");
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        )),
        "{err}"
    );
    // The connection counts after sending the alert: wait for its count,
    // then check nothing else counted the same handshake.
    let counted =
        |m: &str, labels: &[&str]| metric(m, "vaultgate_proxy_handshake_failures_total", labels);
    let m = crate::common::wait_for("the failure to be counted", Duration::from_secs(5), || {
        let m = p.metrics_text();
        (counted(&m, &["reason=\"incompatible\""]) > 0.0).then_some(m)
    });
    assert_eq!(counted(&m, &[]), 1.0, "{m}");
    assert_eq!(counted(&m, &["reason=\"incompatible\""]), 1.0, "{m}");
}

#[test]
fn resumed_handshakes_need_no_signature_from_the_vault() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    let signs = || {
        s.vault_metric(
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"ok\""],
        )
    };

    for tls12 in [false, true] {
        let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let cfg = client_config_versions(s.ca_path(), false, &[b"http/1.1"], versions);
        let before = signs();
        let first = https_get(p.addr, "localhost", &cfg, "/whoami");
        assert!(first.status == 200 && !first.resumed);
        assert_eq!(
            first.version,
            Some(if tls12 {
                rustls::ProtocolVersion::TLSv1_2
            } else {
                rustls::ProtocolVersion::TLSv1_3
            })
        );
        let after_full = signs();
        assert_eq!(
            after_full,
            before + 1.0,
            "a full handshake is one vault signature"
        );
        for _ in 0..3 {
            let again = https_get(p.addr, "localhost", &cfg, "/whoami");
            assert!(
                again.status == 200 && again.resumed,
                "tls12={tls12}: second handshake should resume"
            );
        }
        assert_eq!(
            signs(),
            after_full,
            "tls12={tls12}: resumed handshakes must not reach the vault"
        );
    }
    let m = p.metrics_text();
    assert!(
        metric(
            &m,
            "vaultgate_proxy_handshakes_total",
            &["kind=\"resumed\""]
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(&m, "vaultgate_proxy_handshakes_total", &["kind=\"full\""]) >= 2.0,
        "{m}"
    );
}

#[test]
fn handshakes_fail_fast_while_the_vault_is_down_and_recover_when_it_returns() {
    let mut s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "sign_timeout = \"100ms\"", "");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    assert_eq!(
        curl_ok(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]),
        b"n1\n"
    );

    s.vault.kill9();
    let start = Instant::now();
    let out = curl(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]);
    assert!(
        !out.status.success(),
        "a handshake without the vault must fail"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "it must fail fast, took {:?}",
        start.elapsed()
    );

    // Said in the log, naming the socket.
    crate::common::wait_for(
        "the lost connection to be logged",
        Duration::from_secs(10),
        || {
            let log = p.log();
            log.lines()
                .any(|l| {
                    l.contains("lost a vault connection")
                        && l.contains(&s.vault.socket.display().to_string())
                })
                .then_some(())
        },
    );

    s.vault.restart();
    // The signer reconnects with backoff (at most 2 s between attempts).
    crate::common::wait_for("the proxy to sign again", Duration::from_secs(15), || {
        let out = curl(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]);
        (out.status.success() && out.stdout == b"n1\n").then_some(())
    });
    let m = p.metrics_text();
    assert!(
        metric(&m, "vaultgate_proxy_handshake_failures_total", &[]) >= 1.0,
        "{m}"
    );
}

#[test]
fn a_proxy_started_without_a_vault_names_the_sockets_and_why() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let missing = s.path("no-vault-here.sock");
    let cfg = config(
        &missing,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[nginx.addr],
        "",
        "",
    );
    std::fs::write(s.path("proxy.toml"), cfg).expect("write config");
    let path = s.path("proxy.toml").display().to_string();
    let err = ProxyProc::try_spawn(s.dir.path(), &["proxy", "--config", &path])
        .err()
        .expect("a proxy without its vault must not start");
    assert!(
        err.contains("no vault socket is usable")
            && err.contains(&missing.display().to_string())
            && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn rotating_the_key_in_the_vault_fails_no_handshake() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[nginx.addr],
        "",
        "",
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let get = || curl_ok(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]);
    assert_eq!(get(), b"n1\n");
    // The proxy signs with the version its certificate holds, so a new
    // primary version in the vault changes nothing until the store is swapped.
    s.vault.ok(&["key", "rotate", "tls-local"]);
    for _ in 0..5 {
        assert_eq!(get(), b"n1\n");
    }
    // A proxy started after the rotation finds the matching older version.
    let dir2 = tempfile::tempdir().expect("temp");
    let p2 = ProxyProc::start(dir2.path(), &cfg);
    let resolve2 = format!("localhost:{}:127.0.0.1", p2.addr.port());
    let u2 = format!("https://localhost:{}/whoami", p2.addr.port());
    assert_eq!(
        curl_ok(&["-sS", "--cacert", &ca, "--resolve", &resolve2, &u2]),
        b"n1\n"
    );
}

#[test]
fn signatures_fail_over_to_the_next_vault_socket() {
    let mut s = Setup::start();
    let nginx = Nginx::start("n1");
    let (_standby, p) = s.two_vault_proxy(&[nginx.addr], "");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let get = || curl(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]);
    assert_eq!(get().stdout, b"n1\n");

    s.vault.kill9();
    // The primary's connections die with it; the next handshake uses the standby.
    for i in 0..5 {
        let out = get();
        assert!(
            out.status.success(),
            "handshake {i} after the primary died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m = p.metrics_text();
    assert!(
        metric(&m, "vaultgate_proxy_vault_failovers_total", &[]) >= 1.0,
        "{m}"
    );
}

/// Full handshakes from `n` clients at once (released together), each
/// on its own connection; the error of each one that failed.
fn concurrent_full_handshakes(p: &ProxyProc, ca: &std::path::Path, n: usize) -> Vec<String> {
    let full = {
        let mut c = (*client_config(ca, false, &[b"http/1.1"])).clone();
        c.resumption = rustls::client::Resumption::disabled();
        std::sync::Arc::new(c)
    };
    let go = std::sync::Arc::new(std::sync::Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (full, go, addr) = (full.clone(), go.clone(), p.addr);
            std::thread::spawn(move || {
                go.wait();
                crate::common::raw::try_tls_connect(addr, &full, Duration::from_secs(10))
                    .map(drop)
                    .map_err(|e| crate::common::raw::tls_error(&e))
            })
        })
        .collect();
    clients
        .into_iter()
        .filter_map(|c| c.join().expect("client thread").err())
        .collect()
}

#[test]
fn the_first_handshakes_after_a_fresh_start_meet_the_sign_deadline() {
    // Both processes fresh: a vault that has not signed since it started
    // and a proxy that has not made a handshake. Neither may make its
    // first clients pay for what it could do before it says it is ready
    // (the crypto library's entropy set-up costs ~50 ms of CPU once per
    // process: half the default 100 ms deadline, all of it on a busy core).
    for round in 0..3 {
        let mut s = Setup::start();
        let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
        s.vault.restart();
        let nginx = Nginx::start("n1");
        let cfg = config(
            &s.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-local")],
            &[nginx.addr],
            "",
            "",
        );
        let p = ProxyProc::start(s.dir.path(), &cfg);
        let failed = concurrent_full_handshakes(&p, s.ca_path(), 20);
        assert!(
            failed.is_empty(),
            "round {round}: {} of 20 first handshakes failed: {failed:?}\n{}",
            failed.len(),
            p.log()
        );
    }
}

#[test]
fn a_stalled_vault_fails_handshakes_at_the_sign_timeout_and_other_traffic_flows() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "sign_timeout = \"200ms\"", "");
    // A client that already has a session keeps working while the vault stalls.
    let resuming = client_config(s.ca_path(), false, &[b"http/1.1"]);
    assert_eq!(
        https_get(p.addr, "localhost", &resuming, "/whoami").status,
        200
    );

    let vault_pid = nix::unistd::Pid::from_raw(s.vault.child.id() as i32);
    nix::sys::signal::kill(vault_pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP vault");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let start = Instant::now();
    let out = curl(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]);
    let took = start.elapsed();
    let resumed = https_get(p.addr, "localhost", &resuming, "/whoami");
    nix::sys::signal::kill(vault_pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT vault");
    assert!(
        !out.status.success(),
        "a full handshake must fail while the vault is stalled"
    );
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "failed after {took:?}"
    );
    assert!(
        resumed.status == 200 && resumed.resumed,
        "resumption needs no vault"
    );
    assert_eq!(
        curl_ok(&["-sS", "--cacert", &ca, "--resolve", &resolve, &u]),
        b"n1\n"
    );
    let m = p.metrics_text();
    assert!(
        metric(
            &m,
            "vaultgate_proxy_vault_errors_total",
            &["reason=\"timeout\""]
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn min_tls_version_1_3_refuses_tls_1_2_clients_and_alpn_offers_both_protocols() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "min_tls_version = \"1.3\"", "");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let u = format!("https://localhost:{}/whoami", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let out = curl(&[
        "-sS",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--tls-max",
        "1.2",
        &u,
    ]);
    assert!(!out.status.success(), "TLS 1.2 must be refused");
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl_ok(&[
            "-sS",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &u,
        ]);
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
}

#[test]
fn sighup_swaps_in_a_rotated_key_and_certificate_without_failing_a_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let live = s.path("live.pem");
    let old = s.vault_cert("tls-rot", "ecdsa-p256", &["localhost"]);
    std::fs::copy(&old, &live).expect("copy");
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &live, "vault:tls-rot")],
        &[nginx.addr],
        "",
        "",
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);

    // Fresh clients (full handshakes, so every one signs) in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (addr, ca) = (p.addr, s.ca_path().to_owned());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = std::panic::catch_unwind(|| {
                    https_get(
                        addr,
                        "localhost",
                        &client_config(&ca, false, &[]),
                        "/whoami",
                    )
                    .status
                });
                let counter = if matches!(r, Ok(200)) { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let traffic = |n| {
        let target = ok.load(Ordering::Relaxed) + n;
        crate::common::wait_for("traffic", Duration::from_secs(10), || {
            (ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    };
    traffic(5);

    // Rotate in the vault (new primary version), issue a certificate for
    // it, replace the file atomically: handshakes still use version 1.
    s.vault.ok(&["key", "rotate", "tls-rot"]);
    let pool = crate::common::proxy::pool(&s.vault);
    let pem = vaultgate::devca::issue_leaf(
        &s.ca.ca,
        &pool,
        "tls-rot",
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .expect("issue");
    let tmp = s.path("live.tmp");
    std::fs::write(&tmp, &pem).expect("write");
    std::fs::rename(&tmp, &live).expect("rename");
    traffic(5);
    let sighup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    sighup();
    let new_der = der_of(&live);
    crate::common::wait_for(
        "the new certificate to be served",
        Duration::from_secs(10),
        || {
            let f = https_get(
                p.addr,
                "localhost",
                &client_config(s.ca_path(), false, &[]),
                "/whoami",
            );
            (f.peer_cert == new_der).then_some(())
        },
    );
    traffic(5);

    // A broken file: the reload fails and the current store stays.
    std::fs::write(&live, "not a certificate").expect("write");
    sighup();
    crate::common::wait_for("the failed reload", Duration::from_secs(10), || {
        p.log().contains("certificate reload failed").then_some(())
    });
    traffic(5);
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across rotation and reloads"
    );
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(s.ca_path(), false, &[]),
        "/whoami",
    );
    assert!(f.peer_cert == new_der && f.peer_cert != der_of(&old));
}

#[test]
fn ticket_keys_rotate_on_schedule_and_old_tickets_stop_resuming() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        "ticket_rotation = \"1s\"\nsession_cache_size = 0",
        "",
    );
    let client = client_config(s.ca_path(), false, &[b"http/1.1"]);
    assert!(!https_get(p.addr, "localhost", &client, "/whoami").resumed);
    assert!(https_get(p.addr, "localhost", &client, "/whoami").resumed);
    // A ticket is good for at most two rotation periods. The clock is the
    // thing under test here, so the test waits on it.
    std::thread::sleep(Duration::from_millis(3500));
    let late = https_get(p.addr, "localhost", &client, "/whoami");
    assert!(
        late.status == 200 && !late.resumed,
        "a ticket older than two rotations must not resume"
    );
    assert!(https_get(p.addr, "localhost", &client, "/whoami").resumed);
}

#[test]
fn a_replaced_certificate_file_is_picked_up_without_a_signal() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let live = s.path("watched.pem");
    let old = s.vault_cert("tls-watch", "ecdsa-p256", &["localhost"]);
    std::fs::copy(&old, &live).expect("copy");
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &live, "vault:tls-watch")],
        &[nginx.addr],
        "",
        "",
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let get = || {
        https_get(
            p.addr,
            "localhost",
            &client_config(s.ca_path(), false, &[]),
            "/whoami",
        )
    };
    assert_eq!(get().peer_cert, der_of(&old));

    // Rotate in the vault, issue the new version's certificate, replace
    // the file atomically (as certbot and friends do): no SIGHUP.
    s.vault.ok(&["key", "rotate", "tls-watch"]);
    let pool = crate::common::proxy::pool(&s.vault);
    let pem = vaultgate::devca::issue_leaf(
        &s.ca.ca,
        &pool,
        "tls-watch",
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .expect("issue");
    let tmp = s.path("watched.tmp");
    std::fs::write(&tmp, &pem).expect("write");
    std::fs::rename(&tmp, &live).expect("rename");
    let new_der = der_of(&live);
    let replaced = Instant::now();
    crate::common::wait_for(
        "the replaced file to be served",
        Duration::from_secs(10),
        || {
            let f = get();
            assert_eq!(f.status, 200);
            (f.peer_cert == new_der).then_some(())
        },
    );
    eprintln!(
        "file replaced to new certificate served: {:?}",
        replaced.elapsed()
    );
    // The vault's rotation event may have reloaded the certificates after
    // the rename and served the new one first; the file watcher notices
    // the replaced file all the same.
    crate::common::wait_for("the file watcher to notice", Duration::from_secs(5), || {
        p.log().contains("certificate file changed").then_some(())
    });
}

#[test]
fn a_certificate_bound_in_the_vault_after_a_rotation_is_served_without_a_signal() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    // A fresh client each time: a resumed session would show the
    // certificate of the session it resumes.
    let served = || {
        https_get(
            p.addr,
            "localhost",
            &client_config(s.ca_path(), false, &[]),
            "/whoami",
        )
    };
    let first = served();
    assert_eq!(first.status, 200);

    // Rotate, and bind a certificate for the new version in the vault, as
    // an operator does with a CA outside (`vaultgate cert install`). The
    // proxy's certificate file is not touched and no signal is sent: the
    // vault's key event is all the proxy hears.
    s.vault.ok(&["key", "rotate", "tls-local"]);
    let pem = vaultgate::devca::issue_leaf(
        &s.ca.ca,
        &crate::common::proxy::pool(&s.vault),
        "tls-local",
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .expect("issue");
    let chain = s.path("v2-chain.pem");
    std::fs::write(&chain, &pem).expect("write chain");
    let installed = Instant::now();
    s.vault.ok(&[
        "cert",
        "install",
        "tls-local",
        "--chain",
        &chain.display().to_string(),
    ]);
    let new_der = der_of(&chain);
    assert_ne!(first.peer_cert, new_der);
    crate::common::wait_for("the bound certificate", Duration::from_secs(1), || {
        let f = served();
        assert_eq!(f.status, 200, "no request fails while the pair changes");
        (f.peer_cert == new_der).then_some(())
    });
    eprintln!(
        "bound certificate served {:?} after `cert install`",
        installed.elapsed()
    );
    // A handshake that verifies the new certificate was signed by the new
    // version: the version the vault reports as primary.
    let describe = s.vault.ok(&["key", "describe", "tls-local"]);
    assert!(
        describe.contains("\"primary\": 2") || describe.contains("\"primary\":2"),
        "{describe}"
    );
    assert!(
        p.log().contains("vault key changed"),
        "the swap came from the vault's event: {}",
        p.log()
    );
}

/// `openssl s_client` to `localhost` at `addr`, one HTTP/1.1 request and
/// the answer, with `args` added (`-sess_in`, `-sess_out`, versions).
/// Returns whether it succeeded and what it printed.
fn s_client(addr: std::net::SocketAddr, ca: &std::path::Path, args: &[&str]) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let openssl = crate::common::require_tool("openssl", "openssl");
    let mut child = Command::new(openssl)
        .args(["s_client", "-connect", &addr.to_string()])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(ca)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    // The proxy closes after answering, so s_client ends having read the
    // session tickets that follow the handshake.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write request");
    let out = child.wait_with_output().expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_disabled_key_ends_resumption_of_the_sessions_it_served() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    let ca = s.ca_path();
    // TLS 1.3 tickets, TLS 1.2 tickets, the TLS 1.2 session-id cache.
    let kinds: [(&str, &[&str]); 3] = [
        ("tls13-ticket", &["-tls1_3"]),
        ("tls12-ticket", &["-tls1_2"]),
        ("tls12-session-id", &["-tls1_2", "-no_ticket"]),
    ];
    let sessions = |kind: &str| s.path(&format!("{kind}.session"));
    let full_then_resumed = |kind: &str, args: &[&str]| {
        let saved = sessions(kind);
        let saved = saved.to_str().expect("utf-8");
        let (ok, first) = s_client(p.addr, ca, &[args, &["-sess_out", saved]].concat());
        assert!(
            ok && first.contains("\nNew, ") && first.contains("\nn1"),
            "{kind}: {first}"
        );
        let (ok, again) = s_client(p.addr, ca, &[args, &["-sess_in", saved]].concat());
        assert!(
            ok && again.contains("\nReused, ") && again.contains("\nn1"),
            "{kind}: {again}"
        );
    };
    for (kind, args) in kinds {
        full_then_resumed(kind, args);
    }

    s.vault.ok(&["key", "disable", "tls-local"]);
    crate::common::wait_for(
        "the proxy to hear of the disable",
        Duration::from_secs(10),
        || {
            (metric(
                &p.metrics_text(),
                "vaultgate_proxy_resumption_ended_total",
                &[],
            ) >= 1.0)
                .then_some(())
        },
    );
    for (kind, args) in kinds {
        let saved = sessions(kind);
        let saved = saved.to_str().expect("utf-8");
        let (ok, text) = s_client(p.addr, ca, &[args, &["-sess_in", saved]].concat());
        assert!(
            !ok && text.contains("\nNew, ") && !text.contains("Reused, ") && !text.contains("\nn1"),
            "{kind}: a session made before the disable must not resume, and a full handshake must fail: {text}"
        );
    }
    let m = p.metrics_text();
    assert!(
        metric(
            &m,
            "vaultgate_proxy_handshake_failures_total",
            &["reason=\"vault\""]
        ) >= 3.0,
        "the full handshakes failed on the vault's refusal: {m}"
    );

    // Enabled again, the site is back, and resumes as before; what was
    // saved before the disable still does not.
    s.vault.ok(&["key", "enable", "tls-local"]);
    for (kind, args) in kinds {
        let saved = sessions(kind);
        let saved = saved.to_str().expect("utf-8");
        let (ok, text) = s_client(p.addr, ca, &[args, &["-sess_in", saved]].concat());
        assert!(
            ok && text.contains("\nNew, ") && text.contains("\nn1"),
            "{kind}: {text}"
        );
        full_then_resumed(kind, args);
    }
}
