//! Readiness told to systemd: with `$NOTIFY_SOCKET` set (as a
//! `Type=notify` unit has it), the proxy sends `READY=1` once it serves,
//! `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` on
//! shutdown, each a datagram in `sd_notify`'s format.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common::backends::Recorder;
use crate::common::proxy::{config, ProxyProc};
use crate::Setup;

fn next(sock: &UnixDatagram, p: &ProxyProc) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no datagram from the proxy ({e}); its log:\n{}", p.log()));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_proxy_tells_systemd_it_is_ready_reloading_and_stopping() {
    let s = Setup::start();
    let backend = Recorder::start();
    let path = s.path("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let cert = s.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
    let cfg = config(
        &s.vault.socket,
        &[(&["localhost"], &cert, "vault:tls-local")],
        &[backend.addr],
        "",
        "",
    );
    let p = ProxyProc::start_env(
        s.dir.path(),
        &cfg,
        &[("NOTIFY_SOCKET", Some(path.to_str().expect("utf-8")))],
    );
    let ready = next(&sock, &p);
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving on "),
        "{ready:?}"
    );
    assert!(ready.contains(&p.addr.to_string()), "{ready:?}");

    let signal = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), sig).expect("signal");
    };
    signal(nix::sys::signal::Signal::SIGHUP);
    let reloading = next(&sock, &p);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let usec: u64 = reloading
        .rsplit('=')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec > 0, "{reloading:?}");
    assert_eq!(next(&sock, &p), "READY=1\nSTATUS=serving; config reloaded");

    // A file the proxy refuses: still READY=1 (it serves the old config),
    // and the status says why.
    std::fs::write(s.path("proxy.toml"), "[proxy]\nlisten = 8443\n").expect("break the config");
    signal(nix::sys::signal::Signal::SIGHUP);
    assert!(next(&sock, &p).starts_with("RELOADING=1\n"));
    let after = next(&sock, &p);
    assert!(
        after.starts_with("READY=1\nSTATUS=serving; the last reload failed: "),
        "{after:?}"
    );

    signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(next(&sock, &p), "STOPPING=1");
}
