//! SIGHUP re-reads the whole proxy config: a valid one changes upstreams
//! (and everything else reloadable) for new requests; an invalid one is
//! refused with its location, and the running config keeps serving.

use std::time::Duration;

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, config, https_get, metric, ProxyProc};
use crate::common::wait_for;
use crate::Setup;

#[test]
fn sighup_reloads_the_config_and_an_invalid_one_changes_nothing() {
    let s = Setup::start();
    let (n1, n2) = (Nginx::start("n1"), Nginx::start("n2"));
    let cert = s.vault_cert("tls-reload", "ecdsa-p256", &["localhost"]);
    let cfg = |backend| {
        config(
            &s.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-reload")],
            &[backend],
            &format!(
                "pid_file = \"{}\"",
                s.dir.path().join("proxy.pid").display()
            ),
            "",
        )
    };
    let p = ProxyProc::start(s.dir.path(), &cfg(n1.addr));
    let path = s.dir.path().join("proxy.toml");
    let client = client_config(s.ca_path(), false, &[]);
    let whoami = || https_get(p.addr, "localhost", &client, "/whoami");
    assert_eq!(whoami().body, b"n1\n");
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };

    // The upstream moves to n2 (`vaultgate reload`: validate, then signal
    // the pid in pid_file): new requests go there, none fails.
    std::fs::write(&path, cfg(n2.addr)).expect("write config");
    let out = std::process::Command::new(crate::common::bin())
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .expect("vaultgate reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("requests to reach n2", Duration::from_secs(10), || {
        let f = whoami();
        assert_eq!(f.status, 200);
        (f.body == b"n2\n").then_some(())
    });

    // An invalid config: refused with file, line and column; n2 still serves.
    std::fs::write(
        &path,
        cfg(n1.addr).replace("backends = [", "backends = [42, "),
    )
    .expect("write");
    hup();
    wait_for("the refused reload", Duration::from_secs(10), || {
        p.log().contains("config reload failed").then_some(())
    });
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reload failed"))
        .expect("log line");
    assert!(
        line.contains("proxy.toml:") && line.contains("running config stays"),
        "{line}"
    );
    for _ in 0..5 {
        assert_eq!(whoami().body, b"n2\n");
    }
    let m = p.metrics_text();
    assert_eq!(
        metric(
            &m,
            "vaultgate_proxy_config_reloads_total",
            &["result=\"ok\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "vaultgate_proxy_config_reloads_total",
            &["result=\"error\""]
        ),
        1.0
    );
}
