//! The HTTP/1.1 hot pieces, both sides: parsing and checking a request
//! head (as wrk and curl send them), decoding a chunked body, and towards
//! the backend, encoding the forwarded request head and parsing the
//! answer's head (as nginx sends it).
//!
//! Run: `cargo bench --bench h1_head`.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vaultgate::internals::head;
use vaultgate::internals::{response, Outgoing};
use vaultgate::internals::{Decoded, Decoder, Framing};

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

const NGINX_ANSWER: &str = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Sun, 29 Nov 2026 19:00:00 GMT\r\nContent-Type: application/octet-stream\r\n\
Content-Length: 1024\r\nLast-Modified: Sun, 29 Nov 2026 18:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6566a1e0-400\"\r\nAccept-Ranges: bytes\r\n\r\n";

fn origin(c: &mut Criterion) {
    use http::header::{HeaderMap, HeaderValue, HOST};
    let mut g = c.benchmark_group("origin");
    g.throughput(Throughput::Elements(1));
    let mut headers = HeaderMap::new();
    headers.insert(HOST, HeaderValue::from_static("localhost:8443"));
    headers.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    g.bench_function("request-head", |b| {
        b.iter(|| Outgoing::new(&http::Method::GET, "/1k", &headers, None, false).head)
    });
    g.bench_function("answer-head", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(NGINX_ANSWER);
            let h = response::parse(&mut buf).expect("valid").expect("whole");
            assert_eq!(h.headers.len(), 8);
            h
        })
    });
    g.finish();
}

criterion_group!(benches, heads, chunked, origin);
criterion_main!(benches);
