//! Outside TLS scanners against the proxy's listener, its key in the vault
//! and its certificate from the test CA (which both scanners are told to
//! trust): testssl.sh finds no HIGH or CRITICAL issue, and sslyze finds the
//! listener compliant with Mozilla's "intermediate" configuration.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::backends::Nginx;
use crate::common::proxy::{config, pool, ProxyProc};
use crate::common::require_tool;
use crate::Setup;

/// The proxy in front of `backend`, its ECDSA P-256 key in the vault and
/// a certificate for `localhost` from the test CA, valid for 90 days like
/// a real one (a shorter life is itself a finding).
fn proxy(s: &Setup, backend: std::net::SocketAddr) -> ProxyProc {
    s.vault
        .ok(&["key", "create", "tls-scan", "--type", "ecdsa-p256"]);
    let names = vec!["localhost".to_owned()];
    let pem = vaultgate::devca::issue_leaf(
        &s.ca.ca,
        &pool(&s.vault),
        "tls-scan",
        &names,
        Duration::from_secs(90 * 86400),
    )
    .expect("issue");
    let cert = s.path("tls-scan.pem");
    std::fs::write(&cert, pem).expect("write cert");
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-scan")],
        &[backend],
        "",
        "",
    );
    ProxyProc::start(s.dir.path(), &cfg)
}

/// testssl findings that belong to the certificate the test issues, not
/// to the server: a private CA's certificates carry no CRL or OCSP URI.
const CERTIFICATE_ONLY: &[&str] = &["cert_revocation"];

/// sslyze, from PyPI: the venv scripts/test.sh makes, or PATH.
fn sslyze() -> PathBuf {
    let venv = PathBuf::from("/opt/vaultgate-test-venv/bin/sslyze");
    if venv.is_file() {
        return venv;
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("sslyze"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`sslyze` is needed by this test and is not installed: run scripts/test.sh \
                 (it installs sslyze from PyPI into /opt/vaultgate-test-venv), or \
                 `python3 -m venv /opt/vaultgate-test-venv && /opt/vaultgate-test-venv/bin/pip install sslyze`"
            )
        })
}

#[test]
fn testssl_finds_no_high_or_critical_issue() {
    let testssl = require_tool("testssl", "testssl.sh");
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = proxy(&s, nginx.addr);
    let json = s.path("testssl.json");
    // Protocols, cipher lists, forward secrecy, server preferences, server
    // defaults (certificate, resumption) and every vulnerability check:
    // all that can be HIGH or CRITICAL. Left out: HTTP headers and client
    // simulation (informational, and half the run time).
    let out = Command::new(testssl)
        .args(["--quiet", "--color", "0", "--warnings", "off", "--add-ca"])
        .arg(s.ca_path())
        .args(["-p", "-s", "-f", "-P", "-S", "-U", "--jsonfile"])
        .arg(&json)
        .arg(format!("localhost:{}", p.addr.port()))
        .output()
        .expect("run testssl");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<serde_json::Value> = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("testssl wrote no JSON report:\n{report}"));
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("testssl did not report {id}:\n{report}"))
    };
    // It did scan this server: what it saw is what the proxy offers.
    assert!(finding("TLS1_3").starts_with("offered"), "{report}");
    assert!(finding("TLS1_2").starts_with("offered"), "{report}");
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(old), "not offered", "{old}");
    }
    assert_eq!(finding("cert_chain_of_trust"), "passed.", "{report}");
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .filter(|f| !CERTIFICATE_ONLY.contains(&f["id"].as_str().unwrap_or_default()))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl: {bad:#?}\n{report}");
}

#[test]
fn sslyze_finds_the_listener_compliant_with_mozilla_intermediate() {
    let sslyze = sslyze();
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = proxy(&s, nginx.addr);
    let json = s.path("sslyze.json");
    let out = Command::new(sslyze)
        .arg("--mozilla_config=intermediate")
        .arg("--certinfo_ca_file")
        .arg(s.ca_path())
        .arg("--json_out")
        .arg(&json)
        .arg(format!("localhost:{}", p.addr.port()))
        .output()
        .expect("run sslyze");
    let report = String::from_utf8_lossy(&out.stdout);
    // Non-zero when not compliant; the reasons are at the end.
    assert!(
        out.status.success() && report.contains("OK - Compliant"),
        "sslyze ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let scan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("sslyze JSON")).expect("JSON");
    let result = &scan["server_scan_results"][0];
    assert_eq!(result["scan_status"], "COMPLETED", "{report}");
    // Every scan ran (an error in one is not a pass), and the chain is
    // trusted through the test CA.
    let commands = result["scan_result"].as_object().expect("scan_result");
    for (name, r) in commands {
        assert_ne!(r["status"], "ERROR", "{name}: {r}");
    }
    let deployments =
        &result["scan_result"]["certificate_info"]["result"]["certificate_deployments"];
    assert!(
        deployments[0]["path_validation_results"]
            .as_array()
            .expect("path validation")
            .iter()
            .any(|v| v["was_validation_successful"] == true),
        "{report}"
    );
}
