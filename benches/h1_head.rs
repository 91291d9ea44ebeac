//! The HTTP/1.1 driver's hot pieces: parsing and checking a request head
//! (as wrk and curl send them), and decoding a chunked body.
//!
//! Run: `cargo bench --bench h1_head`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vaultgate::proxy::h1::framing::{Decoded, Decoder};
use vaultgate::proxy::h1::head::{self, Framing};

const WRK: &str = "GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n";
const BROWSER: &str = "GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.test\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\nAccept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n\
Referer: https://www.example.test/\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n\
Connection: keep-alive\r\nSec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\n\r\n";

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("h1-head");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in [("wrk", WRK), ("browser", BROWSER)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(raw);
                let h = head::parse(&mut buf, 64 * 1024)
                    .expect("valid")
                    .expect("whole");
                assert_eq!(h.framing, Framing::Empty);
                h
            })
        });
    }
    g.finish();
}

fn chunked(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..64 {
        wire.extend_from_slice(b"400\r\n");
        wire.extend_from_slice(&[b'x'; 1024]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("h1-body");
    g.throughput(Throughput::Bytes(64 * 1024));
    g.bench_function("chunked-64x1k", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let mut d = Decoder::new(Framing::Chunked);
            let mut n = 0;
            while let Ok(Decoded::Data(piece)) = d.decode(&mut buf) {
                n += piece.len();
            }
            assert_eq!(n, 64 * 1024);
        })
    });
    g.finish();
}

criterion_group!(benches, heads, chunked);
criterion_main!(benches);
