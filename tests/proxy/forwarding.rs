//! Forwarding through a vault-keyed proxy to real nginx and Apache:
//! HTTP/1.1 and HTTP/2, exact bytes, large bodies both ways, proxy
//! headers, WebSocket upgrade.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::common::backends::{ws_accept_key, Apache, Nginx, WsEcho};
use crate::common::proxy::{
    client_config, config, curl, curl_ok, h2_connect, https_get, ProxyProc,
};
use crate::Setup;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut v).expect("random");
    v
}

fn sha(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// A proxy with a vault ECDSA certificate for `localhost` in front of `backends`.
fn proxy_for(s: &Setup, backends: &[SocketAddr]) -> ProxyProc {
    s.localhost_proxy(backends, "", "")
}

fn url(p: &ProxyProc, path: &str) -> String {
    format!("https://localhost:{}{path}", p.addr.port())
}

fn curl_args<'a>(s: &'a Setup, p: &ProxyProc, resolve: &'a mut String) -> Vec<&'a str> {
    *resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    vec![
        "-sS",
        "--fail",
        "--cacert",
        s.ca_path().to_str().expect("utf-8"),
        "--resolve",
        resolve,
    ]
}

/// GET over HTTP/2 with a rustls client (hyper's h2 client).
fn h2_get(addr: SocketAddr, ca: &std::path::Path, path: &str) -> (u16, Vec<u8>) {
    let rt = crate::common::current_thread_rt();
    rt.block_on(async move {
        let mut send = h2_connect(addr, ca).await;
        let req = hyper::Request::get(format!("https://localhost:{}{path}", addr.port()))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, body)
    })
}

#[test]
fn http1_and_http2_return_the_backend_bytes_exactly() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let data = random_bytes(3 * 1024 * 1024 + 17);
    std::fs::write(nginx.www().join("blob.bin"), &data).expect("write blob");
    let p = proxy_for(&s, &[nginx.addr]);

    let mut r = String::new();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let mut args = curl_args(&s, &p, &mut r);
        let u = url(&p, "/blob.bin");
        args.extend([flag, u.as_str()]);
        let body = curl_ok(&args);
        assert!(
            body == data,
            "curl {flag}: {} bytes, sha mismatch",
            body.len()
        );
        let mut args = curl_args(&s, &p, &mut r);
        args.extend([
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            u.as_str(),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&curl_ok(&args)),
            format!("{want} 200")
        );
    }

    let cfg = client_config(s.ca_path(), false, &[b"http/1.1"]);
    let f = https_get(p.addr, "localhost", &cfg, "/blob.bin");
    assert_eq!(f.status, 200);
    assert!(
        sha(&f.body) == sha(&data),
        "rustls h1: body differs ({} bytes)",
        f.body.len()
    );

    let (status, body) = h2_get(p.addr, s.ca_path(), "/blob.bin");
    assert_eq!(status, 200);
    assert!(
        sha(&body) == sha(&data),
        "rustls h2: body differs ({} bytes)",
        body.len()
    );

    // The access log has a line per request with the TLS facts.
    let log = p.log();
    assert!(
        log.contains("path=\"/blob.bin\" status=200")
            && log.contains("alpn=\"h2\"")
            && log.contains("tls=TLSv1_3"),
        "{log}"
    );
}

#[test]
fn default_server_name_routes_requests_for_hosts_no_route_names() {
    let s = Setup::start();
    let (n1, n2) = (Nginx::start("n1"), Nginx::start("n2"));
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost", "www.test"]);
    let cfg = |extra: &str| {
        config(&s.vault.socket, &[(&["localhost", "www.test"], &cert, "vault:tls-local")], &[n1.addr], extra, "")
            // The catch-all route the helper writes now names a host.
            .replace("[[proxy.route]]\nupstream = \"web\"", "[[proxy.route]]\nhost = \"localhost\"\nupstream = \"web\"")
            + &format!("\n[[proxy.route]]\nhost = \"www.test\"\nupstream = \"www\"\n\n[proxy.upstream.www]\nbackends = [\"{}\"]\n", n2.addr)
    };
    // A client without SNI and with an IP address as Host (curl to
    // https://127.0.0.1/): the default's certificate, and its route.
    let get = |p: &ProxyProc| {
        curl(&[
            "-s",
            "-o",
            "/dev/stdout",
            "-w",
            " %{http_code}",
            "--cacert",
            s.ca_path().to_str().expect("utf-8"),
            "--connect-to",
            &format!("www.test:{0}:127.0.0.1:{0}", p.addr.port()),
            "-H",
            &format!("Host: 127.0.0.1:{}", p.addr.port()),
            &format!("https://www.test:{}/whoami", p.addr.port()),
        ])
        .stdout
    };
    let p = ProxyProc::start(s.dir.path(), &cfg("default_server_name = \"www.test\""));
    assert_eq!(String::from_utf8_lossy(&get(&p)), "n2\n 200");
    drop(p);
    // Without it, a host no route names is not found, as before.
    let p = ProxyProc::start(s.dir.path(), &cfg(""));
    assert!(String::from_utf8_lossy(&get(&p)).ends_with(" 404"));
}

#[test]
fn plain_http_redirects_to_https_and_every_answer_carries_hsts_and_the_set_headers() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[nginx.addr],
        "redirect_listen = \"127.0.0.1:0\"\nhsts = \"max-age=63072000; includeSubDomains\"\n\
         [proxy.response_headers]\nset = { \"X-Frame-Options\" = \"DENY\" }\nremove = [\"Server\"]\n",
        "",
    );
    // The extra lines open a table: the helper's certificates come after.
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let redirect: SocketAddr = p
        .early
        .iter()
        .find_map(|l| l.strip_prefix("redirect ")?.parse().ok())
        .expect("a `redirect ADDR` line");
    let head = |args: &[&str]| {
        let mut a = vec!["-s", "-o", "/dev/null", "-D", "-"];
        a.extend(args);
        String::from_utf8_lossy(&curl(&a).stdout).to_ascii_lowercase()
    };
    // http://localhost:R/a?b=1 → https://localhost:P/a?b=1, the method
    // kept for a POST.
    let url = format!("http://localhost:{}/a/b?c=1", redirect.port());
    let resolve = format!("localhost:{}:127.0.0.1", redirect.port());
    let got = head(&["--resolve", &resolve, &url]);
    let want = format!("location: https://localhost:{}/a/b?c=1", p.addr.port());
    assert!(
        got.starts_with("http/1.1 301") && got.contains(&want),
        "{got}"
    );
    let got = head(&["--resolve", &resolve, "-X", "POST", &url]);
    assert!(
        got.starts_with("http/1.1 308") && got.contains(&want),
        "{got}"
    );

    // Over HTTPS: the backend's answer and the proxy's own 404 alike.
    let https = |path: &str| {
        let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
        let url = format!("https://localhost:{}{path}", p.addr.port());
        head(&[
            "--cacert",
            s.ca_path().to_str().expect("utf-8"),
            "--resolve",
            &resolve,
            &url,
        ])
    };
    for got in [https("/whoami"), https("/no-such-file")] {
        assert!(
            got.contains("strict-transport-security: max-age=63072000; includesubdomains")
                && got.contains("x-frame-options: deny")
                && !got.contains("server: nginx"),
            "{got}"
        );
    }
}

/// A name in /etc/hosts for the length of a test (the system resolver
/// reads the file on every lookup).
struct HostsEntry {
    name: String,
}

impl HostsEntry {
    fn set(&self, ip: Option<&str>) {
        let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
        let mut kept: Vec<&str> = hosts
            .lines()
            .filter(|l| !l.split_whitespace().any(|w| w == self.name))
            .collect();
        let line = ip.map(|ip| format!("{ip} {}", self.name));
        kept.extend(line.as_deref());
        std::fs::write("/etc/hosts", kept.join("\n") + "\n").expect("write /etc/hosts");
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        self.set(None);
    }
}

#[test]
fn backends_by_host_name_are_resolved_and_followed_when_the_name_moves() {
    crate::common::require_root("the test names its backend in /etc/hosts");
    let port = (0..50)
        .map(|_| crate::common::backends::free_port())
        .find(|&p| std::net::TcpListener::bind(("127.0.0.2", p)).is_ok())
        .expect("a port free on 127.0.0.1 and 127.0.0.2");
    let n1 = Nginx::start_at("n1", SocketAddr::from(([127, 0, 0, 1], port)), "");
    let n2 = Nginx::start_at("n2", SocketAddr::from(([127, 0, 0, 2], port)), "");
    let entry = HostsEntry {
        name: format!("vg-backend-{}.test", std::process::id()),
    };
    entry.set(Some("127.0.0.1"));
    let s = Setup::start();
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let named = format!("{}:{port}", entry.name);
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[n1.addr],
        "",
        "resolve_every = \"1s\"",
    )
    .replace(&format!("\"{}\"", n1.addr), &format!("\"{named}\""));
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let client = client_config(s.ca_path(), false, &[]);
    let whoami = || https_get(p.addr, "localhost", &client, "/whoami");
    assert_eq!(whoami().body, b"n1\n");

    // The name moves: within a few seconds, new requests follow it.
    entry.set(Some("127.0.0.2"));
    crate::common::wait_for(
        "requests to follow the name",
        std::time::Duration::from_secs(15),
        || {
            let r = whoami();
            assert_eq!(r.status, 200, "no request may fail while the name moves");
            (r.body == b"n2\n").then_some(())
        },
    );
    assert!(p.log().contains("backend addresses changed"), "{}", p.log());

    // The name goes away: the last addresses keep serving, and it says so.
    entry.set(None);
    crate::common::wait_for(
        "the failed lookup to be logged",
        std::time::Duration::from_secs(15),
        || p.log().contains("cannot resolve a backend").then_some(()),
    );
    assert_eq!(whoami().body, b"n2\n");
    drop(p);

    // At start, a name that does not resolve fails the start, named.
    std::fs::write(s.path("proxy.toml"), &cfg).expect("write");
    let path = s.path("proxy.toml").display().to_string();
    let err = ProxyProc::try_spawn(s.dir.path(), &["proxy", "--config", &path])
        .err()
        .expect("a proxy whose backend does not resolve must not start");
    assert!(
        err.contains(&format!("backend {named}: cannot resolve")),
        "{err}"
    );
    drop(n2);
}

#[test]
fn large_bodies_stream_both_ways_to_nginx_and_apache() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let apache = Apache::start();
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost", "apache.test"]);
    let cfg = format!(
        "{}\n[[proxy.route]]\nhost = \"apache.test\"\nupstream = \"apache\"\n\n[proxy.upstream.apache]\nbackends = [\"{}\"]\n",
        config(&s.vault.socket, &[(&["localhost", "apache.test"], &cert, "vault:tls-local")], &[nginx.addr], "", ""),
        apache.addr
    );
    let p = ProxyProc::start(s.dir.path(), &cfg);
    let data = random_bytes(40 * 1024 * 1024 + 3);
    let src = s.path("upload.bin");
    std::fs::write(&src, &data).expect("write");
    let src_s = src.display().to_string();
    let mut r = String::new();

    // Upload (PUT) over HTTP/2 to nginx, then download it back over HTTP/1.1.
    let mut args = curl_args(&s, &p, &mut r);
    let up = url(&p, "/upload/big.bin");
    args.extend(["--http2", "-T", src_s.as_str(), up.as_str()]);
    curl_ok(&args);
    let stored =
        std::fs::read(nginx.www().join("upload/big.bin")).expect("nginx stored the upload");
    assert!(
        stored == data,
        "nginx got {} bytes, sha mismatch",
        stored.len()
    );
    let mut args = curl_args(&s, &p, &mut r);
    args.extend(["--http1.1", up.as_str()]);
    assert!(curl_ok(&args) == data, "download differs");

    // Apache echoes a POST body through CGI: both directions at once.
    let body = random_bytes(8 * 1024 * 1024);
    std::fs::write(&src, &body).expect("write");
    let mut args = curl_args(&s, &p, &mut r);
    let ar = format!("apache.test:{}:127.0.0.1", p.addr.port());
    let au = format!("https://apache.test:{}/cgi/echo", p.addr.port());
    let data_arg = format!("@{src_s}");
    args.extend([
        "--resolve",
        ar.as_str(),
        "--http2",
        "--data-binary",
        data_arg.as_str(),
        "-H",
        "Content-Type: application/octet-stream",
        au.as_str(),
    ]);
    let echoed = curl_ok(&args);
    assert!(
        echoed == body,
        "apache echoed {} bytes, sha mismatch",
        echoed.len()
    );
}

#[test]
fn proxy_headers_arrive_at_the_backend() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = proxy_for(&s, &[nginx.addr]);
    let mut r = String::new();
    let host = format!("localhost:{}", p.addr.port());
    for flag in ["--http1.1", "--http2"] {
        let mut args = curl_args(&s, &p, &mut r);
        let u = url(&p, "/headers");
        args.extend([
            flag,
            "-H",
            "X-Forwarded-For: 192.0.2.7",
            "-H",
            "X-Hop: secret",
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "Keep-Alive: timeout=5",
            u.as_str(),
        ]);
        let text = String::from_utf8_lossy(&curl_ok(&args)).into_owned();
        let want = [
            format!("host={host}\n"),
            "xff=192.0.2.7, 127.0.0.1\n".to_owned(),
            "xfp=https\n".to_owned(),
            format!("xfh={host}\n"),
            format!("forwarded=for=127.0.0.1;proto=https;host=\"{host}\"\n"),
            "keep-alive=\n".to_owned(),
            "proxy-connection=\n".to_owned(),
        ];
        // In HTTP/2 there is no Connection header, so X-Hop is end to end.
        let want: Vec<String> = want
            .into_iter()
            .chain((flag == "--http1.1").then(|| "x-hop=\n".to_owned()))
            .collect();
        for w in want {
            assert!(text.contains(&w), "{flag}: missing {w:?} in:\n{text}");
        }
    }
}

#[test]
fn client_address_headers_from_the_client_are_overwritten_dropped_or_passed() {
    let s = Setup::start();
    let backend = crate::common::raw::Recorder::start();
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let names = ["X-Real-IP", "True-Client-IP", "X-Client-IP"];
    let sent: Vec<String> = names.iter().map(|n| format!("{n}: 203.0.113.66")).collect();
    // (setting, what the backend sees in each of `names`)
    let modes: [(&str, &[&str]); 4] = [
        ("", &["127.0.0.1"]),
        ("client_ip_headers = \"overwrite\"", &["127.0.0.1"]),
        ("client_ip_headers = \"drop\"", &[]),
        ("client_ip_headers = \"pass\"", &["203.0.113.66"]),
    ];
    for (setting, want) in modes {
        let cfg = config(
            &s.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-local")],
            &[backend.addr],
            setting,
            "",
        );
        let p = ProxyProc::start(s.dir.path(), &cfg);
        for flag in ["--http1.1", "--http2"] {
            let mut r = String::new();
            let mut args = curl_args(&s, &p, &mut r);
            let marker = format!("/ip-{}{flag}", p.addr.port());
            let u = url(&p, &marker);
            args.extend([flag, "-o", "/dev/null"]);
            for h in &sent {
                args.extend(["-H", h.as_str()]);
            }
            // Sent twice, as a client might to confuse a backend that
            // reads the first or the last.
            args.extend([
                "-H",
                "X-Real-IP: 198.51.100.9",
                "-H",
                "X-Forwarded-For: 203.0.113.66",
            ]);
            args.push(&u);
            curl_ok(&args);
            let seen = backend.wait_request(&marker, std::time::Duration::from_secs(10));
            for name in names {
                let got = seen.header(name);
                let expected: Vec<&str> = if want == ["203.0.113.66"] && name == "X-Real-IP" {
                    vec!["203.0.113.66", "198.51.100.9"]
                } else {
                    want.to_vec()
                };
                assert_eq!(
                    got, expected,
                    "{setting:?} {flag}: {name} in\n{}",
                    seen.head
                );
            }
            // X-Forwarded-For keeps what the client sent; the proxy's
            // element, the last, is the one a backend may trust.
            assert_eq!(
                seen.header("X-Forwarded-For"),
                ["203.0.113.66, 127.0.0.1"],
                "{setting:?} {flag}"
            );
        }
    }
}

#[test]
fn websocket_upgrade_passes_through() {
    let s = Setup::start();
    let ws = WsEcho::start();
    let p = proxy_for(&s, &[ws.addr]);
    let cfg = client_config(s.ca_path(), false, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).expect("conn");
    let sock = std::net::TcpStream::connect(p.addr).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        tls,
        "GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).expect("read head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(
            &format!("sec-websocket-accept: {}", ws_accept_key(key)).to_ascii_lowercase()
        ),
        "{head}"
    );
    for msg in [&b"hello through the proxy"[..], &[7u8; 300][..]] {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x82];
        if msg.len() < 126 {
            frame.push(0x80 | msg.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(msg.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
        tls.write_all(&frame).expect("send frame");
        let mut h = [0u8; 2];
        tls.read_exact(&mut h).expect("echo header");
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            let mut l = [0u8; 2];
            tls.read_exact(&mut l).expect("len");
            len = u16::from_be_bytes(l) as usize;
        }
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).expect("echo payload");
        assert_eq!(h[0], 0x82);
        assert_eq!(payload, msg);
    }
}

#[test]
fn curl_gets_502_when_no_backend_listens() {
    let s = Setup::start();
    let dead: SocketAddr = format!("127.0.0.1:{}", crate::common::backends::free_port())
        .parse()
        .expect("addr");
    let p = proxy_for(&s, &[dead]);
    let mut r = String::new();
    let mut args = curl_args(&s, &p, &mut r);
    args.retain(|a| *a != "--fail");
    let u = url(&p, "/");
    args.extend(["-w", "\n%{http_code}", u.as_str()]);
    let out = String::from_utf8_lossy(&curl_ok(&args)).into_owned();
    assert!(
        out.ends_with("\n502") && out.starts_with("502 Bad Gateway"),
        "{out}"
    );
    assert!(p.log().contains("refused"), "{}", p.log());
}

#[test]
fn proxy_protocol_v2_tells_nginx_the_client_address() {
    let s = Setup::start();
    let nginx = Nginx::start_with("pp", " proxy_protocol");
    let p = s.localhost_proxy(&[nginx.addr], "", "proxy_protocol = true\n");
    let mut r = String::new();
    for flag in ["--http1.1", "--http2"] {
        let mut args = curl_args(&s, &p, &mut r);
        let u = url(&p, "/headers");
        // Two requests on one client connection share its private backend connection.
        args.extend([flag, u.as_str(), u.as_str()]);
        let text = String::from_utf8_lossy(&curl_ok(&args)).into_owned();
        assert_eq!(text.matches("pp=127.0.0.1\n").count(), 2, "{flag}: {text}");
    }
}

#[test]
fn h2c_upstreams_get_http2_without_tls() {
    let s = Setup::start();
    let nginx = Nginx::start_with("h2c", " http2");
    let p = s.localhost_proxy(&[nginx.addr], "", "h2c = true\n");
    let mut r = String::new();
    for flag in ["--http1.1", "--http2"] {
        let mut args = curl_args(&s, &p, &mut r);
        let u = url(&p, "/headers");
        args.extend([flag, u.as_str()]);
        let text = String::from_utf8_lossy(&curl_ok(&args)).into_owned();
        let host = format!("host=localhost:{}\n", p.addr.port());
        assert!(
            text.contains("protocol=HTTP/2.0\n")
                && text.contains("xfp=https\n")
                && text.contains(&host),
            "{flag}: {text}"
        );
    }
}

#[test]
fn metrics_cover_connections_handshakes_signatures_requests_and_backends() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        "",
        "[proxy.upstream.web.health]\npath = \"/whoami\"\ninterval = \"100ms\"\n",
    );
    let mut r = String::new();
    for _ in 0..3 {
        let mut args = curl_args(&s, &p, &mut r);
        let u = url(&p, "/whoami");
        args.push(u.as_str());
        assert_eq!(curl_ok(&args), b"n1\n");
    }
    let m = p.metrics_text();
    for (name, labels) in [
        ("vaultgate_proxy_handshakes_total", &["kind=\"full\""][..]),
        (
            "vaultgate_proxy_handshake_seconds_count",
            &["kind=\"full\""][..],
        ),
        ("vaultgate_proxy_sign_seconds_count", &["result=\"ok\""][..]),
        ("vaultgate_proxy_requests_total", &["status=\"200\""][..]),
        (
            "vaultgate_proxy_upstream_seconds_count",
            &["upstream=\"web\""][..],
        ),
        ("vaultgate_proxy_request_seconds_count", &[][..]),
    ] {
        assert!(
            crate::common::proxy::metric(&m, name, labels) >= 3.0,
            "{name}{labels:?} in:\n{m}"
        );
    }
    assert!(m.contains("vaultgate_proxy_connections_open"), "{m}");
    let up = format!("backend=\"{}\"", nginx.addr);
    assert_eq!(
        crate::common::proxy::metric(&m, "vaultgate_proxy_backend_up", &[&up]),
        1.0,
        "{m}"
    );
}
