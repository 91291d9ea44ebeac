//! Telling the service manager how the process is doing, in systemd's
//! `sd_notify` protocol: one datagram of `KEY=VALUE` lines to the Unix
//! socket `$NOTIFY_SOCKET` names (a path, or `@name` in the abstract
//! namespace). A unit with `Type=notify` is started once `READY=1`
//! arrives, so units ordered after it start when it serves, not when its
//! process exists. Without `$NOTIFY_SOCKET` (not under systemd) every
//! call does nothing.
//!
//! A few lines over a datagram socket, as the protocol's own docs
//! describe it; no library needed.

use std::os::unix::net::UnixDatagram;

/// Serving: listeners bound, the vault's socket answering.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// A reload began (`READY=1` follows when it ended, however it went).
pub fn reloading() {
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    // MONOTONIC_USEC is what Type=notify-reload (systemd 253) needs to
    // match the message to its signal; older managers ignore it.
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// Shutting down: draining, then exit.
pub fn stopping() {
    send("STOPPING=1");
}

/// Sends `state`; a failure is logged at debug level only (the manager
/// is gone, or this is not one).
fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, state) {
        tracing::debug!(socket = ?target, error = %e, "sd_notify failed");
    }
}

fn send_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), std::path::Path::new(target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send_to(path.as_os_str(), "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vaultgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::send_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
