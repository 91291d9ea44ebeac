//! Keep-alive connections to one backend. A connection is parked here the
//! moment the answer it carried is read whole, and taken by the next
//! request, newest first (it is the least likely to have been closed by
//! the backend's own keep-alive timeout).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::OriginError;
use crate::sync::Locked;

/// How long an idle connection is kept (hyper-util's default was the
/// same; nginx keeps them until `keepalive_timeout`, 60 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a backend and what was read from it but not yet used.
#[derive(Debug)]
pub struct OriginConn {
    pub tcp: TcpStream,
    pub buf: BytesMut,
}

/// The connection pool of one backend: its idle keep-alive connections,
/// and how to make a new one.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// Written first on every new connection (a PROXY protocol header).
    preface: Option<Box<[u8]>>,
    max: usize,
    /// Oldest first.
    parked: Mutex<Vec<(OriginConn, Instant)>>,
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        preface: Option<Vec<u8>>,
        max: usize,
    ) -> Pool {
        Pool {
            addr,
            connect_timeout,
            preface: preface.map(Vec::into_boxed_slice),
            max,
            parked: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The newest idle connection that is still open.
    pub fn take(&self) -> Option<OriginConn> {
        let mut parked = self.parked.locked();
        while let Some((conn, since)) = parked.pop() {
            if since.elapsed() < IDLE_TIMEOUT && still_open(&conn.tcp) {
                return Some(conn);
            }
        }
        None
    }

    /// Parks a connection whose last answer was read whole.
    pub fn put(&self, conn: OriginConn) {
        let mut parked = self.parked.locked();
        if parked.len() >= self.max {
            // The oldest goes: the newest are the likeliest to be reused.
            parked.remove(0);
        }
        parked.push((conn, Instant::now()));
    }

    /// Closes idle connections that expired or that the backend closed,
    /// so that a quiet proxy does not hold them open.
    pub fn prune(&self) {
        let mut parked = self.parked.locked();
        parked.retain(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && still_open(&conn.tcp));
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.parked.locked().len()
    }

    /// A new connection, its preface written.
    pub async fn connect(&self) -> Result<OriginConn, OriginError> {
        let timeout = self.connect_timeout;
        let mut tcp = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| OriginError::ConnectTimeout(timeout))?
            .map_err(OriginError::Connect)?;
        // Requests are written whole; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        if let Some(preface) = &self.preface {
            tcp.write_all(preface).await.map_err(OriginError::Connect)?;
        }
        Ok(OriginConn {
            tcp,
            buf: BytesMut::new(),
        })
    }
}

/// Whether an idle connection can carry a request: the backend has neither
/// closed it nor sent anything unasked. No syscall unless the reactor saw
/// the socket become readable.
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener, idle: &Pool) -> (OriginConn, TcpStream) {
        let (conn, accepted) = tokio::join!(idle.connect(), listener.accept());
        (conn.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Pool::new(
            listener.local_addr().unwrap(),
            Duration::from_secs(1),
            None,
            4,
        );
        let (a, a_peer) = pair(&listener, &idle).await;
        let (b, _b_peer) = pair(&listener, &idle).await;
        let b_port = b.tcp.local_addr().unwrap().port();
        idle.put(b);
        idle.put(a);
        drop(a_peer);
        // The reactor learns of the close asynchronously; wait for it.
        let taken = loop {
            let t = idle.take().expect("one open connection");
            if t.tcp.local_addr().unwrap().port() == b_port {
                break t;
            }
            idle.put(t);
            tokio::task::yield_now().await;
        };
        assert_eq!(taken.tcp.local_addr().unwrap().port(), b_port);
        assert!(idle.take().is_none());
    }

    #[tokio::test]
    async fn the_oldest_goes_when_full_and_prune_drops_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Pool::new(
            listener.local_addr().unwrap(),
            Duration::from_secs(1),
            None,
            2,
        );
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (c, p) = pair(&listener, &idle).await;
            idle.put(c);
            peers.push(p);
        }
        assert_eq!(idle.idle_count(), 2);
        peers.clear();
        while idle.idle_count() > 0 {
            tokio::task::yield_now().await;
            idle.prune();
        }
    }

    #[tokio::test]
    async fn a_preface_is_written_first() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Pool::new(
            listener.local_addr().unwrap(),
            Duration::from_secs(1),
            Some(b"PREFACE".to_vec()),
            1,
        );
        let (_c, mut peer) = pair(&listener, &idle).await;
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PREFACE");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let idle = Pool::new(addr, Duration::from_secs(1), None, 1);
        let e = idle.connect().await.expect_err("refused");
        assert!(e.is_connect(), "{e}");
    }
}
