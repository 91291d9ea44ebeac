//! The proxy's HTTP/1.1 client to backends (`src/proxy/origin/`), against
//! scripted backends that misbehave on cue: keep-alive reuse, a
//! connection closed as a request arrives, early answers to uploads,
//! interim answers, close-delimited and doubly-framed bodies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::proxy::{client_config, curl, https_get, ProxyProc};
use crate::Setup;

/// A backend whose every connection runs `script` (given the connection's
/// number, from 0), each on its own thread.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(script: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || script(n, s));
            }
        });
        Scripted { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads one request head (and a Content-Length body); `None` at EOF.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return Some(head);
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers every request on the connection with `200` and `body`.
fn serve_all(s: &mut TcpStream, body: &str) {
    let mut buf = Vec::new();
    while read_request(s, &mut buf).is_some() {
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Connection 0 answers one request, then reads the next and closes
/// without answering: the backend's keep-alive timeout firing as the
/// request arrives. Later connections answer normally.
fn closes_as_the_second_request_arrives(n: usize, mut c: TcpStream) {
    if n == 0 {
        let mut buf = Vec::new();
        if read_request(&mut c, &mut buf).is_some() {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst");
        }
        let _ = read_request(&mut c, &mut buf);
    } else {
        serve_all(&mut c, "fresh");
    }
}

fn get(s: &Setup, p: &ProxyProc, path: &str) -> (u16, String) {
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(s.ca_path(), false, &[]),
        path,
    );
    (f.status, String::from_utf8_lossy(&f.body).into_owned())
}

#[test]
fn backend_connections_are_reused_across_requests_and_clients() {
    let s = Setup::start();
    let b = Scripted::start(|_, mut c| serve_all(&mut c, "ok"));
    let p = s.localhost_proxy(&[b.addr], "", "");
    for i in 0..20 {
        // A new client connection each time: the backend connection is
        // the proxy's, not the client's.
        assert_eq!(get(&s, &p, &format!("/r{i}")), (200, "ok".to_owned()));
    }
    assert_eq!(
        b.connections(),
        1,
        "one backend connection carries them all"
    );
}

#[test]
fn a_request_meeting_a_connection_the_backend_just_closed_is_resent_on_a_new_one() {
    let s = Setup::start();
    let b = Scripted::start(closes_as_the_second_request_arrives);
    let p = s.localhost_proxy(&[b.addr], "", "");
    assert_eq!(get(&s, &p, "/one"), (200, "first".to_owned()));
    assert_eq!(get(&s, &p, "/two"), (200, "fresh".to_owned()));
    assert_eq!(b.connections(), 2);
    assert!(
        !p.log().contains(" failed: "),
        "a resent request is not a backend failure:\n{}",
        p.log()
    );
}

#[test]
fn an_upload_is_not_resent_after_its_connection_closes_unanswered() {
    let s = Setup::start();
    let b = Scripted::start(closes_as_the_second_request_arrives);
    let p = s.localhost_proxy(&[b.addr], "", "");
    assert_eq!(get(&s, &p, "/one"), (200, "first".to_owned()));
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}/upload", p.addr.port());
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        s.ca_path().to_str().expect("utf-8"),
        "--resolve",
        &resolve,
        "--data-binary",
        "payload",
        &url,
    ]);
    // Its body was sent once and cannot be sent again: a 502, as nginx
    // gives for a POST without `non_idempotent`.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    assert_eq!(b.connections(), 1, "the upload was not sent again");
}

#[test]
fn an_answer_that_comes_before_the_upload_ends_reaches_the_client() {
    let s = Setup::start();
    // Reads the head only, refuses the upload and stops reading.
    let b = Scripted::start(|_, mut c| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let _ = c.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig\n");
        // Held open, unread, until the proxy lets go of it.
        let _ = c.read_to_end(&mut Vec::new());
    });
    let p = s.localhost_proxy(&[b.addr], "", "");
    let src = s.path("upload.bin");
    std::fs::write(&src, vec![b'x'; 16 * 1024 * 1024]).expect("write");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}/upload", p.addr.port());
    let data = format!("@{}", src.display());
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--http1.1",
        "--max-time",
        "20",
        "--cacert",
        s.ca_path().to_str().expect("utf-8"),
        "--resolve",
        &resolve,
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "413",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn interim_answers_are_dropped_and_a_body_delimited_by_close_arrives_whole() {
    let s = Setup::start();
    let b = Scripted::start(|_, mut c| {
        let mut buf = Vec::new();
        if read_request(&mut c, &mut buf).is_some() {
            let _ = c.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nX-Way: close\r\n\r\nuntil the end",
            );
        }
    });
    let p = s.localhost_proxy(&[b.addr], "", "");
    assert_eq!(get(&s, &p, "/a"), (200, "until the end".to_owned()));
    // That connection ended with its body; the next request needs another.
    assert_eq!(get(&s, &p, "/b"), (200, "until the end".to_owned()));
    assert_eq!(b.connections(), 2);
}

#[test]
fn doubly_framed_answers_are_read_as_chunked_and_their_connection_dropped() {
    let s = Setup::start();
    let b =
        Scripted::start(|n, mut c| {
            let mut buf = Vec::new();
            while read_request(&mut c, &mut buf).is_some() {
                let answer: &[u8] = match n {
                // Both framings: a smuggling attempt if read by length.
                0 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
                       5\r\nhello\r\n0\r\n\r\n",
                1 => b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
                if c.write_all(answer).is_err() {
                    return;
                }
            }
        });
    let p = s.localhost_proxy(&[b.addr], "", "");
    assert_eq!(get(&s, &p, "/a"), (200, "hello".to_owned()));
    // Not reused: the invalid length comes on a second connection, and is
    // a 502; the third connection serves.
    let (status, _) = get(&s, &p, "/b");
    assert_eq!(status, 502);
    assert_eq!(get(&s, &p, "/c"), (200, "ok".to_owned()));
    assert_eq!(b.connections(), 3);
}
