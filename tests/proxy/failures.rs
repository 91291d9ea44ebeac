//! Backends failing and the proxy stopping: ejection and return, 504 on
//! a backend that hangs, graceful shutdown that finishes what it started.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::backends::{Nginx, Silent};
use crate::common::proxy::{curl_ok, ProxyProc};
use crate::common::{require_tool, wait_for};
use crate::Setup;

struct Client {
    ca: String,
    resolve: String,
    base: String,
}

impl Client {
    fn new(s: &Setup, p: &ProxyProc) -> Client {
        Client {
            ca: s.ca_path().display().to_string(),
            resolve: format!("localhost:{}:127.0.0.1", p.addr.port()),
            base: format!("https://localhost:{}", p.addr.port()),
        }
    }

    /// (status, body) of GET `path`.
    fn get(&self, path: &str) -> (String, String) {
        let u = format!("{}{path}", self.base);
        let out = curl_ok(&[
            "-sS",
            "--cacert",
            &self.ca,
            "--resolve",
            &self.resolve,
            "-w",
            "\n%{http_code}",
            &u,
        ]);
        let text = String::from_utf8_lossy(&out).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.trim_end().to_owned())
    }
}

#[test]
fn a_killed_backend_is_ejected_and_returns_when_restarted() {
    let s = Setup::start();
    let mut n1 = Nginx::start("n1");
    let n2 = Nginx::start("n2");
    let p = s.localhost_proxy(&[n1.addr, n2.addr], "", "[proxy.upstream.web.health]\npath = \"/whoami\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy = 2\nunhealthy = 1\n");
    let c = Client::new(&s, &p);
    let seen: Vec<String> = (0..6).map(|_| c.get("/whoami").1).collect();
    assert!(
        seen.contains(&"n1".to_owned()) && seen.contains(&"n2".to_owned()),
        "round robin: {seen:?}"
    );

    n1.stop();
    // No request fails: a refused connection is retried on the other
    // backend and ejects the dead one at once.
    for i in 0..10 {
        assert_eq!(
            c.get("/whoami"),
            ("200".to_owned(), "n2".to_owned()),
            "request {i} after n1 died"
        );
    }
    n1.restart();
    wait_for("n1 to be healthy again", Duration::from_secs(10), || {
        (c.get("/whoami").1 == "n1").then_some(())
    });
    let log = p.log();
    // Whichever saw it first, a request (passive) or the health check.
    let out = log.contains("backend ejected") || log.contains("backend unhealthy");
    assert!(out && log.contains("backend healthy again"), "{log}");
}

#[test]
fn a_backend_that_does_not_answer_in_time_gets_504() {
    let s = Setup::start();
    let silent = Silent::start();
    let p = s.localhost_proxy(&[silent.addr], "", "response_timeout = \"300ms\"\n");
    let c = Client::new(&s, &p);
    let start = Instant::now();
    assert_eq!(
        c.get("/"),
        ("504".to_owned(), "504 Gateway Timeout".to_owned())
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        p.log().contains("did not answer within 300ms"),
        "{}",
        p.log()
    );
}

#[test]
fn graceful_shutdown_completes_in_flight_requests() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let data: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(nginx.www().join("big.bin"), &data).expect("write");
    let mut p = s.localhost_proxy(&[nginx.addr], "shutdown_timeout = \"20s\"", "");
    let c = Client::new(&s, &p);
    let out = s.path("download.bin");
    // A slow reader keeps the request in flight for about 3 seconds.
    let mut download = Command::new(require_tool("curl", "curl"))
        .args([
            "-sS",
            "--fail",
            "--http1.1",
            "--limit-rate",
            "2M",
            "--cacert",
            &c.ca,
            "--resolve",
            &c.resolve,
            "-o",
        ])
        .arg(&out)
        .arg(format!("{}/big.bin", c.base))
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    wait_for("the download to start", Duration::from_secs(10), || {
        std::fs::metadata(&out)
            .ok()
            .filter(|m| m.len() > 0)
            .map(|_| ())
    });
    p.sigterm();
    // New connections are refused at once...
    wait_for("the listener to close", Duration::from_secs(5), || {
        std::net::TcpStream::connect(p.addr).err().map(|_| ())
    });
    // ...while the request in flight finishes, byte for byte.
    let status = download.wait().expect("wait curl");
    assert!(
        status.success(),
        "in-flight download failed during shutdown"
    );
    assert!(
        std::fs::read(&out).expect("read") == data,
        "download incomplete"
    );
    let exit = p.child.wait().expect("wait proxy");
    assert!(
        exit.success(),
        "proxy exit status after a clean drain: {exit}"
    );
}

fn limits_proxy(s: &Setup, nginx: &Nginx, limits: &str) -> ProxyProc {
    s.localhost_proxy(&[nginx.addr], limits, "")
}

fn tls_connect(
    p: &ProxyProc,
    s: &Setup,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let cfg = crate::common::proxy::client_config(s.ca_path(), false, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg, name).expect("conn");
    let sock = std::net::TcpStream::connect(p.addr).expect("connect");
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn the_connection_limit_resets_new_connections_until_one_closes() {
    use std::io::Write;
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = limits_proxy(&s, &nginx, "max_connections = 1");
    let mut a = tls_connect(&p, &s);
    a.flush().expect("handshake a");
    while a.conn.is_handshaking() {
        a.conn.complete_io(&mut a.sock).expect("complete a");
    }
    // The second connection is reset while the first is open, at once
    // rather than after the read timeout...
    let mut b = tls_connect(&p, &s);
    b.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let start = Instant::now();
    let refused = b.conn.complete_io(&mut b.sock);
    let kind = refused.as_ref().err().map(|e| e.kind());
    assert!(
        matches!(
            kind,
            Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof)
        ),
        "second connection: {refused:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "reset only after {:?}",
        start.elapsed()
    );
    // ...and a new one is served once the first closes (its slot is
    // freed when the proxy sees the close).
    drop(a);
    wait_for("a freed slot", Duration::from_secs(10), || {
        let mut c = tls_connect(&p, &s);
        c.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        while c.conn.is_handshaking() {
            c.conn.complete_io(&mut c.sock).ok()?;
        }
        Some(())
    });
}

#[test]
fn slow_handshakes_and_slow_request_heads_are_cut_off() {
    use std::io::{Read, Write};
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = limits_proxy(
        &s,
        &nginx,
        "handshake_timeout = \"300ms\"\nheader_timeout = \"300ms\"",
    );
    // A client that connects and never says hello.
    let mut raw = std::net::TcpStream::connect(p.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let n = raw.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "expected the proxy to close a silent connection");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );

    // A client that completes TLS and then sends half a request head.
    let mut t = tls_connect(&p, &s);
    t.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    t.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .expect("partial head");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn idle_keep_alive_connections_close_and_busy_ones_do_not() {
    use std::io::{Read, Write};
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    std::fs::write(nginx.www().join("big.bin"), &data).expect("write");
    let p = limits_proxy(&s, &nginx, "idle_timeout = \"400ms\"");

    // HTTP/1.1: after one keep-alive response the proxy closes the connection.
    let mut t = tls_connect(&p, &s);
    t.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    t.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    let waited = start.elapsed();
    assert!(
        String::from_utf8_lossy(&buf).ends_with("\r\n\r\nn1\n"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "h1 closed after {waited:?}"
    );

    // HTTP/2: the connection ends (GOAWAY) once idle.
    let cfg = crate::common::proxy::client_config(s.ca_path(), false, &[b"h2"]);
    let rt = crate::common::current_thread_rt();
    let waited = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .expect("handshake");
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .expect("h2");
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(format!("https://localhost:{}/whoami", p.addr.port()))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        drop(resp);
        let start = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("h2 connection closed");
        start.elapsed()
    });
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "h2 closed after {waited:?}"
    );

    // A slow download is in flight, not idle: it completes.
    let c = Client::new(&s, &p);
    let out = s.path("slow.bin");
    let u = format!("{}/big.bin", c.base);
    let args = [
        "-sS",
        "--fail",
        "--limit-rate",
        "2M",
        "--cacert",
        &c.ca,
        "--resolve",
        &c.resolve,
        "-o",
    ];
    let status = Command::new(require_tool("curl", "curl"))
        .args(args)
        .arg(&out)
        .arg(&u)
        .status()
        .expect("curl");
    assert!(status.success());
    assert!(std::fs::read(&out).expect("read") == data);
}

#[test]
fn oversized_request_heads_are_refused() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = limits_proxy(&s, &nginx, "max_header_size = 16384");
    let c = Client::new(&s, &p);
    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let u = format!("{}/whoami", c.base);
    for flag in ["--http1.1", "--http2"] {
        let out = crate::common::proxy::curl(&[
            "-sS",
            "--cacert",
            &c.ca,
            "--resolve",
            &c.resolve,
            flag,
            "-H",
            &big,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &u,
        ]);
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "{flag}: {code} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // HTTP/2 answers 431; HTTP/1.1 closes the connection mid-head.
        assert!(
            code == "431" || !out.status.success() || code == "000",
            "{flag}: got {code}"
        );
        assert_ne!(code, "200", "{flag}");
    }
    assert_eq!(c.get("/whoami"), ("200".to_owned(), "n1".to_owned()));
}
