//! The logs as operators of nginx read them: an access log file of its
//! own in nginx's combined format or JSON (user agent, referer, HTTP
//! version, a request id the backend is sent too, times as fixed
//! decimals), reopened on SIGUSR1 after logrotate's rename; the process
//! log's level from the config, no colour codes off a terminal, and
//! rustls's per-connection warning about an IP address in SNI written
//! once, not per connection.

use std::path::Path;
use std::time::Duration;

use crate::common::backends::Recorder;
use crate::common::proxy::{config, curl_ok, ProxyProc};
use crate::common::{require_tool, wait_for};
use crate::Setup;

fn proxy_with(s: &Setup, backend: std::net::SocketAddr, extra: &str) -> ProxyProc {
    let cert = s.path("tls-local.pem");
    if !cert.exists() {
        s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    }
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[backend],
        extra,
        "",
    );
    ProxyProc::start(s.dir.path(), &cfg)
}

/// `curl` to `path` on the proxy with `extra` arguments.
fn get(s: &Setup, p: &ProxyProc, path: &str, extra: &[&str]) {
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}{path}", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8");
    let mut args = vec![
        "-sS",
        "--fail",
        "--http1.1",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_ok(&args);
}

/// The lines of `path` once it has `n` of them.
fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            let l: Vec<String> = text.lines().map(str::to_owned).collect();
            (l.len() >= n).then_some(l)
        },
    )
}

/// The request id the backend was sent (`X-Request-Id`).
fn forwarded_id(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-request-id")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no X-Request-Id sent to the backend: {head}"))
}

#[test]
fn access_log_file_in_nginx_combined_with_request_ids_reopened_on_sigusr1() {
    let s = Setup::start();
    let backend = Recorder::start();
    let p = proxy_with(
        &s,
        backend.addr,
        "access_log_file = \"access.log\"\naccess_log_format = \"combined\"",
    );
    let log = s.path("access.log");

    // A client's id is kept and forwarded; referer and agent are logged.
    get(
        &s,
        &p,
        "/a?q=1",
        &[
            "-A",
            "agent/1.0 \"quoted\"",
            "-e",
            "https://ref.example/",
            "-H",
            "X-Request-Id: lb-1234",
        ],
    );
    assert_eq!(forwarded_id(&backend.next_head()), "lb-1234");
    let first = lines(&log, 1).remove(0);
    let re_prefix = "127.0.0.1 - - [";
    assert!(first.starts_with(re_prefix), "{first}");
    assert!(
        first.contains(
            r#"] "GET /a?q=1 HTTP/1.1" 200 3 "https://ref.example/" "agent/1.0 \x22quoted\x22" "lb-1234" "#
        ),
        "{first}"
    );
    // `$request_time $upstream_response_time`: seconds, three decimals.
    let times: Vec<&str> = first.rsplit(' ').take(2).collect();
    for t in &times {
        let (whole, frac) = t
            .split_once('.')
            .unwrap_or_else(|| panic!("{t:?} in {first}"));
        assert!(
            whole.bytes().all(|b| b.is_ascii_digit()) && frac.len() == 3,
            "time {t:?} is not a fixed decimal: {first}"
        );
    }
    // [03/Dec/2026:17:48:36 +0000]: nginx's $time_local.
    let stamp = &first[re_prefix.len()..first.find(']').expect("]")];
    assert!(stamp.ends_with(" +0000") && stamp.len() == 26, "{stamp:?}");

    // Without one, an id is made, and the backend gets the same.
    get(&s, &p, "/b", &["-A", ""]);
    let made = forwarded_id(&backend.next_head());
    assert!(
        made.len() == 32 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made:?}"
    );
    let second = lines(&log, 2).remove(1);
    assert!(
        second.contains(&format!(" \"-\" \"-\" \"{made}\" ")),
        "{second}"
    );
    // A value that would break the line is not trusted as an id.
    get(&s, &p, "/c", &["-H", "X-Request-Id: a\"b"]);
    assert_ne!(forwarded_id(&backend.next_head()), "a\"b");
    lines(&log, 3);

    // logrotate: rename, SIGUSR1, and the next line is in a new file.
    std::fs::rename(&log, s.path("access.log.1")).expect("rename");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
    wait_for("the reopen to be logged", Duration::from_secs(30), || {
        p.log().contains("access log files reopened").then_some(())
    });
    get(&s, &p, "/after-rotation", &[]);
    backend.next_head();
    let after = lines(&log, 1);
    assert!(
        after[0].contains("GET /after-rotation HTTP/1.1"),
        "{after:?}"
    );
    let rotated = std::fs::read_to_string(s.path("access.log.1")).expect("rotated file");
    assert_eq!(rotated.lines().count(), 3, "{rotated}");
    assert!(
        !p.log().contains("vaultgate::access"),
        "the access lines went to the file only"
    );
}

#[test]
fn access_log_as_json_and_the_process_log_with_fixed_decimal_times() {
    let s = Setup::start();
    let backend = Recorder::start();
    let p = proxy_with(
        &s,
        backend.addr,
        "access_log_file = \"access.json\"\naccess_log_format = \"json\"",
    );
    get(
        &s,
        &p,
        "/j",
        &["-A", "agent/2", "-H", "X-Request-Id: id-json"],
    );
    backend.next_head();
    let line = lines(&s.path("access.json"), 1).remove(0);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "id-json");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/j");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["user_agent"], "agent/2");
    assert!(v["referer"].is_null(), "{line}");
    assert_eq!(v["backend"], backend.addr.to_string());
    for t in ["total_ms", "upstream_ms"] {
        assert!(v[t].is_number(), "{t}: {line}");
        let text = line.split(&format!("\"{t}\":")).nth(1).expect("field");
        let num: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        assert_eq!(
            num.split_once('.').map(|(_, f)| f.len()),
            Some(3),
            "{t} in {line}"
        );
    }
    drop(p);

    // Into the process log (the default): key=value, and a request that
    // reached no backend (nothing listens there: 502) has `upstream_ms=-`,
    // not -1.0.
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::backends::free_port()));
    let p = proxy_with(&s, dead, "");
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}/x", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8");
    let out = crate::common::proxy::curl(&[
        "-sS",
        "--http1.1",
        "--cacert",
        ca,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code, "502");
    let log = wait_for("the access line", Duration::from_secs(30), || {
        let log = p.log();
        log.contains("vaultgate::access").then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains("vaultgate::access"))
        .expect("line");
    assert!(line.contains(&format!("status={code}")), "{line}");
    assert!(line.contains(" upstream_ms=- "), "{line}");
    let total = line.split(" total_ms=").nth(1).expect("total_ms");
    let total = total.split(' ').next().expect("value");
    assert_eq!(
        total.split_once('.').map(|(_, f)| f.len()),
        Some(3),
        "{line}"
    );
    assert!(
        line.contains("version=\"HTTP/1.1\"") && line.contains("request_id="),
        "{line}"
    );
}

#[test]
fn the_log_level_is_the_configs_and_colour_is_for_terminals_only() {
    let s = Setup::start();
    let backend = Recorder::start();
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let mut cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[backend.addr],
        "",
        "",
    );
    cfg += "\n[log]\nlevel = \"warn\"\n";
    // Neither RUST_LOG nor NO_COLOR: what the config says, and no colour
    // because stderr is a file.
    let p = ProxyProc::start_env(
        s.dir.path(),
        &cfg,
        &[("RUST_LOG", None), ("NO_COLOR", None)],
    );
    get(&s, &p, "/quiet", &[]);
    backend.next_head();

    // rustls warns about an IP address in SNI once per connection; the
    // log gets it once.
    let openssl = require_tool("openssl", "openssl");
    for _ in 0..5 {
        let out = std::process::Command::new(&openssl)
            .args([
                "s_client",
                "-connect",
                &p.addr.to_string(),
                "-servername",
                "127.0.0.1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Server certificate"),
            "the proxy answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = wait_for("rustls's warning", Duration::from_secs(30), || {
        let log = p.log();
        log.contains("IP address presented as hostname")
            .then_some(log)
    });
    assert_eq!(
        log.matches("IP address presented as hostname").count(),
        1,
        "one warning for five connections: {log}"
    );
    assert!(
        !log.contains(" INFO "),
        "level = \"warn\" lets no info through: {log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in a file: {log:?}");
}
