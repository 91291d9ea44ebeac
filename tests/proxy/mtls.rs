//! The vault over mutual TLS: a proxy on one address signing through a
//! vault's `tls_listen` on another, every refusal audited and counted,
//! and failover between a TLS vault and a Unix one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};

use crate::common::proxy::{curl_ok, metric, ProxyProc};
use crate::common::vault::{http_get, Opts, VaultProc};
use crate::common::wait_for;
use vaultgate::protocol::{frame, ErrorCode, Request, Response};

const EDGE: &str = "spiffe://example/proxy/edge-1";

/// A CA made in the test (scaffolding, not the thing under test).
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("CA cert");
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).expect("write CA");
        Ca { cert, key, pem }
    }

    /// A certificate and key in `dir` as `name.pem` and `name.key`.
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        san: SanType,
        client: bool,
        expired: bool,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![san];
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    fn client(&self, dir: &Path, name: &str, uri: &str) -> (PathBuf, PathBuf) {
        let uri = SanType::URI(uri.try_into().expect("uri"));
        self.issue(dir, name, uri, true, false)
    }
}

/// A free TCP port on `ip` (the vault cannot say which port 0 became on
/// its ready line; the address is the test's own).
fn free_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// A TLS vault's config on a free port of `ip`, its certificate issued
/// by `vaults` into `dir`: root administers on the Unix socket,
/// `cert:spiffe://example/proxy/*` may use every key.
fn vault_config(dir: &Path, ip: &str, vaults: &Ca, client_ca: &Path) -> (SocketAddr, String) {
    let san = SanType::IpAddress(ip.parse().expect("ip"));
    let (cert, key) = vaults.issue(dir, &format!("vault-{ip}"), san, false, false);
    let addr: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().expect("addr");
    let config = format!(
        "[vault]\ntls_listen = \"{addr}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n\
         [[vault.grant]]\nprincipal = \"uid:0\"\nkeys = [\"*\"]\nops = [\"all\"]\n\
         [[vault.grant]]\nprincipal = \"cert:spiffe://example/proxy/*\"\nkeys = [\"*\"]\nops = [\"use\"]\n",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    (addr, config)
}

fn vault_metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("metrics"), "/metrics");
    metric(&text, name, labels)
}

/// A vault with `tls_listen` on 127.0.0.11: its server certificate from
/// `vaults`, client certificates from `clients`; root administers on the
/// Unix socket, `cert:spiffe://example/proxy/*` may use every key.
struct TlsVault {
    vault: VaultProc,
    addr: SocketAddr,
    vaults: Ca,
    clients: Ca,
    dir: tempfile::TempDir,
}

impl TlsVault {
    fn start(state_from: Option<&Path>) -> TlsVault {
        TlsVault::start_trusting(state_from, None)
    }

    /// With `client_ca` in place of the test's clients CA, if given.
    fn start_trusting(state_from: Option<&Path>, client_ca: Option<&Path>) -> TlsVault {
        let dir = tempfile::Builder::new()
            .prefix("vg-mtls-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let vaults = Ca::new(dir.path(), "vaults-ca");
        let clients = Ca::new(dir.path(), "clients-ca");
        let (addr, config) = vault_config(
            dir.path(),
            "127.0.0.11",
            &vaults,
            client_ca.unwrap_or(&clients.pem),
        );
        let vault = VaultProc::start_with(Opts {
            config: Some(config),
            metrics: true,
            state_dir: state_from.map(Path::to_owned),
            ..Opts::default()
        });
        TlsVault {
            vault,
            addr,
            vaults,
            clients,
            dir,
        }
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        vault_metric(&self.vault, name, labels)
    }

    /// A second TLS vault on `ip` with a copy of this one's state (the
    /// same keys), its certificate from the same CA, trusting the same
    /// clients. Stops this vault for the copy and starts it again.
    fn sibling(&mut self, ip: &str) -> (VaultProc, SocketAddr) {
        self.vault.stop();
        let copy = self.dir.path().join(format!("state-{ip}"));
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.vault.state)
            .arg(&copy)
            .status()
            .expect("cp");
        assert!(status.success());
        self.vault.restart();
        let (addr, config) = vault_config(self.dir.path(), ip, &self.vaults, &self.clients.pem);
        let vault = VaultProc::start_with(Opts {
            config: Some(config),
            metrics: true,
            state_dir: Some(copy),
            ..Opts::default()
        });
        (vault, addr)
    }

    /// `[proxy] vaults` and `[proxy.vault_tls]` for the edge-1 identity.
    fn proxy_vault_config(&self, vaults: &str) -> String {
        let (cert, key) = self.clients.client(self.dir.path(), "edge-1", EDGE);
        format!(
            "vaults = [{vaults}]\n[proxy.vault_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.vaults.pem.display(),
            cert.display(),
            key.display()
        )
    }
}

/// A proxy on 127.0.0.21 with `vault:web` for `localhost`, whose
/// certificate `cert` is, and `vault` (its `[proxy]` vault keys).
fn proxy(dir: &Path, cert: &Path, vault: &str) -> (ProxyProc, crate::common::backends::Nginx) {
    let backend = crate::common::backends::Nginx::start("m1");
    let cfg = crate::common::proxy::config(
        Path::new("/nonexistent/vault.sock"),
        &[(&["localhost"], cert, "vault:web")],
        &[backend.addr],
        vault,
        "",
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.21:0\"");
    (ProxyProc::start(dir, &cfg), backend)
}

fn curl_localhost(p: &ProxyProc, ca: &Path) -> Vec<u8> {
    let resolve = format!("localhost:{}:{}", p.addr.port(), p.addr.ip());
    let url = format!("https://localhost:{}/", p.addr.port());
    curl_ok(&[
        "-sS",
        "--cacert",
        ca.to_str().expect("utf-8"),
        "--resolve",
        &resolve,
        &url,
    ])
}

#[test]
fn a_proxy_on_another_address_signs_through_a_vault_over_mutual_tls() {
    let v = TlsVault::start(None);
    let site = crate::common::proxy::TestCa::new(v.dir.path());
    let cert = v.dir.path().join("web.pem");
    site.vault_cert(&v.vault, "web", "ecdsa-p256", &["localhost"], &cert);
    let tls = format!("\"tls://{}\"", v.addr);
    let (p, _backend) = proxy(v.dir.path(), &cert, &v.proxy_vault_config(&tls));
    for _ in 0..3 {
        curl_localhost(&p, &site.pem_path);
    }
    let signed = v.metric(
        "vaultgate_vault_requests_total",
        &["op=\"sign\"", "result=\"ok\""],
    );
    assert!(signed >= 3.0, "signatures over TLS: {signed}");
    let audit = v.vault.audit_log();
    assert!(
        audit.lines().any(|l| l.contains("\"op\":\"sign\"")
            && l.contains(&format!("\"identity\":\"{EDGE}\""))
            && l.contains("\"peer\":\"127.")
            && !l.contains("\"uid\"")),
        "no sign record naming the certificate identity: {audit}"
    );
}

/// A raw client over mutual TLS to the vault: `Ok` with the session if
/// the vault served it (answered a ping), `Err` saying why not.
fn raw_client(
    v: &TlsVault,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in vaultgate::pki::read_pem_certs(&v.vaults.pem).expect("ca") {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vaultgate::pki::read_pem_certs(cert).expect("cert"),
                vaultgate::pki::read_pem_key(key).expect("key"),
            )
            .expect("client auth"),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(v.addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.11").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    match call(
        &mut s,
        &Request::Ping {
            payload: b"hi".to_vec(),
        },
    ) {
        Ok(Response::Pong { .. }) => Ok(s),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e),
    }
}

/// One request and its answer on a raw TLS stream.
fn call(s: &mut impl ReadWrite, req: &Request) -> Result<Response, String> {
    let mut out = BytesMut::new();
    req.to_frame(7).encode(&mut out).expect("encode");
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = frame::decode(&mut buf).map_err(|e| e.to_string())? {
            return Response::from_frame(req.op(), &f).map_err(|e| e.to_string());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn every_refused_tls_caller_is_audited_and_counted_and_use_is_not_rotate() {
    let v = TlsVault::start(None);
    v.vault
        .ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let d = v.dir.path();
    // No certificate at all.
    assert!(raw_client(&v, None).is_err());
    // A certificate from another CA.
    let other = Ca::new(d, "other-ca");
    let (c, k) = other.client(d, "stranger", EDGE);
    assert!(raw_client(&v, Some((&c, &k))).is_err());
    // An expired one from the right CA.
    let uri = SanType::URI(EDGE.try_into().expect("uri"));
    let (c, k) = v.clients.issue(d, "old", uri, true, true);
    assert!(raw_client(&v, Some((&c, &k))).is_err());
    // A valid one no grant names.
    let (c, k) = v
        .clients
        .client(d, "nobody", "spiffe://example/batch/job-1");
    // Past the handshake, it is told why before the connection closes.
    let Err(told) = raw_client(&v, Some((&c, &k))) else {
        panic!("a certificate no grant names was served");
    };
    assert!(
        told.contains("Denied")
            && told.contains("no grant names cert:spiffe://example/batch/job-1"),
        "{told}"
    );

    for reason in ["no-certificate", "unknown-ca", "expired", "no-grant"] {
        let label = format!("reason=\"{reason}\"");
        wait_for(
            &format!("the {reason} refusal counted"),
            Duration::from_secs(5),
            || (v.metric("vaultgate_vault_tls_refused_total", &[&label]) == 1.0).then_some(()),
        );
    }
    let audit = wait_for("four refusals audited", Duration::from_secs(5), || {
        let a = v.vault.audit_log();
        (a.matches("\"op\":\"connection-refused\"").count() >= 4).then_some(a)
    });
    for why in [
        "presented no client certificate",
        "not issued by client_ca",
        "has expired",
        "no grant names cert:spiffe://example/batch/job-1",
    ] {
        assert!(
            audit.lines().any(|l| l.contains("connection-refused")
                && l.contains(why)
                && l.contains("\"peer\":\"127.")),
            "no audited refusal saying {why:?}: {audit}"
        );
    }

    // The granted identity signs, and may not rotate (use only).
    let (c, k) = v.clients.client(d, "edge", EDGE);
    let mut s = raw_client(&v, Some((&c, &k))).expect("granted identity served");
    let signed = call(
        &mut s,
        &Request::Sign {
            key: "web".into(),
            version: None,
            scheme: vaultgate::protocol::scheme::ECDSA_P256_SHA256,
            message: b"m".to_vec(),
        },
    );
    assert!(
        matches!(signed, Ok(Response::Signature { .. })),
        "{signed:?}"
    );
    let rotated = call(&mut s, &Request::Rotate { key: "web".into() });
    match rotated {
        Ok(Response::Error { code, message }) => {
            assert_eq!(code, ErrorCode::Denied);
            assert!(message.contains(&format!("cert:{EDGE}")), "{message}");
        }
        other => panic!("rotate over TLS with a use grant: {other:?}"),
    }
    let audit = wait_for("the refused rotate audited", Duration::from_secs(5), || {
        let a = v.vault.audit_log();
        a.lines()
            .any(|l| {
                l.contains("\"op\":\"rotate\"")
                    && l.contains("\"result\":\"denied\"")
                    && l.contains(EDGE)
            })
            .then_some(a)
    });
    assert!(!audit.is_empty());
}

#[test]
fn a_client_identity_issued_by_a_vault_held_ca_signs_and_use_cannot_mint_one() {
    // The fleet's CA is a vault key; the vault that holds it trusts it.
    let mut first = VaultProc::start();
    first.ok(&["key", "create", "clients-ca", "--type", "ecdsa-p256"]);
    first.ok(&[
        "cert",
        "issue",
        "clients-ca",
        "--is-ca",
        "--common-name",
        "fleet",
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let ca_pem = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_pem, first.ok(&["cert", "show", "clients-ca"])).expect("write CA");
    let uri = "spiffe://example/proxy/edge-2";
    let out_dir = dir.path().to_str().expect("utf-8");
    let printed = first.ok(&[
        "cert",
        "issue-client",
        "edge-2",
        "--ca",
        "clients-ca",
        "--uri",
        uri,
        "--out-dir",
        out_dir,
    ]);
    let (key, cert) = (dir.path().join("edge-2.key"), dir.path().join("edge-2.pem"));
    assert_eq!(
        printed,
        format!(
            "key {}\ncertificate {}\nidentity cert:{uri}\n",
            key.display(),
            cert.display()
        )
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "client key mode {mode:o}");
    // An outside verifier agrees it is a client certificate of that CA.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&ca_pem)
        .arg(&cert)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stdout) + String::from_utf8_lossy(&verify.stderr)
    );
    first.stop();

    let v = TlsVault::start_trusting(Some(&first.state), Some(&ca_pem));
    v.vault
        .ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let mut s = raw_client(&v, Some((&cert, &key))).expect("issued identity served");
    // A use grant may not have the CA sign, however it asks.
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"))
        .and_then(|r| r.pem())
        .expect("csr");
    let minted = call(
        &mut s,
        &Request::CertSign {
            key: "clients-ca".into(),
            version: None,
            params: serde_json::json!({"csr": csr, "uris": ["spiffe://example/admin"]}).to_string(),
        },
    );
    match minted {
        Ok(Response::Error { code, .. }) => assert_eq!(code, ErrorCode::Denied),
        other => panic!("cert-sign with a use grant: {other:?}"),
    }
    let signed = call(
        &mut s,
        &Request::Sign {
            key: "web".into(),
            version: None,
            scheme: vaultgate::protocol::scheme::ECDSA_P256_SHA256,
            message: b"m".to_vec(),
        },
    );
    assert!(
        matches!(signed, Ok(Response::Signature { .. })),
        "{signed:?}"
    );
    let audit = wait_for(
        "the issued identity's signature audited",
        Duration::from_secs(5),
        || {
            let a = v.vault.audit_log();
            a.lines()
                .any(|l| {
                    l.contains("\"op\":\"sign\"") && l.contains(&format!("\"identity\":\"{uri}\""))
                })
                .then_some(a)
        },
    );
    assert!(audit.contains("\"op\":\"cert-sign\""), "{audit}");
}

#[test]
fn a_killed_or_frozen_tls_vault_costs_no_handshake_with_a_unix_vault_beside_it() {
    // Vault A over TLS and vault B on its Unix socket, B's state a copy
    // of A's: the same key, so either signs for the certificate.
    let mut a = TlsVault::start(None);
    let site = crate::common::proxy::TestCa::new(a.dir.path());
    let cert = a.dir.path().join("web.pem");
    site.vault_cert(&a.vault, "web", "ecdsa-p256", &["localhost"], &cert);
    a.vault.stop();
    let copy = a.dir.path().join("state-b");
    let status = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&a.vault.state)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    a.vault.restart();
    let b = VaultProc::start_with(Opts {
        state_dir: Some(copy),
        metrics: true,
        ..Opts::default()
    });
    let vaults = format!("\"tls://{}\", \"unix:{}\"", a.addr, b.socket.display());
    // sign_timeout before [proxy.vault_tls], still in [proxy].
    let (p, _backend) = proxy(
        a.dir.path(),
        &cert,
        &("sign_timeout = \"400ms\"\n".to_owned() + &a.proxy_vault_config(&vaults)),
    );
    let load = Load::start(&p, &site.pem_path);
    let served = |n| load.served(n);
    let a_signed = || {
        a.metric(
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"ok\""],
        )
    };
    // The TLS vault is first and its round trip alike (ranked in 1 ms
    // steps), so it signs; on a loaded machine its measured round trip
    // can lag the Unix socket's a while, so wait for it to be in use.
    served(10);
    wait_for(
        "the TLS vault (first, alike round trip) signing",
        Duration::from_secs(30),
        || (a_signed() >= 5.0).then_some(()),
    );

    // Frozen: it keeps its connections and answers nothing.
    let pid = nix::unistd::Pid::from_raw(a.vault.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let frozen = Instant::now();
    served(20);
    let took = frozen.elapsed();
    let proxy_metric = |name| metric(&p.metrics_text(), name, &[]);
    let resent = proxy_metric("vaultgate_proxy_vault_resent_total");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let unhealthy = proxy_metric("vaultgate_proxy_vault_unhealthy_total");
    assert!(
        unhealthy >= 1.0,
        "the frozen vault was not marked unhealthy"
    );
    // Only the signatures in flight when it froze (one per client, and a
    // ping) waited for it: the rest went straight to B.
    assert!(
        resent <= 4.0,
        "{resent} signatures waited on the frozen vault"
    );
    eprintln!("20 handshakes with vault A frozen took {took:?}");
    served(10);

    // Killed: its connections close, B takes over.
    a.vault.kill9();
    served(20);
    let (total, failed) = load.finish();
    eprintln!(
        "mixed failover: {total} handshakes, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");
}

/// Curl load on a proxy serving `localhost`: full handshakes back to
/// back from three clients until finished; counts what was served and
/// keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(p: &ProxyProc, ca: &Path) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let workers = (0..3)
            .map(|_| {
                let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
                let ca = ca.to_owned();
                let (port, ip) = (p.addr.port(), p.addr.ip());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let resolve = format!("localhost:{port}:{ip}");
                        let url = format!("https://localhost:{port}/");
                        let out = crate::common::proxy::curl(&[
                            "-sS",
                            "--max-time",
                            "5",
                            "--cacert",
                            ca.to_str().unwrap_or(""),
                            "--resolve",
                            &resolve,
                            &url,
                        ]);
                        if out.status.success() {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(String::from_utf8_lossy(&out.stderr).into_owned());
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            workers,
        }
    }

    /// Waits until `n` more handshakes have been served.
    fn served(&self, n: usize) {
        let from = self.done.load(Ordering::Relaxed);
        wait_for("handshakes served", Duration::from_secs(20), || {
            (self.done.load(Ordering::Relaxed) >= from + n).then_some(())
        });
    }

    /// Stops the clients: how many were served, and each failure.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
        let failed = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.done.load(Ordering::Relaxed), failed)
    }
}

/// A TCP relay standing for the network between a proxy and a vault.
/// `cut` holds every byte in flight, and every new connection, as a
/// partitioned link does, closing nothing; `restore` lets them through,
/// late, as TCP's retransmissions would once the link is back.
struct Relay {
    addr: SocketAddr,
    link: Arc<Link>,
}

#[derive(Default)]
struct Link {
    cut: Mutex<bool>,
    changed: Condvar,
    closed: AtomicBool,
}

impl Link {
    fn wait_open(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        while *cut {
            cut = self.changed.wait(cut).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set(&self, cut: bool) {
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = cut;
        self.changed.notify_all();
    }
}

impl Relay {
    /// Listens on a free port of `ip` and relays to `to`.
    fn start(ip: &str, to: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let link = Arc::new(Link::default());
        let l = link.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                if l.closed.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = down else { continue };
                let l = l.clone();
                std::thread::spawn(move || {
                    l.wait_open();
                    let Ok(up) = TcpStream::connect(to) else {
                        return;
                    };
                    let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                        return;
                    };
                    let l2 = l.clone();
                    std::thread::spawn(move || pump(down2, up2, &l2));
                    pump(up, down, &l);
                });
            }
        });
        Relay { addr, link }
    }

    fn cut(&self) {
        self.link.set(true);
    }

    fn restore(&self) {
        self.link.set(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.link.closed.store(true, Ordering::Relaxed);
        self.restore();
        // Wakes the accept loop to see it is closed.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, each chunk held while the link is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, link: &Link) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                link.wait_open();
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn the_link_to_the_nearest_vault_cut_costs_no_handshake_and_traffic_returns_with_it() {
    // Vaults A and B over TLS, each behind a relay: alike round trips,
    // so A (first) signs while its link is up.
    let mut a = TlsVault::start(None);
    let site = crate::common::proxy::TestCa::new(a.dir.path());
    let cert = a.dir.path().join("web.pem");
    site.vault_cert(&a.vault, "web", "ecdsa-p256", &["localhost"], &cert);
    let (b, b_addr) = a.sibling("127.0.0.12");
    let (ra, rb) = (
        Relay::start("127.0.0.11", a.addr),
        Relay::start("127.0.0.12", b_addr),
    );
    let vaults = format!("\"tls://{}\", \"tls://{}\"", ra.addr, rb.addr);
    let (p, _backend) = proxy(
        a.dir.path(),
        &cert,
        &("sign_timeout = \"400ms\"\n".to_owned() + &a.proxy_vault_config(&vaults)),
    );
    let signed = |v: &VaultProc| {
        vault_metric(
            v,
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"ok\""],
        )
    };
    let load = Load::start(&p, &site.pem_path);
    load.served(10);
    wait_for("vault A signing", Duration::from_secs(30), || {
        (signed(&a.vault) >= 5.0).then_some(())
    });

    // The link to A cut mid-load: B takes the handshakes.
    ra.cut();
    let b_before = signed(&b);
    load.served(20);
    wait_for(
        "vault B signing while A is cut off",
        Duration::from_secs(30),
        || (signed(&b) >= b_before + 10.0).then_some(()),
    );
    let unhealthy = metric(
        &p.metrics_text(),
        "vaultgate_proxy_vault_unhealthy_total",
        &[],
    );
    assert!(
        unhealthy >= 1.0,
        "the cut-off vault was not marked unhealthy"
    );

    // The link back: A answers its pings again and, first among alike
    // round trips, signs again.
    ra.restore();
    let a_before = signed(&a.vault);
    wait_for("vault A signing again", Duration::from_secs(30), || {
        (signed(&a.vault) >= a_before + 10.0).then_some(())
    });
    load.served(10);
    let (total, failed) = load.finish();
    eprintln!(
        "link cut and restored: {total} handshakes, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");
    drop(rb);
}
