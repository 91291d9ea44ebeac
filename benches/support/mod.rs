//! Shared by the benchmarks: a real `vaultgate vault` process on a temp
//! socket, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Vault {
    pub child: Child,
    _dir: tempfile::TempDir,
    pub socket: std::path::PathBuf,
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the vault and returns once it prints `ready`. `VAULTGATE_BIN`
/// names another build of the binary, for A/B runs of one bench build
/// against an old and a new vault.
pub fn start_vault() -> Vault {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("v.sock");
    let bin =
        std::env::var_os("VAULTGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_vaultgate").into());
    let mut child = Command::new(bin)
        .arg("vault")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--ready-line")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn vault");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ready") => break,
            Some(Ok(_)) => {}
            _ => panic!("vault did not start"),
        }
    }
    // Keep draining so the vault never blocks on its stdout.
    std::thread::spawn(move || for _ in lines {});
    Vault {
        child,
        _dir: dir,
        socket,
    }
}
