//! The status page on the metrics listener, rendered by a real browser
//! (Debian's headless Chromium): a screenshot is taken, and the page's
//! content, once its script has read `/status.json` and `/metrics`, is
//! checked: backends with their health, certificates with expiry and key
//! version, the vault's connections, the traffic counters. And it loads
//! nothing from anywhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::common::backends::Recorder;
use crate::common::proxy::curl_ok;
use crate::common::require_tool;
use crate::Setup;

/// Headless Chromium with `args` then `url`; returns stdout. Virtual time
/// lets the page's fetches finish before the DOM is dumped or the
/// screenshot taken, however busy the machine is.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let bin = require_tool("chromium", "chromium");
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,1400",
            "--virtual-time-budget=10000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the `<table id=ID>` in `dom`.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in {dom}"));
    let end = dom[start..].find("</table>").expect("table end");
    &dom[start..start + end]
}

#[test]
fn the_status_page_shows_backends_certificates_and_vault_in_chromium() {
    let s = Setup::start();
    let backend = Recorder::start();
    let dead = SocketAddr::from(([127, 0, 0, 1], crate::common::backends::free_port()));
    let p = s.localhost_proxy(
        &[backend.addr, dead],
        "",
        "[proxy.upstream.web.health]\npath = \"/\"\ninterval = \"100ms\"\nunhealthy = 1",
    );
    let metrics = p.metrics.expect("metrics listener");
    // Some traffic for the counters.
    let resolve = format!("localhost:{}:127.0.0.1", p.addr.port());
    let url = format!("https://localhost:{}/", p.addr.port());
    let ca = s.ca_path().to_str().expect("utf-8");
    for _ in 0..3 {
        curl_ok(&["-sS", "--cacert", ca, "--resolve", &resolve, &url]);
    }
    crate::common::wait_for(
        "the dead backend to be marked down",
        std::time::Duration::from_secs(30),
        || {
            let text = p.metrics_text();
            (crate::common::proxy::metric(
                &text,
                "vaultgate_proxy_backend_up",
                &[&format!("backend=\"{dead}\"")],
            ) == 0.0
                && text.contains(&format!("backend=\"{dead}\"")))
            .then_some(())
        },
    );

    // Self-contained: nothing to load from elsewhere, and a policy that
    // forbids it.
    let page = format!("http://{metrics}/status");
    let head =
        String::from_utf8(curl_ok(&["-sS", "-D", "-", "-o", "/dev/null", &page])).expect("utf-8");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    let html = String::from_utf8(curl_ok(&["-sS", &page])).expect("utf-8");
    for outside in ["http:", "https:", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(outside), "the page refers to {outside:?}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let shot = s.path("status.png");
    chromium(
        &dir.path().join("profile-shot"),
        &[&format!("--screenshot={}", shot.display())],
        &page,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    if let Ok(keep) = std::env::var("VG_KEEP_SCREENSHOT") {
        std::fs::write(keep, &png).expect("keep the screenshot");
    }
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a screenshot of {} bytes",
        png.len()
    );

    let dom = chromium(&dir.path().join("profile-dom"), &["--dump-dom"], &page);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not finish: {dom}"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page reports an error: {dom}"
    );

    let backends = table(&dom, "backends");
    assert!(
        backends.contains("<tr class=\"up\"><td>web</td>")
            && backends.contains(&backend.addr.to_string()),
        "{backends}"
    );
    let dead_row = backends
        .split("<tr")
        .find(|r| r.contains(&dead.to_string()))
        .unwrap_or_else(|| panic!("no row for {dead}: {backends}"));
    assert!(dead_row.contains("class=\"down\""), "{dead_row}");

    let certs = table(&dom, "certs");
    assert!(
        certs.contains("<td>localhost</td>") && certs.contains("vault:tls-local"),
        "{certs}"
    );
    // Valid for a day: 23h or 24h left, and key version 1.
    assert!(
        certs.contains("<td class=\"left\">23h") || certs.contains("<td class=\"left\">1d 0h"),
        "{certs}"
    );
    assert!(certs.contains("<td>1</td>"), "{certs}");

    let vault = table(&dom, "vault");
    assert!(
        vault.contains(&s.vault.socket.display().to_string()),
        "{vault}"
    );
    assert!(vault.contains("class=\"up\""), "{vault}");

    let listeners = table(&dom, "listeners");
    assert!(listeners.contains(&p.addr.to_string()), "{listeners}");

    let traffic = table(&dom, "traffic");
    assert!(
        traffic.contains("<td class=\"num\" id=\"t-full\">"),
        "{traffic}"
    );
    let full = traffic
        .split("id=\"t-full\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{traffic}"));
    assert!(full >= 1.0, "full handshakes shown: {traffic}");
    let requests = traffic
        .split("id=\"t-requests\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{traffic}"));
    assert!(requests >= 3.0, "requests shown: {traffic}");
    assert!(dom.contains("<canvas id=\"c-rps\""), "{dom}");
}
