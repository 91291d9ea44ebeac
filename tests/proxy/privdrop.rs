//! `[proxy] user`: started as root, the proxy binds a privileged port and
//! writes its pid file, then switches to its user for good before it
//! reaches the vault, which therefore sees (and audits) that user.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, config, https_get, ProxyProc, TestCa};
use crate::common::vault::{user_config, Opts, VaultProc};
use crate::common::{assert_runs_as, require_root, require_user, wait_for};
use crate::Setup;

/// A loopback port in 600..1000 (privileged, and clear of the well-known
/// services below) that nothing listens on at the moment.
fn privileged_port(avoid: u16) -> Option<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let port = 600 + (seed % 400) as u16;
    (port != avoid && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()).then_some(port)
}

#[test]
fn the_proxy_binds_a_privileged_port_then_serves_as_its_user() {
    require_root("the proxy must start as root to bind a port below 1024");
    let (nobody, _) = require_user("nobody");
    let (www, www_gid) = require_user("www-data");
    // The vault runs as nobody; its socket is for the www-data group, and
    // www-data may use the TLS keys and nothing else.
    let vault = VaultProc::start_with(Opts {
        config: Some(user_config(
            "nobody",
            www_gid,
            &[("user:www-data", r#""tls-*""#, r#""use""#)],
        )),
        ..Opts::default()
    });
    assert_runs_as(vault.child.id() as i32, nobody, nobody, &[nobody]);
    let dir = tempfile::Builder::new()
        .prefix("vg-priv-proxy-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    // www-data reads the certificates (at start and on every reload) and
    // the config (on reload).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new(dir.path());
    let s = Setup { vault, ca, dir };
    let nginx = Nginx::start("n1");
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let pid_file = s.path("proxy.pid");
    let cfg = |listen: &str| {
        config(
            &s.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-local")],
            &[nginx.addr],
            &format!("user = \"www-data\"\npid_file = \"{}\"", pid_file.display()),
            "",
        )
        // the first `listen` (not `metrics_listen`, which follows)
        .replacen(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = {listen}"),
            1,
        )
    };
    let path = s.path("proxy.toml");
    let path_arg = path.display().to_string();
    let (mut started, mut last) = (None, String::new());
    for _ in 0..30 {
        let Some(port) = privileged_port(0) else {
            continue;
        };
        std::fs::write(&path, cfg(&format!("\"127.0.0.1:{port}\""))).unwrap();
        match ProxyProc::try_spawn(s.dir.path(), &["proxy", "--config", &path_arg]) {
            Ok(p) => {
                started = Some((p, port));
                break;
            }
            // taken between our check and its bind: another port
            Err(e) if e.contains("Address already in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    let (p, port) = started.unwrap_or_else(|| panic!("no free port in 600..1000: {last}"));
    assert_eq!(p.addr.port(), port);
    let pid = p.pid();
    assert_runs_as(pid, www, www_gid, &[www_gid]);
    assert!(
        p.log().contains("proxy switched to its user for good"),
        "{}",
        p.log()
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );

    // It serves HTTPS, signing each full handshake in the vault as www-data.
    let client = client_config(s.ca_path(), false, &[]);
    let got = https_get(p.addr, "localhost", &client, "/whoami");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"n1\n"[..]));
    let line = wait_for(
        "the proxy's signature in the audit log",
        Duration::from_secs(10),
        || {
            s.vault
                .audit_log()
                .lines()
                .find(|l| {
                    l.contains("\"op\":\"sign\"")
                        && l.contains(&format!("\"uid\":{www},\"gid\":{www_gid},\"pid\":{pid}"))
                })
                .map(str::to_owned)
        },
    );
    assert!(
        line.contains("\"key\":\"tls-local\"") && line.contains("\"result\":\"ok\""),
        "{line}"
    );
    // Nothing reached the vault as root.
    assert!(!s
        .vault
        .audit_log()
        .lines()
        .any(|l| l.contains(&format!("\"pid\":{pid}")) && !l.contains(&format!("\"uid\":{www}"))));

    // A reload that adds another privileged port cannot bind it as
    // www-data: refused with the bind error, and the old config serves on.
    let other = (0..30)
        .find_map(|_| privileged_port(port))
        .expect("a second free port in 600..1000");
    std::fs::write(
        &path,
        cfg(&format!("[\"127.0.0.1:{port}\", \"127.0.0.1:{other}\"]")),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let log = wait_for("the refused reload", Duration::from_secs(10), || {
        let log = p.log();
        log.contains("config reload failed").then_some(log)
    });
    assert!(
        log.contains(&format!(
            "cannot listen on 127.0.0.1:{other}: Permission denied"
        )),
        "{log}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
    let got = https_get(p.addr, "localhost", &client, "/whoami");
    assert_eq!(got.status, 200);
}

/// `vaultgate run` keeps its proxy in-process and restarts the vault
/// child as root; it refuses `[proxy] user` (pointing at it) rather than
/// leave the proxy root while its config says otherwise.
#[test]
fn run_refuses_a_proxy_user_by_its_location() {
    let dir = tempfile::Builder::new()
        .prefix("vg-priv-run-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let path = dir.path().join("run.toml");
    std::fs::write(
        &path,
        "[vault]\nsocket = \"v.sock\"\nstate_dir = \"state\"\n\n[proxy]\nuser = \"www-data\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("vaultgate run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6:8: `vaultgate run` does not switch the proxy to a user",
            path.display()
        )),
        "{err}"
    );
    assert!(!dir.path().join("state").exists() && !dir.path().join("v.sock").exists());
}

/// The vault children of `pid` (each thread lists the children it started).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// `vaultgate run` with `[vault] user`: `run` stays root, its vault child
/// switches to the user, and a killed vault is restarted as that user,
/// finding its state.
#[test]
fn run_with_a_vault_user_restarts_the_vault_as_that_user() {
    require_root("run must start as root for its vault child to switch users");
    let (nobody, nogroup) = require_user("nobody");
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-priv-run-")
        .tempdir_in("/tmp")
        .expect("temp");
    // nobody must reach its state dir below this one
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = crate::run::run_config(dir.path(), nginx.addr);
    // run's bootstrap (as root) needs a grant: `owner` is now nobody.
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "\n[proxy]\n",
        "\nuser = \"nobody\"\n[[vault.grant]]\nprincipal = \"uid:0\"\nkeys = [\"*\"]\nops = [\"all\"]\n\n[proxy]\n",
        1,
    );
    assert!(text.contains("user = \"nobody\""));
    std::fs::write(&cfg, text).unwrap();
    let cfg_s = cfg.display().to_string();
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg_s]);
    let first = p.vault_pid();
    assert_runs_as(first, nobody, nogroup, &[nogroup]);
    let ca = dir.path().join("certs/dev-ca.pem");
    let get = || {
        std::panic::catch_unwind(|| {
            https_get(
                p.addr,
                "localhost",
                &client_config(&ca, false, &[]),
                "/whoami",
            )
            .status
        })
        .unwrap_or(0)
    };
    assert_eq!(get(), 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill vault");
    wait_for(
        "handshakes after the vault restart",
        Duration::from_secs(20),
        || (get() == 200).then_some(()),
    );
    let again = wait_for("the restarted vault", Duration::from_secs(10), || {
        children(p.pid()).into_iter().find(|c| *c != first)
    });
    assert_runs_as(again, nobody, nogroup, &[nogroup]);
    let state = dir.path().join("var/vault");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), nobody);
}
