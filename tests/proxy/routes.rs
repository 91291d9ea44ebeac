//! Requests must reach only what the routes allow: a path-prefix route is
//! not a way to the rest of the backend (dot segments, escapes, doubled
//! slashes, over HTTP/1.1 and HTTP/2, side by side with nginx in front of
//! the same backend), and a protocol upgrade that would hand the client a
//! raw connection to the backend (h2c) is never forwarded.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::backends::{Apache, NginxProxy};
use crate::common::proxy::{config, curl, ProxyProc};
use crate::common::raw::{
    frame, h1_statuses, hpack, read_until_quiet, tls_connect, Recorder, HEADERS, SETTINGS,
};
use crate::Setup;

/// A proxy for `localhost` whose only route is `prefix` to `backends`;
/// `extra` as for [`config`].
fn prefix_proxy(s: &Setup, prefix: &str, backends: &[SocketAddr], extra: &str) -> ProxyProc {
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        backends,
        extra,
        "",
    )
    .replace(
        "[[proxy.route]]\nupstream",
        &format!("[[proxy.route]]\npath = \"{prefix}\"\nupstream"),
    );
    ProxyProc::start(s.dir.path(), &cfg)
}

/// The status curl got for `url` (`--path-as-is`: curl sends the path as
/// written, dot segments and all), with `args` before it.
fn status(args: &[&str], url: &str) -> u16 {
    let mut all = vec![
        "-sS",
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    all.extend_from_slice(args);
    all.push(url);
    let out = curl(&all);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {all:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn dot_segments_and_escapes_do_not_lead_out_of_a_path_prefix_route() {
    let s = Setup::start();
    let behind_us = Recorder::start();
    let behind_nginx = Recorder::start();
    let p = prefix_proxy(&s, "/public/", &[behind_us.addr], "");
    let nginx = NginxProxy::start("/public/", behind_nginx.addr);
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let ours = |proto: &str, path: &str| {
        let url = format!("https://localhost:{}{path}", p.addr.port());
        status(&[proto, "--cacert", &ca, "--resolve", &resolve], &url)
    };
    let theirs = |h2: bool, path: &str| {
        if h2 {
            let url = format!("http://{}{path}", nginx.h2c_addr);
            status(&["--http2-prior-knowledge"], &url)
        } else {
            status(&["--http1.1"], &format!("http://{}{path}", nginx.addr))
        }
    };

    // (path, what we answer). The first six are the ways out that reached
    // the backend's /internal/ when routes matched the raw path; nginx
    // answers 404 to each.
    let escapes: &[(&str, u16)] = &[
        ("/public/../internal/secret", 404),
        ("/public/%2e%2e/internal/secret", 404),
        ("/public/..%2finternal/secret", 400),
        ("/public/%2E%2E%2Finternal/secret", 400),
        ("/public/./../internal/secret", 404),
        ("/public//../internal/secret", 404),
        // Read as ".." by Tomcat and Jetty; nginx passes it on.
        ("/public/..;/internal/secret", 400),
        ("/public/%2e%2e;x/internal/secret", 400),
        ("/public/.%2e/internal/secret", 404),
    ];
    let mut table = Vec::new();
    for (i, &(path, want)) in escapes.iter().enumerate() {
        for proto in ["--http1.1", "--http2"] {
            let got = ours(proto, path);
            assert_eq!(got, want, "{proto} {path}");
        }
        let (n1, n2) = (theirs(false, path), theirs(true, path));
        table.push(format!(
            "{path:40} vaultgate {want}  nginx h1 {n1} h2c {n2}"
        ));
        if i < 6 {
            assert_eq!((n1, n2), (404, 404), "nginx for {path}");
        }
    }
    // A raw backslash, which some backends read as a slash: refused.
    let mut t = tls_connect(p.addr, s.ca_path(), &[b"http/1.1"]);
    let _ = t.write_all(b"GET /public/..\\internal/secret HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (resp, _) = read_until_quiet(&mut t, Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(
        h1_statuses(&resp),
        vec![400],
        "{}",
        String::from_utf8_lossy(&resp)
    );
    eprintln!("{}", table.join("\n"));

    // What the route matched is what the backend gets; the query as sent.
    for proto in ["--http1.1", "--http2"] {
        assert_eq!(ours(proto, "/public/a/./b/../%7ec//d?q=/../x"), 200);
    }
    let seen = behind_us.wait_request("/public/a/~c/d?q=/../x", Duration::from_secs(5));
    assert!(seen
        .request_line()
        .starts_with("GET /public/a/~c/d?q=/../x "));
    for r in behind_us.requests() {
        assert!(
            r.request_line().starts_with("GET /public/"),
            "the backend got a path outside the route: {}",
            r.request_line()
        );
    }
    assert!(
        !behind_us.received("internal"),
        "{:?}",
        behind_us.requests()
    );
}

#[test]
fn path_normalisation_can_be_switched_off() {
    // Off, the raw path is matched and forwarded: the documented risk,
    // kept for backends that need exact bytes.
    let s = Setup::start();
    let rec = Recorder::start();
    let p = prefix_proxy(
        &s,
        "/public/",
        &[rec.addr],
        "normalize_path = false\nmerge_slashes = false",
    );
    let ca = s.ca_path().to_str().expect("utf-8").to_owned();
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}/public/%2e%2e//x", p.addr.port());
    assert_eq!(status(&["--cacert", &ca, "--resolve", &resolve], &url), 200);
    rec.wait_request("GET /public/%2e%2e//x ", Duration::from_secs(5));
}

#[test]
fn an_h2c_upgrade_is_never_forwarded() {
    // The backend (Apache with mod_http2) accepts `Upgrade: h2c`; had the
    // proxy forwarded it and spliced on the 101, the client would ask that
    // HTTP/2 connection for a host no route serves.
    let s = Setup::start();
    let apache = Apache::start_with(true);
    std::fs::create_dir_all(apache.www().join("internal")).expect("mkdir");
    std::fs::write(apache.www().join("internal/secret"), "the secret\n").expect("write");
    std::fs::write(apache.www().join("index.html"), "index\n").expect("write");
    // The backend does switch when asked directly.
    let direct = curl(&[
        "-sS",
        "-i",
        "--http2",
        &format!("http://{}/index.html", apache.addr),
    ]);
    assert!(
        String::from_utf8_lossy(&direct.stdout).contains("101 Switching Protocols"),
        "Apache did not take the h2c upgrade: {}",
        String::from_utf8_lossy(&direct.stdout)
    );
    let p = s.localhost_proxy(&[apache.addr], "", "");

    // However the client spells it; HTTP2-Settings is connection-specific
    // and dropped too, named in Connection (as RFC 7540 has it) or not.
    let cases = [
        ("Upgrade", "h2c"),
        ("Upgrade", "H2C"),
        ("upgrade", "h2c, websocket"),
        ("Upgrade, HTTP2-Settings", "h2c"),
    ];
    for (connection, upgrade) in cases {
        let mut t = tls_connect(p.addr, s.ca_path(), &[b"http/1.1"]);
        let req = format!(
            "GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        );
        t.write_all(req.as_bytes()).expect("write");
        let (head, _) =
            read_until_quiet(&mut t, Duration::from_millis(400), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&head).into_owned();
        assert_eq!(h1_statuses(&head), vec![200], "Upgrade: {upgrade}: {text}");
        assert!(text.contains("index"), "{text}");
        // As a client that believed the switch happened would go on.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend(frame(SETTINGS, 0, 0, &[]));
        let block = hpack(&[
            (":method", b"GET".as_slice()),
            (":scheme", b"http"),
            (":authority", b"internal.example"),
            (":path", b"/internal/secret"),
        ]);
        h2.extend(frame(HEADERS, 0x5, 3, &block));
        let _ = t.write_all(&h2);
        let (rest, _) =
            read_until_quiet(&mut t, Duration::from_millis(400), Duration::from_secs(5));
        assert!(
            !String::from_utf8_lossy(&rest).contains("the secret"),
            "Upgrade: {upgrade}: the client reached the backend past the routes"
        );
    }
}
