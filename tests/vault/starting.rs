//! A starting vault accepts no connection before it can answer one: its
//! socket is bound, but a connect is refused until the keystore is open,
//! so a proxy moves on to its next vault at once instead of waiting.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{bin, wait_for};

#[test]
fn a_vault_opening_its_keystore_refuses_connections_until_it_can_answer() {
    // An "etcd" that takes connections into its backlog and never
    // answers: opening the keystore waits on it until the store's bound.
    let etcd = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "[vault.store]\nkind = \"etcd\"\nendpoints = [\"http://{}\"]\nprefix = \"/t/\"\nnode = \"a\"\n",
            etcd.local_addr().expect("addr")
        ),
    )
    .expect("config");
    let socket = dir.path().join("vault.sock");
    let mut child = Command::new(bin())
        .arg("vault")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vault");
    wait_for("the socket bound", Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vault exited ({status}) before binding its socket");
        }
        socket.exists().then_some(())
    });
    // Bound, still opening: every connect is refused, none left hanging.
    let mut refused = 0;
    while child.try_wait().expect("wait").is_none() && socket.exists() {
        match UnixStream::connect(&socket) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => break,
            Err(e) => panic!("connect to a starting vault: {e}"),
            Ok(_) => panic!("a starting vault accepted a connection before it could answer"),
        }
        if refused >= 20 {
            break;
        }
    }
    assert!(
        refused >= 1,
        "no connect attempt while the vault was opening"
    );
    // The store never answers: the start fails, naming why.
    let out = child.wait_with_output().expect("vault exit");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store unavailable"), "{stderr}");
}
