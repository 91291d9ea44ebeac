//! The metrics listeners in Prometheus's conventions: `# HELP` and
//! `# TYPE` for every metric, `process_*` and `vaultgate_build_info`,
//! counters at zero before their first event, certificate expiry as a
//! timestamp, 404 off `/metrics`.

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::common::backends::Recorder;
use crate::common::proxy::metric;
use crate::Setup;

/// `GET path`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {out}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Every series' metric has a `# HELP` and a `# TYPE` line.
fn assert_every_metric_described(text: &str, who: &str) {
    let described = |kind: &str, name: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("# {kind} {name} ")))
    };
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let series = line.split(['{', ' ']).next().expect("name");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.strip_suffix(s).filter(|b| described("TYPE", b)))
            .unwrap_or(series);
        assert!(
            described("HELP", base),
            "{who}: {base} has no # HELP:\n{text}"
        );
        assert!(
            described("TYPE", base),
            "{who}: {base} has no # TYPE:\n{text}"
        );
    }
}

#[test]
fn metrics_follow_prometheus_conventions_and_other_paths_are_404() {
    let s = Setup::start();
    let backend = Recorder::start();
    let p = s.localhost_proxy(&[backend.addr], "", "");
    let addr = p.metrics.expect("metrics listener");

    // Before any client: the counters are there, at zero.
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_every_metric_described(&text, "proxy");
    for (name, labels) in [
        ("vaultgate_proxy_handshakes_total", &["kind=\"full\""][..]),
        ("vaultgate_proxy_handshakes_total", &["kind=\"resumed\""]),
        (
            "vaultgate_proxy_handshake_failures_total",
            &["reason=\"timeout\""],
        ),
        (
            "vaultgate_proxy_vault_errors_total",
            &["reason=\"unavailable\""],
        ),
        (
            "vaultgate_proxy_config_reloads_total",
            &["result=\"error\""],
        ),
        ("vaultgate_proxy_connections_shed_total", &[]),
    ] {
        let series = format!("{name}{{");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&series) || l.starts_with(&format!("{name} "))),
            "{name} {labels:?} missing before its first event:\n{text}"
        );
        assert_eq!(metric(&text, name, labels), 0.0, "{name} {labels:?}");
    }
    assert!(
        text.contains(&format!(
            "vaultgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let start = metric(&text, "process_start_time_seconds", &[]);
    assert!(
        start > now - 600.0 && start <= now + 1.0,
        "process_start_time_seconds {start}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes", &[]) > 1e6,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds", &[]) >= 3.0, "{text}");
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );

    // The test certificate is valid for a day: its notAfter, as a timestamp.
    let not_after = crate::common::wait_for(
        "the expiry metric",
        std::time::Duration::from_secs(30),
        || {
            let text = get(addr, "/metrics").1;
            text.contains("vaultgate_proxy_cert_not_after_timestamp_seconds{")
                .then(|| {
                    metric(
                        &text,
                        "vaultgate_proxy_cert_not_after_timestamp_seconds",
                        &["key=\"vault:tls-local\""],
                    )
                })
        },
    );
    assert!(
        (not_after - (now + 86400.0)).abs() < 600.0,
        "not_after {not_after}, now {now}"
    );
    let text = get(addr, "/metrics").1;
    assert_eq!(
        metric(
            &text,
            "vaultgate_proxy_cert_key_version",
            &["key=\"vault:tls-local\""]
        ),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("cert_expiry_seconds"),
        "the old gauge is gone: {text}"
    );

    for path in ["/", "/metrics/x", "/favicon.ico"] {
        assert_eq!(get(addr, path).0, 404, "{path}");
    }

    // The vault's listener, the same conventions.
    let vault = s.vault.metrics.expect("vault metrics");
    let (status, text) = get(vault, "/metrics");
    assert_eq!(status, 200);
    assert_every_metric_described(&text, "vault");
    assert_eq!(
        metric(&text, "vaultgate_vault_denied_total", &["op=\"sign\""]),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("vaultgate_vault_denied_total{op=\"sign\"}"),
        "{text}"
    );
    assert!(text.contains("vaultgate_build_info{"), "{text}");
    assert!(text.contains("process_start_time_seconds "), "{text}");
    assert_eq!(
        get(vault, "/status").0,
        404,
        "the status page is the proxy's"
    );
}
