//! The vault's hot pieces, one at a time: protocol encode/decode of a sign
//! request and its answer, an audit record, an envelope encryption.
//!
//! Run: `cargo bench --bench vault_hot`.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vaultgate::internals::Caller;
use vaultgate::internals::Material;
use vaultgate::internals::{Audit, AuditOptions, Event};
use vaultgate::protocol::{frame, scheme, Op, Request, Response};

fn protocol(c: &mut Criterion) {
    let req = Request::Sign {
        key: "default".into(),
        version: Some(3),
        scheme: scheme::ECDSA_P256_SHA256,
        message: vec![0x20; 130],
    };
    let mut wire = BytesMut::new();
    req.to_frame(7).encode(&mut wire).expect("encode");
    let wire = wire.freeze();
    let resp = Response::Signature {
        version: 3,
        signature: vec![0x30; 71],
    };
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign-request-encode", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(256);
            req.to_frame(7).encode(&mut out).expect("encode");
            out
        })
    });
    g.bench_function("sign-request-decode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let f = frame::decode(&mut buf).expect("frame").expect("whole");
            Request::from_frame(&f).expect("request")
        })
    });
    g.bench_function("signature-answer-round-trip", |b| {
        b.iter(|| {
            let f = resp.to_frame(Op::Sign, 7);
            Response::from_frame(Op::Sign, &f).expect("response")
        })
    });
    g.finish();
}

fn audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let audit = Audit::open(dir.path(), key, &AuditOptions::default()).expect("audit");
    let caller = Caller::new(33, 33, Some(1234));
    let mut g = c.benchmark_group("audit");
    let batch = 20_000u64;
    g.throughput(Throughput::Elements(batch));
    // Records queued and written (JSON line, HMAC chain, fdatasync per
    // group); per element = per signature's record. Timed in CPU seconds
    // of the whole process (queueing thread + writer thread), not wall
    // time, because that is what a record takes from the signing path.
    g.bench_function("sign-record-cpu", |b| {
        b.iter_custom(|iters| {
            let t0 = process_cpu();
            for _ in 0..iters {
                for _ in 0..batch {
                    audit.record(Event {
                        caller: Some(caller.clone()),
                        op: "sign",
                        key: Some("default".into()),
                        version: Some(3),
                        result: "ok",
                        ..Event::default()
                    });
                }
                audit.flush();
            }
            std::time::Duration::from_secs_f64(process_cpu() - t0)
        })
    });
    g.finish();
}

/// User + system CPU seconds of this process, all threads.
fn process_cpu() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    r.map(|u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
    .unwrap_or(0.0)
}

fn envelope(c: &mut Criterion) {
    let m = Material::generate(vaultgate::protocol::KeyType::Aes256).expect("aes key");
    let plain = vec![7u8; 4096];
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("aes-256-gcm-seal-4k", |b| {
        b.iter(|| m.seal(b"ctx", &plain).expect("seal"))
    });
    g.finish();
}

criterion_group! {
    name = hot;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = protocol, audit, envelope
}
criterion_main!(hot);
