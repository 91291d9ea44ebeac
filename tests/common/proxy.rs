//! A real `vaultgate proxy` (or `run`) process, a test CA that issues
//! certificates for vault-held and file keys, and TLS clients (curl, and
//! rustls for what curl cannot show: handshake kind, RSA-only offers).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use vaultgate::signer::{PoolOptions, VaultPool};

use super::vault::VaultProc;
use super::{bin, require_tool};

/// A running proxy. Its stderr (logs, access log) goes to `log_path`.
pub struct ProxyProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub log_path: PathBuf,
    /// Lines printed before `listen`.
    pub early: Vec<String>,
    /// Lines printed after it.
    pub stdout: mpsc::Receiver<String>,
}

impl ProxyProc {
    /// Writes `config` to `dir/proxy.toml` and starts `vaultgate proxy`;
    /// returns once it prints the address it listens on.
    pub fn start(dir: &Path, config: &str) -> ProxyProc {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("write proxy config");
        ProxyProc::spawn(dir, &["proxy", "--config", &path.display().to_string()])
    }

    /// Starts `vaultgate ARGS` and waits for its `listen ADDR` line.
    pub fn spawn(dir: &Path, args: &[&str]) -> ProxyProc {
        ProxyProc::try_spawn(dir, args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_spawn(dir: &Path, args: &[&str]) -> Result<ProxyProc, String> {
        ProxyProc::try_spawn_env(dir, args, &[])
    }

    /// Writes `config` as [`ProxyProc::start`] does and starts the proxy
    /// with these environment changes (`None`: unset) over the usual ones.
    pub fn start_env(dir: &Path, config: &str, env: &[(&str, Option<&str>)]) -> ProxyProc {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("write proxy config");
        let args = ["proxy", "--config", path.to_str().expect("utf-8")];
        ProxyProc::try_spawn_env(dir, &args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_spawn_env(
        dir: &Path,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Result<ProxyProc, String> {
        let log_path = dir.join(format!("{}.log", args[0]));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(dir)
            // VG_TEST_LOG: a finer filter when a test needs looking into
            // (e.g. "info,vaultgate::proxy::connection=debug").
            .env(
                "RUST_LOG",
                std::env::var("VG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1");
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn vaultgate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut metrics = None;
        let mut early = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    early.push(line.clone());
                    if let Some(a) = line.strip_prefix("metrics ") {
                        metrics = a.parse().ok();
                    }
                    if let Some(a) = line.strip_prefix("listen ") {
                        let addr = a.parse().expect("listen address");
                        return Ok(ProxyProc {
                            child,
                            addr,
                            metrics,
                            log_path,
                            early,
                            stdout: rx,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!(
                        "vaultgate {args:?} exited ({status}) before listening: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The pid of the vault `vaultgate run` started (its `vault pid N` line).
    pub fn vault_pid(&self) -> i32 {
        self.early
            .iter()
            .find_map(|l| {
                l.strip_prefix("vault pid ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("vault pid line")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    pub fn metrics_text(&self) -> String {
        super::vault::http_get(self.metrics.expect("proxy metrics listener"), "/metrics")
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA (its key in the test process: it is test scaffolding, not
/// the thing under test) issuing certificates for vault and file keys.
pub struct TestCa {
    pub ca: vaultgate::devca::DevCa,
    pub pem_path: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "vaultgate test CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("CA cert");
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write CA");
        TestCa {
            ca: vaultgate::devca::DevCa { cert, key },
            pem_path,
        }
    }

    /// Creates vault key `name` of `key_type` and writes a certificate for
    /// it to `out`.
    pub fn vault_cert(
        &self,
        vault: &VaultProc,
        name: &str,
        key_type: &str,
        names: &[&str],
        out: &Path,
    ) {
        vault.ok(&["key", "create", name, "--type", key_type]);
        let pool = pool(vault);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let pem =
            vaultgate::devca::issue_leaf(&self.ca, &pool, name, &names, Duration::from_secs(86400))
                .expect("issue");
        std::fs::write(out, pem).expect("write cert");
    }

    /// Generates a key in the test, writes it (PKCS#8 PEM) to `key_out`
    /// and a certificate for it to `cert_out`.
    pub fn file_cert(
        &self,
        alg: &'static rcgen::SignatureAlgorithm,
        names: &[&str],
        cert_out: &Path,
        key_out: &Path,
    ) -> KeyPair {
        let key = KeyPair::generate_for(alg).expect("key");
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        let cert = p
            .signed_by(&key, &self.ca.cert, &self.ca.key)
            .expect("sign");
        std::fs::write(cert_out, cert.pem()).expect("write cert");
        std::fs::write(key_out, key.serialize_pem()).expect("write key");
        key
    }
}

pub fn pool(vault: &VaultProc) -> VaultPool {
    let pool = VaultPool::start(PoolOptions {
        sockets: vec![vaultgate::signer::Endpoint::Unix(vault.socket.clone())],
        tls: None,
        connections_per_socket: 1,
        timeout: Duration::from_secs(10),
        plain_wait: Duration::from_millis(1),
    });
    assert!(
        pool.wait_connected(Duration::from_secs(10)),
        "connect to the vault"
    );
    pool
}

/// A `[proxy]` config with one certificate entry per `(names, cert, key)`
/// and one upstream `web` on `backends`; `extra` is appended (more
/// `[proxy]` keys must come before it — it is placed after `listen`).
pub fn config(
    vault_socket: &Path,
    certs: &[(&[&str], &Path, &str)],
    backends: &[SocketAddr],
    extra: &str,
    upstream_extra: &str,
) -> String {
    let mut s = format!(
        "[vault]\nsocket = \"{}\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n",
        vault_socket.display()
    );
    for (names, cert, key) in certs {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        s += &format!(
            "[[proxy.cert]]\nnames = [{}]\ncert = \"{}\"\nkey = \"{key}\"\n\n",
            names.join(", "),
            cert.display()
        );
    }
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    s += &format!(
        "[[proxy.route]]\nupstream = \"web\"\n\n[proxy.upstream.web]\nbackends = [{}]\n{upstream_extra}\n",
        backends.join(", ")
    );
    s
}

/// Runs curl (which must be installed) with `args`.
pub fn curl(args: &[&str]) -> Output {
    let curl = require_tool("curl", "curl");
    Command::new(curl).args(args).output().expect("run curl")
}

/// curl, asserting success; returns stdout.
pub fn curl_ok(args: &[&str]) -> Vec<u8> {
    let out = curl(args);
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A rustls client config trusting `ca`. With `rsa_only`, the client
/// offers only RSA signature schemes (an "RSA-only client").
pub fn client_config(ca: &Path, rsa_only: bool, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_versions(ca, rsa_only, alpn, rustls::DEFAULT_VERSIONS)
}

/// An HTTP/2 connection over TLS to the proxy at `addr` (`localhost`,
/// trusting `ca`), hyper's client, its connection task spawned. Call
/// inside a tokio runtime.
pub async fn h2_connect(
    addr: SocketAddr,
    ca: &Path,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let cfg = client_config(ca, false, &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// [`client_config`] offering only `versions`.
pub fn client_config_versions(
    ca: &Path,
    rsa_only: bool,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in vaultgate::pki::read_pem_certs(ca).expect("read CA") {
        roots.add(c).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Schemes {
            inner: webpki,
            rsa_only,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Full web PKI verification; only the offered schemes are narrowed.
#[derive(Debug)]
struct Schemes {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    rsa_only: bool,
}

impl ServerCertVerifier for Schemes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let all = self.inner.supported_verify_schemes();
        if self.rsa_only {
            all.into_iter()
                .filter(|s| format!("{s:?}").starts_with("RSA_"))
                .collect()
        } else {
            all
        }
    }
}

/// What one HTTP/1.1 request over a rustls connection showed.
pub struct Fetched {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    pub peer_cert: Vec<u8>,
}

/// `GET path` over HTTP/1.1 with `Connection: close`, using `cfg` (whose
/// session cache makes a second call resume).
pub fn https_get(
    addr: SocketAddr,
    server_name: &str,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> Fetched {
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client connection");
    let sock = std::net::TcpStream::connect(addr).expect("connect proxy");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Fetched {
        status,
        head,
        body,
        resumed: matches!(
            tls.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        ),
        version: tls.conn.protocol_version(),
        peer_cert: tls
            .conn
            .peer_certificates()
            .map(|c| c[0].to_vec())
            .unwrap_or_default(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The sum of the samples of metric `name` whose labels include every one
/// of `labels` (each written `key="value"`), from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|lab| rest.contains(lab))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}
