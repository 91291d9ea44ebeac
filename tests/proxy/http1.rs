//! The proxy's own HTTP/1.1 server side: pipelining, HTTP/1.0 keep-alive,
//! `Expect: 100-continue`, `Connection: close`, and the protocol chosen by
//! ALPN. Written byte for byte over TLS against the recording backend.

use std::io::Write;
use std::time::Duration;

use crate::common::raw::{h1_statuses, read_until_quiet, tls_connect, Recorder, Tls, PREFACE};
use crate::Setup;

const QUIET: Duration = Duration::from_millis(400);
const LIMIT: Duration = Duration::from_secs(5);

fn send(t: &mut Tls, raw: &[u8]) -> (Vec<u16>, bool, String) {
    let _ = t.write_all(raw);
    let _ = t.flush();
    let (resp, closed) = read_until_quiet(t, QUIET, LIMIT);
    let text = String::from_utf8_lossy(&resp).into_owned();
    (h1_statuses(&resp), closed, text)
}

#[test]
fn http1_requests_are_answered_in_order_with_the_connection_kept_as_asked() {
    let s = Setup::start();
    let rec = Recorder::start();
    let p = s.localhost_proxy(&[rec.addr], "", "");
    let h11: &[&[u8]] = &[b"http/1.1"];

    // Three requests in one write: three answers, in order, one connection.
    let mut t = tls_connect(p.addr, s.ca_path(), h11);
    let pipelined = "GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
                     POST /p2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc\
                     POST /p3 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n";
    let (statuses, closed, text) = send(&mut t, pipelined.as_bytes());
    assert_eq!(statuses, [200, 200, 200], "{text}");
    assert!(!closed, "{text}");
    let seen: Vec<_> = rec
        .requests()
        .iter()
        .map(|r| r.request_line().to_owned())
        .collect();
    let order: Vec<_> = ["/p1", "/p2", "/p3"]
        .iter()
        .map(|p| seen.iter().position(|l| l.contains(&format!("{p} "))))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0].is_some() && w[0] < w[1]),
        "{seen:?}"
    );
    assert_eq!(rec.wait_request("/p2", LIMIT).body, b"abc");
    assert_eq!(rec.wait_request("/p3", LIMIT).body, b"de");
    // The same connection still serves; Connection: close then ends it.
    let (statuses, closed, text) = send(
        &mut t,
        b"GET /last HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses, [200], "{text}");
    assert!(closed, "Connection: close left it open: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // HTTP/1.0: closed after the answer unless keep-alive is asked for.
    let mut t = tls_connect(p.addr, s.ca_path(), h11);
    let (statuses, closed, text) = send(&mut t, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!((statuses, closed), (vec![200], true), "{text}");
    let mut t = tls_connect(p.addr, s.ca_path(), h11);
    let ka = b"GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let (statuses, closed, text) = send(&mut t, ka);
    assert_eq!((statuses, closed), (vec![200], false), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: keep-alive"),
        "{text}"
    );
    let (statuses, _, text) = send(&mut t, ka);
    assert_eq!(statuses, [200], "second HTTP/1.0 request: {text}");

    // Expect: 100-continue: the go-ahead, then the answer; the body arrives.
    let mut t = tls_connect(p.addr, s.ca_path(), h11);
    let head = b"PUT /cont HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let (statuses, _, text) = send(&mut t, head);
    assert_eq!(statuses, [100], "{text}");
    let (statuses, closed, text) = send(&mut t, b"hello");
    assert_eq!((statuses, closed), (vec![200], false), "{text}");
    assert_eq!(rec.wait_request("/cont", LIMIT).body, b"hello");
}

#[test]
fn the_http2_preface_without_alpn_h2_gets_400_as_from_nginx() {
    let s = Setup::start();
    let rec = Recorder::start();
    let p = s.localhost_proxy(&[rec.addr], "", "");
    // With no protocol named (prior knowledge over TLS) and with http/1.1
    // agreed: nginx answers both with 400 (it takes HTTP/2 without ALPN
    // on cleartext ports only).
    for alpn in [&[][..], &[&b"http/1.1"[..]][..]] {
        let mut t = tls_connect(p.addr, s.ca_path(), alpn);
        let mut raw = PREFACE.to_vec();
        raw.extend_from_slice(b"GET /after-preface HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let (statuses, closed, text) = send(&mut t, &raw);
        assert_eq!(
            (statuses, closed),
            (vec![400], true),
            "ALPN {alpn:?}: {text}"
        );
    }
    assert!(!rec.received("/after-preface"));
}
