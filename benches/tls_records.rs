//! TLS record encryption and decryption, in memory: the proxy's bulk
//! crypto per cipher suite, for a 1 KiB response (one small record, where
//! per-record overhead shows) and a 64 KiB one (full 16 KiB records,
//! where the cipher's speed shows). Each iteration is the server sealing
//! the bytes and the client opening them, as on a download.
//!
//! `cargo bench --bench tls_records`

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rcgen::{CertificateParams, KeyPair};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, Connection, ServerConnection, SupportedCipherSuite};

/// A connected client/server pair that negotiated `suite` (TLS 1.3).
fn pair(suite: SupportedCipherSuite) -> (Connection, Connection) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = CertificateParams::new(vec!["bench.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("bench.test").expect("name");
    let mut c = Connection::from(ClientConnection::new(Arc::new(client), name).expect("client"));
    let mut s = Connection::from(ServerConnection::new(Arc::new(server)).expect("server"));
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        move_tls(&mut c, &mut s, &mut buf);
        move_tls(&mut s, &mut c, &mut buf);
    }
    // The server's session tickets, so they are not counted below.
    move_tls(&mut s, &mut c, &mut buf);
    (c, s)
}

/// Moves everything `from` has to send into `to` and processes it.
fn move_tls(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    let mut rest = buf.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls");
        to.process_new_packets().expect("process");
    }
}

fn benches(c: &mut Criterion) {
    let suites = [
        ("aes-128-gcm", cipher_suite::TLS13_AES_128_GCM_SHA256),
        ("aes-256-gcm", cipher_suite::TLS13_AES_256_GCM_SHA384),
        (
            "chacha20-poly1305",
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for size in [1024usize, 64 * 1024] {
        let mut g = c.benchmark_group(format!("records/{}k", size / 1024));
        g.throughput(Throughput::Bytes(size as u64));
        let payload = vec![0x5au8; size];
        for (name, suite) in suites {
            let (mut client, mut server) = pair(suite);
            let mut wire = Vec::with_capacity(size + 1024);
            let mut plain = vec![0u8; size];
            g.bench_function(name, |b| {
                b.iter(|| {
                    // 16 KiB at a time: a TLS record's worth, and all the
                    // plaintext rustls holds for its reader by default.
                    for (out, back) in payload.chunks(16384).zip(plain.chunks_mut(16384)) {
                        server.writer().write_all(out).expect("seal");
                        move_tls(&mut server, &mut client, &mut wire);
                        client.reader().read_exact(back).expect("open");
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(tls, benches);
criterion_main!(tls);
