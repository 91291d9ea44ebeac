//! Full TLS 1.3 handshakes (no resumption), in memory, with the server key
//! in process versus in a real vault process: the per-handshake price of
//! isolation. Also the raw vault signature round trip through the
//! proxy's signer pool.
//!
//! `cargo bench --bench proxy_handshake`

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, SignatureScheme};
use vaultgate::protocol::{KeyType, Request};
use vaultgate::signer::{PoolOptions, VaultKey, VaultPool};

mod support;

use support::start_vault;

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) {
    handshake_server_cpu(client, server, false);
}

/// This thread's CPU time so far (getrusage and /proc count whole clock
/// ticks here; this clock is exact).
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// One handshake; with `measure`, the CPU time of the server's side alone
/// (on this shared machine CPU time is steadier than the wall clock).
fn handshake_server_cpu(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
    measure: bool,
) -> Duration {
    let mut spent = Duration::ZERO;
    let timed = |spent: &mut Duration, f: &mut dyn FnMut()| {
        if measure {
            let t0 = thread_cpu();
            f();
            *spent += thread_cpu().saturating_sub(t0);
        } else {
            f();
        }
    };
    let name = ServerName::try_from("bench.test").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = None;
    timed(&mut spent, &mut || {
        s = Some(ServerConnection::new(server.clone()).expect("server"))
    });
    let mut s = s.expect("server");
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() {
            timed(&mut spent, &mut || {
                s.read_tls(&mut buf.as_slice()).expect("server read");
                s.process_new_packets().expect("server process");
            });
        }
        buf.clear();
        timed(&mut spent, &mut || {
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server write");
            }
        });
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).expect("client read");
            c.process_new_packets().expect("client process");
        }
    }
    spent
}

/// A server with the proxy's crypto provider (its suite order decides).
fn server_with(cert: CertificateDer<'static>, key: Arc<dyn SigningKey>) -> Arc<ServerConfig> {
    server_with_provider(cert, key, vaultgate::internals::provider())
}

fn server_with_provider(
    cert: CertificateDer<'static>,
    key: Arc<dyn SigningKey>,
    provider: rustls::crypto::CryptoProvider,
) -> Arc<ServerConfig> {
    let ck = CertifiedKey::new(vec![cert], key);
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(ck)));
    cfg.send_tls13_tickets = 0;
    cfg.ignore_client_order = true;
    Arc::new(cfg)
}

fn benches(c: &mut Criterion) {
    let vault = start_vault();
    let pool = VaultPool::start(PoolOptions {
        sockets: vec![vaultgate::signer::Endpoint::Unix(vault.socket.clone())],
        tls: None,
        connections_per_socket: 2,
        timeout: Duration::from_secs(1),
        plain_wait: Duration::from_micros(100),
    });
    assert!(pool.wait_connected(Duration::from_secs(5)));
    vaultgate::devca::ensure_key(&pool, "bench", KeyType::EcdsaP256).expect("create key");
    let remote = VaultKey::load(&pool, "bench", None, "-").expect("vault key");

    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = vaultgate::devca::DevCa {
        cert: ca_params.self_signed(&ca_key).expect("ca"),
        key: ca_key,
    };
    let pem = vaultgate::devca::issue_leaf(
        &ca,
        &pool,
        "bench",
        &["bench.test".into()],
        Duration::from_secs(3600),
    )
    .expect("leaf");
    let vault_cert = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("one cert")
        .expect("pem");

    let local_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let local_cert = CertificateParams::new(vec!["bench.test".to_owned()])
        .expect("params")
        .signed_by(&local_key, &ca.cert, &ca.key)
        .expect("local cert")
        .der()
        .clone();
    let local_signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        PrivatePkcs8KeyDer::from(local_key.serialize_der()),
    ))
    .expect("local key");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let mut client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);

    // The provider's own order: AES-256-GCM with SHA-384 first.
    let provider_order = server_with_provider(
        local_cert.clone(),
        local_signer.clone(),
        rustls::crypto::aws_lc_rs::default_provider(),
    );
    let in_process = server_with(local_cert, local_signer);
    let in_vault = server_with(vault_cert, Arc::new(remote.clone()));
    // The server's CPU time per handshake, by suite order: ours (AES-128-GCM
    // with SHA-256 first) against the provider's (AES-256-GCM with SHA-384 first).
    let mut g = c.benchmark_group("tls13_full_handshake_ecdsa_p256_server_cpu");
    let server_cpu = |server: &Arc<ServerConfig>, iters: u64| {
        (0..iters)
            .map(|_| handshake_server_cpu(&client, server, true))
            .sum::<Duration>()
    };
    g.bench_function("aes128_sha256", |b| {
        b.iter_custom(|iters| server_cpu(&in_process, iters))
    });
    g.bench_function("aes256_sha384", |b| {
        b.iter_custom(|iters| server_cpu(&provider_order, iters))
    });
    g.finish();

    let mut g = c.benchmark_group("tls13_full_handshake_ecdsa_p256");
    g.bench_function("key_in_process", |b| {
        b.iter(|| handshake(&client, &in_process))
    });
    g.bench_function("key_in_vault", |b| b.iter(|| handshake(&client, &in_vault)));
    g.finish();

    let msg = vec![7u8; 130];
    c.bench_function("vault_sign_round_trip_ecdsa_p256", |b| {
        b.iter(|| {
            remote
                .sign_blocking(SignatureScheme::ECDSA_NISTP256_SHA256, &msg)
                .expect("sign")
        })
    });
    let ping = Request::Ping {
        payload: vec![0; 16],
    };
    c.bench_function("vault_ping_round_trip", |b| {
        b.iter(|| pool.call(&ping).expect("ping"))
    });
    // The same ping on a bare socket in the calling thread: what the
    // pool's reader/writer threads add is the difference.
    let mut raw = std::os::unix::net::UnixStream::connect(&vault.socket).expect("connect");
    let mut wire = bytes::BytesMut::new();
    ping.to_frame(1).encode(&mut wire).expect("encode");
    let expect = wire.len();
    let mut answer = vec![0u8; 4096];
    c.bench_function("vault_ping_round_trip_bare_socket", |b| {
        b.iter(|| {
            use std::io::{Read, Write};
            raw.write_all(&wire).expect("write");
            let mut got = 0;
            // A Pong carries the same payload back: same frame size.
            while got < expect {
                got += raw.read(&mut answer[got..]).expect("read");
            }
        })
    });
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
