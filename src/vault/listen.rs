//! Sockets bound early and listening late. The vault binds its Unix
//! socket and TCP ports while it is still root (a port below 1024, a
//! socket directory only root may write) but calls `listen(2)` only once
//! the keystore is open: until then a caller's `connect` is refused at
//! once and it tries its next vault, instead of completing into the
//! kernel's backlog and waiting there for answers that cannot come yet
//! (opening a keystore on etcd can take seconds).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn, SockaddrIn6, UnixAddr,
};

/// As deep as tokio's and std's own listeners: a burst of proxies
/// reconnecting after a restart is not refused.
const BACKLOG: i32 = 1024;

/// A socket bound to its address, not yet accepting connections.
#[derive(Debug)]
pub struct Bound(OwnedFd);

/// A Unix stream socket bound at `path` (created with the process umask).
pub fn unix(path: &Path) -> std::io::Result<Bound> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(Bound(fd))
}

/// A TCP socket bound to `addr`, with SO_REUSEADDR as std's listeners
/// have it (a restart does not wait out TIME_WAIT).
pub fn tcp(addr: SocketAddr) -> std::io::Result<Bound> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    Ok(Bound(fd))
}

impl Bound {
    /// Where it is bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        std::net::TcpListener::from(self.0.try_clone()?).local_addr()
    }

    fn listen(self) -> std::io::Result<OwnedFd> {
        listen(&self.0, Backlog::new(BACKLOG)?)?;
        Ok(self.0)
    }

    /// Starts accepting, as a tokio listener (call within the runtime).
    pub fn listen_unix(self) -> std::io::Result<tokio::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::from(self.listen()?);
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }

    /// Starts accepting, as a tokio listener (call within the runtime).
    pub fn listen_tcp(self) -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::from(self.listen()?);
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_socket_refuses_until_it_listens() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let bound = unix(&path).expect("bind");
        let refused = std::os::unix::net::UnixStream::connect(&path).expect_err("not listening");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let _listener = rt.block_on(async { bound.listen_unix() }).expect("listen");
        std::os::unix::net::UnixStream::connect(&path).expect("listening");

        let bound = tcp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = bound.local_addr().expect("addr");
        let refused = std::net::TcpStream::connect(addr).expect_err("not listening");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let _listener = rt.block_on(async { bound.listen_tcp() }).expect("listen");
        std::net::TcpStream::connect(addr).expect("listening");
    }
}
