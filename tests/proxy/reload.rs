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

#[test]
fn reload_reports_the_running_process_verdict_and_never_signals_a_stranger() {
    let s = Setup::start();
    let n1 = Nginx::start("n1");
    let cert = s.vault_cert("tls-verdict", "ecdsa-p256", &["localhost"]);
    let pid_file = s.dir.path().join("proxy.pid");
    let cfg = |cert: &std::path::Path| {
        config(
            &s.vault.socket,
            &[(&["localhost"], cert, "vault:tls-verdict")],
            &[n1.addr],
            &format!("pid_file = \"{}\"", pid_file.display()),
            "",
        )
    };
    let p = ProxyProc::start(s.dir.path(), &cfg(&cert));
    let path = s.dir.path().join("proxy.toml");
    let reload = || {
        std::process::Command::new(crate::common::bin())
            .args(["reload", "--config"])
            .arg(&path)
            .output()
            .expect("vaultgate reload")
    };

    // A certificate that is not one: `reload` runs the whole check first
    // and refuses, naming it, before anything is signalled.
    let garbage = s.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    std::fs::write(&path, cfg(&garbage)).expect("write config");
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("garbage.pem")
            && err.contains("nothing was reloaded"),
        "{err}"
    );
    // Valid for the check, refused by the process (a listen address the
    // check does not bind, and something else holds): the command says
    // so, with the process's own error, and exits non-zero.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    std::fs::write(
        &path,
        cfg(&cert).replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = [\"127.0.0.1:0\", \"{taken_addr}\"]"),
            1,
        ),
    )
    .expect("write config");
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "reload of a refused config succeeded"
    );
    assert!(
        err.contains("the reload failed in the running process")
            && err.contains(&format!("cannot listen on {taken_addr}"))
            && err.contains(&format!("pid {}", p.pid())),
        "{err}"
    );
    drop(taken);
    // It still serves, and a good config reloads with exit 0.
    let client = client_config(s.ca_path(), false, &[]);
    assert_eq!(
        https_get(p.addr, "localhost", &client, "/whoami").status,
        200
    );
    std::fs::write(&path, cfg(&cert)).expect("write config");
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded its config"));

    // A stale pid file holding the pid of an unrelated process: refused,
    // and the process lives on.
    let mut stranger = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let real = std::fs::read_to_string(&pid_file).expect("pid file");
    std::fs::write(&pid_file, format!("{}\n", stranger.id())).expect("write pid file");
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stranger's pid was accepted");
    assert!(err.contains("is not the vaultgate process"), "{err}");
    assert!(
        stranger.try_wait().expect("try_wait").is_none(),
        "the unrelated process was signalled"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    std::fs::write(&pid_file, real).expect("restore pid file");
}

/// Reads one HTTP/1.1 response with a Content-Length body from a
/// keep-alive connection, `pause` after its first bytes (so a reload can
/// happen while it is in flight). `None` if the connection ends first.
fn read_response(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    mut pause: impl FnMut(),
) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut paused = false;
    loop {
        let n = tls.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if !paused {
            paused = true;
            pause();
        }
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())?;
        if raw.len() - (end + 4) >= len {
            return Some((head, raw[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// Waits for the proxy to print `listen ADDR` for an address on `ip`.
fn next_listen_line(p: &ProxyProc, ip: &str) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match p.stdout.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("listen ").filter(|a| a.starts_with(ip)) {
                    return a.parse().expect("listen address");
                }
            }
            Err(_) => panic!("no `listen {ip}:…` line within 10 s:\n{}", p.log()),
        }
    }
}

#[test]
fn reload_binds_added_listeners_and_drains_removed_ones() {
    use std::io::Write;
    let s = Setup::start();
    let n1 = Nginx::start("n1");
    // Big enough that the response is still in flight when the reload lands.
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(n1.www().join("big.bin"), &big).expect("write big file");
    let cert = s.vault_cert("tls-listen", "ecdsa-p256", &["localhost"]);
    let cfg = |listen: &str| {
        config(
            &s.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-listen")],
            &[n1.addr],
            "",
            "",
        )
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = {listen}"),
        )
    };
    let p = ProxyProc::start(s.dir.path(), &cfg(r#"["127.0.0.1:0"]"#));
    let path = s.dir.path().join("proxy.toml");
    let client = client_config(s.ca_path(), false, &[]);
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    let old_addr = p.addr;

    // A keep-alive connection on the listener that will go away, with a
    // download in flight across the reload.
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client.clone(), name).expect("client");
    let sock = std::net::TcpStream::connect(old_addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut kept = rustls::StreamOwned::new(conn, sock);
    kept.write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut new_addr = None;
    let (head, body) = read_response(&mut kept, || {
        // Move from 127.0.0.1 to 127.0.0.2 while the body streams.
        std::fs::write(&path, cfg(r#"["127.0.0.2:0"]"#)).expect("write config");
        hup();
        new_addr = Some(next_listen_line(&p, "127.0.0.2:"));
    })
    .expect("the in-flight download completes across the reload");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body == big, "the in-flight body arrived whole");
    let new_addr = new_addr.expect("new listener");

    // The added listener serves; the removed one refuses new connections,
    // and the drained keep-alive connection ends instead of taking another
    // request.
    assert_eq!(
        https_get(new_addr, "localhost", &client, "/whoami").body,
        b"n1\n"
    );
    wait_for(
        "the removed listener to close",
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(old_addr)
                .is_err()
                .then_some(())
        },
    );
    let again = kept
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()
        .and_then(|()| read_response(&mut kept, || {}));
    assert!(again.is_none(), "a drained connection takes no new request");

    // An address that cannot be bound refuses the whole reload: the
    // running listeners and config stay.
    let taken = std::net::TcpListener::bind("127.0.0.3:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    std::fs::write(&path, cfg(&format!(r#"["127.0.0.2:0", "{taken_addr}"]"#)))
        .expect("write config");
    hup();
    wait_for("the refused reload", Duration::from_secs(10), || {
        p.log().contains("config reload failed").then_some(())
    });
    assert!(
        p.log().contains(&format!("cannot listen on {taken_addr}")),
        "{}",
        p.log()
    );
    assert_eq!(
        https_get(new_addr, "localhost", &client, "/whoami").body,
        b"n1\n"
    );
    let m = p.metrics_text();
    assert_eq!(
        metric(
            &m,
            "vaultgate_proxy_config_reloads_total",
            &["result=\"error\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "vaultgate_proxy_config_reloads_total",
            &["result=\"ok\""]
        ),
        1.0
    );
}
