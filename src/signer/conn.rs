//! One blocking, pipelined connection to the vault, with no thread of its
//! own. Callers write their request frame themselves (under a lock, with a
//! send timeout so a vault that stops reading cannot hold them); then,
//! while they wait, one of them at a time reads the socket for all of them
//! and hands the others the answers it finds (answers may come in any
//! order, matched by request id). The vault's answer so wakes the thread
//! that asked for it: a reader thread in between cost a context switch, a
//! read and a futex wake per signature, all on the proxy's busy core.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::endpoint::Endpoint;
use crate::protocol::{frame, Frame};
use crate::sync::Locked;

/// A live connection. Dropping it closes the socket.
pub struct Conn {
    /// The write half and a reused encode buffer.
    writer: Mutex<(Link, BytesMut)>,
    /// The read half; used only by the caller whose turn it is to read.
    reader: Mutex<Reader>,
    state: Mutex<State>,
    dead: AtomicBool,
    next_id: AtomicU32,
    stream: Link,
}

struct Reader {
    stream: Link,
    buf: BytesMut,
    chunk: Box<[u8]>,
}

#[derive(Default)]
struct State {
    /// Requests sent and neither answered to their caller nor given up.
    pending: HashMap<u32, Waiter>,
    /// Whether a caller is reading the socket for everyone.
    reading: bool,
}

struct Waiter {
    answer: Option<Frame>,
    /// Whether its caller sleeps on `wake` (and so can take over reading).
    parked: bool,
    wake: Arc<Condvar>,
}

/// A request written to the vault, whose answer [`Conn::wait`] collects.
pub struct Sent {
    pub id: u32,
    wake: Arc<Condvar>,
}

/// Why [`Conn::wait`] returned without an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// Not yet answered; the request is still pending.
    Timeout,
    /// The connection died; no answer will come.
    Closed,
}

/// A write that cannot finish in this long means the vault stopped
/// reading: the connection is dropped (a partial frame cannot be undone).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The reading caller's blocking read returns at least this often, so it
/// can notice its own deadline.
const READ_TICK: Duration = Duration::from_millis(1);

/// The bytes under a connection: a Unix socket, or TLS over TCP.
enum Link {
    Unix(UnixStream),
    Tls(Arc<TlsLink>),
}

/// A TLS session over one TCP socket. The socket is read without the
/// session's lock (a blocking read would hold off every writer); what
/// came is then fed to the session under it.
struct TlsLink {
    tcp: TcpStream,
    session: Mutex<rustls::ClientConnection>,
}

/// How long a connect to a `tls://` vault, and its handshake, may take.
const TLS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Link {
    fn connect(
        endpoint: &Endpoint,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<Link> {
        match endpoint {
            Endpoint::Unix(path) => Ok(Link::Unix(UnixStream::connect(path)?)),
            Endpoint::Tls { host, port } => {
                let config = tls.ok_or_else(|| {
                    std::io::Error::other("no [proxy.vault_tls] to connect over TLS with")
                })?;
                let tcp = connect_tcp(host, *port)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
                let mut session = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                tcp.set_read_timeout(Some(TLS_CONNECT_TIMEOUT))?;
                tcp.set_write_timeout(Some(TLS_CONNECT_TIMEOUT))?;
                let mut io = &tcp;
                while session.is_handshaking() {
                    session.complete_io(&mut io)?;
                }
                Ok(Link::Tls(Arc::new(TlsLink {
                    tcp,
                    session: Mutex::new(session),
                })))
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Link> {
        match self {
            Link::Unix(s) => s.try_clone().map(Link::Unix),
            Link::Tls(t) => Ok(Link::Tls(t.clone())),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Link::Unix(s) => s.set_write_timeout(Some(t)),
            Link::Tls(l) => l.tcp.set_write_timeout(Some(t)),
        }
    }

    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Link::Unix(s) => s.set_read_timeout(Some(t)),
            Link::Tls(l) => l.tcp.set_read_timeout(Some(t)),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Unix(s) => s.write_all(data),
            Link::Tls(l) => {
                let mut session = lock(&l.session);
                session.writer().write_all(data)?;
                let mut io = &l.tcp;
                while session.wants_write() {
                    session.write_tls(&mut io)?;
                }
                Ok(())
            }
        }
    }

    /// One read, its plaintext appended to `buf`: `Ok(0)` once the vault
    /// closed; the socket's timeout passes through as an error.
    fn read_into(&mut self, chunk: &mut [u8], buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Link::Unix(s) => {
                let n = s.read(chunk)?;
                buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Link::Tls(l) => {
                let n = (&l.tcp).read(chunk)?;
                if n == 0 {
                    return Ok(0);
                }
                let mut session = lock(&l.session);
                let mut input = &chunk[..n];
                let before = buf.len();
                // Fed a record at a time and drained as it goes: the
                // session buffers only so much plaintext unread.
                while !input.is_empty() {
                    session.read_tls(&mut input)?;
                    session
                        .process_new_packets()
                        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
                    let mut plain = [0u8; 4096];
                    loop {
                        match session.reader().read(&mut plain) {
                            Ok(0) => return Ok(0),
                            Ok(m) => buf.extend_from_slice(&plain[..m]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                // A session message (a key update) may need an answer.
                let mut io = &l.tcp;
                while session.wants_write() {
                    session.write_tls(&mut io)?;
                }
                // Only session messages came: nothing to deliver, but
                // the connection is alive.
                Ok((buf.len() - before).max(1))
            }
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Link::Unix(s) => s.as_fd(),
            Link::Tls(l) => l.tcp.as_fd(),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Link::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Link::Tls(l) => l.tcp.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// The first address of `host` that takes a connection.
fn connect_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, TLS_CONNECT_TIMEOUT) {
            Ok(s) => {
                // Answers are small and latency is the point.
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Conn {
    pub fn connect(
        endpoint: &Endpoint,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<Conn> {
        let stream = Link::connect(endpoint, tls)?;
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        writer.set_write_timeout(SEND_TIMEOUT)?;
        reader.set_read_timeout(READ_TICK)?;
        Ok(Conn {
            writer: Mutex::new((writer, BytesMut::with_capacity(1024))),
            reader: Mutex::new(Reader {
                stream: reader,
                buf: BytesMut::with_capacity(16 * 1024),
                chunk: vec![0u8; 16 * 1024].into_boxed_slice(),
            }),
            state: Mutex::new(State::default()),
            dead: AtomicBool::new(false),
            next_id: AtomicU32::new(1),
            stream,
        })
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// The socket, for the supervisor to watch for the vault's hang-up
    /// (a hang-up is noticed without reading, so idle connections too).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.fd()
    }

    /// Gives the connection up: the vault hung up (or it is unusable).
    /// Waiters get [`WaitError::Closed`] and retry elsewhere.
    pub fn close(&self) {
        if !self.is_dead() {
            self.mark_dead();
        }
    }

    /// Writes `make(id)`; `None` if the connection is (now) dead.
    pub fn send(&self, make: impl FnOnce(u32) -> Frame) -> Option<Sent> {
        if self.is_dead() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Condvar::new());
        // Registered before the write: the answer may beat us back.
        lock(&self.state).pending.insert(
            id,
            Waiter {
                answer: None,
                parked: false,
                wake: wake.clone(),
            },
        );
        let sent = {
            let mut w = lock(&self.writer);
            let (stream, buf) = &mut *w;
            buf.clear();
            // Oversized frames were refused before this point.
            make(id).encode(buf).is_ok() && stream.write_all(buf).is_ok()
        };
        if !sent {
            self.mark_dead();
        }
        // mark_dead may have cleared the map just before the insert:
        // nobody would ever answer this request.
        if self.is_dead() {
            lock(&self.state).pending.remove(&id);
            return None;
        }
        Some(Sent { id, wake })
    }

    /// Waits until `until` for the answer to `sent`. While no other caller
    /// reads the socket, this one does, for everyone. On
    /// [`WaitError::Timeout`] the request stays pending: wait again, or
    /// [`Conn::cancel`] it.
    pub fn wait(&self, sent: &Sent, until: Instant) -> Result<Frame, WaitError> {
        let mut st = lock(&self.state);
        loop {
            let Some(w) = st.pending.get_mut(&sent.id) else {
                // Cleared when the connection died.
                return Err(WaitError::Closed);
            };
            if let Some(f) = w.answer.take() {
                st.pending.remove(&sent.id);
                return Ok(f);
            }
            let now = Instant::now();
            if now >= until {
                return Err(WaitError::Timeout);
            }
            if !st.reading {
                st.reading = true;
                drop(st);
                let alive = self.read_once();
                st = lock(&self.state);
                st.reading = false;
                if !alive {
                    drop(st);
                    self.mark_dead();
                    return Err(WaitError::Closed);
                }
                let answered = st.pending.get(&sent.id).is_some_and(|w| w.answer.is_some());
                if answered || Instant::now() >= until {
                    // Leaving: whoever still waits reads from now on.
                    hand_over(&st);
                }
                continue;
            }
            if let Some(w) = st.pending.get_mut(&sent.id) {
                w.parked = true;
            }
            st = match sent.wake.wait_timeout(st, until - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            if let Some(w) = st.pending.get_mut(&sent.id) {
                w.parked = false;
            }
        }
    }

    /// Forgets a request whose caller gave up, so a late answer is dropped.
    pub fn cancel(&self, id: u32) {
        lock(&self.state).pending.remove(&id);
    }

    /// One read (at most [`READ_TICK`] long) and the delivery of every
    /// complete answer in it; false once the connection is unusable.
    fn read_once(&self) -> bool {
        let mut r = lock(&self.reader);
        let Reader { stream, buf, chunk } = &mut *r;
        match stream.read_into(chunk, buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                return true
            }
            Err(_) => return false,
        };
        let mut st = lock(&self.state);
        loop {
            match frame::decode(buf) {
                Ok(Some(f)) => {
                    // An id nobody waits for was cancelled: dropped.
                    if let Some(w) = st.pending.get_mut(&f.request_id) {
                        w.answer = Some(f);
                        // A waiter not parked (this reader itself, or one
                        // about to look) needs no wake-up: a notify costs
                        // a futex call even when nobody sleeps.
                        if w.parked {
                            w.wake.notify_one();
                        }
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "vault sent an invalid frame; dropping the connection");
                    return false;
                }
            }
        }
    }

    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
        self.stream.shutdown();
        // Every waiter wakes to find its request gone: "closed".
        let mut st = lock(&self.state);
        for w in st.pending.values() {
            w.wake.notify_one();
        }
        st.pending.clear();
    }
}

/// Wakes one caller still waiting, to take over reading.
fn hand_over(st: &State) {
    if let Some(w) = st.pending.values().find(|w| w.parked && w.answer.is_none()) {
        w.wake.notify_one();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders never panic mid-update; a poisoned map of waiters is still usable.
    m.locked()
}
