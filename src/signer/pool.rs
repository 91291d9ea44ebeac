//! A few persistent vault connections per endpoint (Unix socket or
//! mutual TLS), kept alive by a reconnecting supervisor thread that also
//! pings each endpoint now and then. The endpoint with the lowest measured
//! round trip is used (in the configured order among those alike); the
//! others are failovers. An endpoint that takes a request and neither
//! answers nor hangs up within half the deadline (a frozen vault, a cut
//! link) is passed over from then on, and the request goes again to the
//! next one, within the same deadline.
//!
//! [`VaultPool::call`] is synchronous because rustls asks for signatures
//! synchronously. It never stalls the tokio reactor for long: it waits
//! plainly only for a short budget (as long as an in-process signature
//! would take), then hands the worker thread over with `block_in_place`.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::conn::{Conn, Sent, WaitError};
use super::endpoint::Endpoint;
use super::SignerError;
use crate::protocol::{Frame, Request, Response, MAX_BODY};
use crate::sync::Locked;

/// Tuning of a [`VaultPool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Vault endpoints in failover order (among those with alike round
    /// trips, the first live one is used).
    pub sockets: Vec<Endpoint>,
    /// The client side of mutual TLS, for `tls://` endpoints.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connections_per_socket: usize,
    /// Hard limit for one call, queueing included.
    pub timeout: Duration,
    /// How long to wait for an answer before `block_in_place`.
    pub plain_wait: Duration,
}

struct Slot {
    socket: usize,
    conn: Mutex<Option<Arc<Conn>>>,
}

/// Shared by every remote key; cheap to clone.
#[derive(Clone)]
pub struct VaultPool {
    inner: Arc<Inner>,
}

/// One vault socket as the pool last found it.
#[derive(Debug, Clone)]
pub struct SocketState {
    pub path: Endpoint,
    /// Why the last connect failed; `None` if it connected.
    pub error: Option<Arc<std::io::Error>>,
}

impl std::fmt::Display for SocketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{}: {e}", self.path),
            None => write!(f, "{}: connected, but the vault did not answer", self.path),
        }
    }
}

struct Inner {
    /// Closed when the pool is dropped: wakes the supervisor to stop.
    _gone_tx: Option<UnixStream>,
    /// The other end, taken by the supervisor thread when it starts.
    gone_rx: Mutex<Option<UnixStream>>,
    opts: PoolOptions,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Index of the socket last used, to count failovers.
    current_socket: AtomicUsize,
    /// Held while reconnecting, so the supervisor and a handshake's
    /// [`VaultPool::is_available`] do not both connect the same slot.
    reconnecting: Mutex<()>,
    /// When a handshake last tried to reconnect (ms after `epoch`).
    last_nudge_ms: AtomicU64,
    epoch: Instant,
    /// Why the last connect failed, per socket: what a proxy that cannot
    /// reach any vault says at start.
    last_errors: Mutex<Vec<Option<Arc<std::io::Error>>>>,
    /// Per endpoint: how it answers.
    health: Vec<Health>,
}

/// What the pool measured of one endpoint.
#[derive(Default)]
struct Health {
    /// Moving average of ping round trips, in microseconds (0: none yet).
    rtt_us: AtomicU64,
    /// Until when (ms after `epoch`) it is passed over: it took a request
    /// or a ping and did not answer in time. A ping answered clears it.
    unhealthy_until_ms: AtomicU64,
}

/// How long an endpoint that failed to answer is passed over, unless a
/// ping answers first.
const UNHEALTHY_FOR: Duration = Duration::from_secs(5);
/// How often the supervisor pings each endpoint.
const PING_EVERY: Duration = Duration::from_millis(500);
/// Round trips this close are alike: the configured order decides, so
/// endpoints on one host do not trade places on noise.
const RTT_ALIKE_US: u64 = 1000;

/// The supervisor's first wait after a failed reconnect.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// The supervisor's longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How often handshakes may try to reconnect while no connection is up.
const NUDGE_EVERY: Duration = Duration::from_millis(50);

impl VaultPool {
    /// Starts the pool. Connections are made in the background; the first
    /// attempt is made before returning so a running vault is usable at once.
    pub fn start(opts: PoolOptions) -> VaultPool {
        let n_sockets = opts.sockets.len();
        let mut slots = Vec::new();
        for socket in 0..opts.sockets.len() {
            for _ in 0..opts.connections_per_socket.max(1) {
                slots.push(Slot {
                    socket,
                    conn: Mutex::new(None),
                });
            }
        }
        // Dropped with the pool, which the supervisor's poll then sees.
        let (gone_tx, gone_rx) = match UnixStream::pair() {
            Ok((a, b)) => (Some(a), Some(b)),
            Err(e) => {
                tracing::error!(error = %e, "no socket pair for the vault supervisor; connections are not watched");
                (None, None)
            }
        };
        let inner = Arc::new(Inner {
            _gone_tx: gone_tx,
            gone_rx: Mutex::new(gone_rx),
            opts,
            slots,
            next: AtomicUsize::new(0),
            current_socket: AtomicUsize::new(0),
            reconnecting: Mutex::new(()),
            last_nudge_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            last_errors: Mutex::new(vec![None; n_sockets]),
            health: (0..n_sockets).map(|_| Health::default()).collect(),
        });
        inner.reconnect_dead();
        let weak = Arc::downgrade(&inner);
        let watch = inner.gone_rx.locked().take();
        if let Some(watch) = watch {
            let _ = std::thread::Builder::new()
                .name("vault-supervisor".into())
                .spawn(move || supervise(weak, watch));
        }
        VaultPool { inner }
    }

    /// Whether at least one connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.slots.iter().any(|s| s.live().is_some())
    }

    /// Whether a signature can be asked for now. While no connection is
    /// up, tries to reconnect (at most every 50 ms, never while another
    /// attempt runs) so that a vault that came back serves the next
    /// handshake, not the one after the supervisor's next backoff. A
    /// connect to a Unix socket that is gone fails at once.
    pub fn is_available(&self) -> bool {
        if self.is_connected() {
            return true;
        }
        let inner = &self.inner;
        let now = inner.epoch.elapsed().as_millis() as u64;
        let last = inner.last_nudge_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= NUDGE_EVERY.as_millis() as u64;
        if due
            && inner
                .last_nudge_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Ok(_guard) = inner.reconnecting.try_lock() {
                inner.reconnect_dead_locked();
            }
        }
        self.is_connected()
    }

    /// Each vault socket and how many of its connections are up (of
    /// `connections_per_socket`), for the status page.
    pub fn connections(&self) -> Vec<(Endpoint, usize)> {
        let mut up = vec![0; self.inner.opts.sockets.len()];
        for s in &self.inner.slots {
            if s.live().is_some() {
                up[s.socket] += 1;
            }
        }
        self.inner.opts.sockets.iter().cloned().zip(up).collect()
    }

    pub fn connections_per_socket(&self) -> usize {
        self.inner.opts.connections_per_socket.max(1)
    }

    /// Waits (blocking) until a connection is up or `timeout` passes.
    /// Each vault socket, and why the last attempt to connect to it
    /// failed: what to say when none is usable.
    pub fn socket_states(&self) -> Vec<SocketState> {
        self.inner.connect_errors()
    }

    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_connected() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.inner.reconnect_dead();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `req` and waits for its answer, retrying on another connection
    /// if the one used dies first, all within the pool's timeout.
    pub fn call(&self, req: &Request) -> Result<Response, SignerError> {
        self.call_with_timeout(req, self.inner.opts.timeout)
    }

    pub fn call_with_timeout(
        &self,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, SignerError> {
        let op = req.op();
        let start = Instant::now();
        let deadline = start + timeout;
        let probe = req.to_frame(0);
        if probe.body.len() > MAX_BODY {
            return Err(SignerError::TooLarge(probe.body.len()));
        }
        let mut last_err = SignerError::Unavailable;
        // Three requests sent at most; connections found dead on the way
        // (a vault that restarted is noticed at the first write) do not
        // count, and once none is left one reconnect is tried at once.
        let mut sent_count = 0;
        let mut nudged = false;
        // Sockets whose vault took this request and hung up without an
        // answer: every request here is idempotent (a signature, a
        // lookup), so it goes to the next vault, within the same
        // deadline. A vault that is dying drops its connections one by
        // one as its process goes; its other connections are passed over
        // while another socket has one.
        let mut hung_up = SocketSet::default();
        for _ in 0..self.inner.slots.len() + 4 {
            if sent_count == 3 || Instant::now() >= deadline {
                break;
            }
            let (socket, conn) = match self.inner.pick(&hung_up) {
                Some(picked) => picked,
                None if !nudged => {
                    nudged = true;
                    if !self.is_available() {
                        return Err(last_err);
                    }
                    continue;
                }
                None => return Err(last_err),
            };
            let Some(sent) = conn.send(|id| Frame {
                request_id: id,
                ..probe.clone()
            }) else {
                last_err = SignerError::Closed;
                continue;
            };
            sent_count += 1;
            // With another endpoint to go to, this one gets half the
            // deadline: one that neither answers nor hangs up (frozen,
            // cut off) then costs a retry, not the handshake.
            let others = self.inner.others_live(socket);
            let until = if others {
                (Instant::now() + timeout / 2).min(deadline)
            } else {
                deadline
            };
            match wait(&conn, &sent, until, self.inner.opts.plain_wait) {
                Ok(frame) => {
                    return match Response::from_frame(op, &frame)? {
                        Response::Error { code, message } => {
                            Err(SignerError::Vault { code, message })
                        }
                        resp => Ok(resp),
                    }
                }
                Err(WaitError::Timeout) => {
                    conn.cancel(sent.id);
                    if until >= deadline {
                        return Err(SignerError::Timeout { op, timeout });
                    }
                    metrics::counter!("vaultgate_proxy_vault_resent_total").increment(1);
                    self.inner
                        .mark_unhealthy(socket, "did not answer within half the sign timeout");
                    hung_up.insert(socket);
                    last_err = SignerError::Timeout { op, timeout };
                }
                Err(WaitError::Closed) => {
                    metrics::counter!("vaultgate_proxy_vault_resent_total").increment(1);
                    hung_up.insert(socket);
                    last_err = SignerError::Closed;
                }
            }
        }
        Err(last_err)
    }
}

impl Slot {
    fn live(&self) -> Option<Arc<Conn>> {
        let g = self.conn.locked();
        g.as_ref().filter(|c| !c.is_dead()).cloned()
    }
}

impl Inner {
    /// Round robin over the live connections of the first socket that has
    /// any: later sockets are failovers, not load sharing. Sockets in
    /// `avoid` come last, used only when no other has a connection.
    /// Returns the connection and its socket's index.
    fn pick(&self, avoid: &SocketSet) -> Option<(usize, Arc<Conn>)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let ranked = self.ranked();
        let order = ranked
            .iter()
            .copied()
            .filter(|&s| !avoid.contains(s))
            .chain(ranked.iter().copied().filter(|&s| avoid.contains(s)));
        for socket in order {
            for i in 0..n {
                let slot = &self.slots[(start + i) % n];
                if slot.socket != socket {
                    continue;
                }
                if let Some(c) = slot.live() {
                    let prev = self.current_socket.swap(socket, Ordering::Relaxed);
                    if prev != socket {
                        metrics::counter!("vaultgate_proxy_vault_failovers_total").increment(1);
                        tracing::warn!(
                            from = %self.opts.sockets[prev],
                            to = %self.opts.sockets[socket],
                            "vault failover"
                        );
                    }
                    return Some((socket, c));
                }
            }
        }
        None
    }

    /// Endpoint indexes, best first: healthy before unhealthy, then by
    /// round trip (in steps of [`RTT_ALIKE_US`]), then as configured.
    fn ranked(&self) -> Vec<usize> {
        let now = self.now_ms();
        let mut order: Vec<usize> = (0..self.opts.sockets.len()).collect();
        order.sort_by_key(|&i| {
            let h = &self.health[i];
            let unhealthy = h.unhealthy_until_ms.load(Ordering::Relaxed) > now;
            (
                unhealthy,
                h.rtt_us.load(Ordering::Relaxed) / RTT_ALIKE_US,
                i,
            )
        });
        order
    }

    /// Whether an endpoint other than `socket`, not passed over, has a
    /// live connection.
    fn others_live(&self, socket: usize) -> bool {
        let now = self.now_ms();
        self.slots.iter().any(|s| {
            s.socket != socket
                && self.health[s.socket]
                    .unhealthy_until_ms
                    .load(Ordering::Relaxed)
                    <= now
                && s.live().is_some()
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn mark_unhealthy(&self, socket: usize, why: &str) {
        let until = self.now_ms() + UNHEALTHY_FOR.as_millis() as u64;
        let was = self.health[socket]
            .unhealthy_until_ms
            .swap(until, Ordering::Relaxed);
        if was <= self.now_ms() {
            metrics::counter!("vaultgate_proxy_vault_unhealthy_total").increment(1);
            tracing::warn!(endpoint = %self.opts.sockets[socket], "vault endpoint {why}; passed over until it answers a ping");
        }
    }

    /// A ping's round trip: folded into the average, and the endpoint is
    /// healthy again.
    fn answered(&self, socket: usize, rtt: Duration) {
        let h = &self.health[socket];
        let sample = (rtt.as_micros() as u64).max(1);
        let old = h.rtt_us.load(Ordering::Relaxed);
        let avg = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        h.rtt_us.store(avg, Ordering::Relaxed);
        if h.unhealthy_until_ms.swap(0, Ordering::Relaxed) > self.now_ms() {
            tracing::info!(endpoint = %self.opts.sockets[socket], "vault endpoint answers again");
        }
    }

    /// Pings every endpoint on one of its live connections.
    fn ping_all(&self) {
        for socket in 0..self.opts.sockets.len() {
            let conn = self
                .slots
                .iter()
                .filter(|s| s.socket == socket)
                .find_map(Slot::live);
            let Some(conn) = conn else { continue };
            match ping(&conn) {
                Ok(rtt) => self.answered(socket, rtt),
                Err(WaitError::Timeout) => self.mark_unhealthy(socket, "did not answer a ping"),
                Err(WaitError::Closed) => {}
            }
        }
    }

    /// One reconnect attempt for every dead slot; returns whether all are up.
    fn reconnect_dead(&self) -> bool {
        let _guard = self.reconnecting.locked();
        self.reconnect_dead_locked()
    }

    fn reconnect_dead_locked(&self) -> bool {
        let mut all_up = true;
        for slot in &self.slots {
            if slot.live().is_some() {
                continue;
            }
            let path = &self.opts.sockets[slot.socket];
            // A connection that was up and died: said once, when it is
            // found dead (the reconnect attempts that follow are debug).
            if slot.conn.locked().take().is_some() {
                tracing::warn!(socket = %path, "lost a vault connection; reconnecting");
            }
            match Conn::connect(path, self.opts.tls.as_ref()).and_then(probe) {
                Ok((c, rtt)) => {
                    self.answered(slot.socket, rtt);
                    *slot.conn.locked() = Some(Arc::new(c));
                    self.last_errors.locked()[slot.socket] = None;
                }
                Err(e) => {
                    all_up = false;
                    tracing::debug!(socket = %path, error = %e, "vault connect failed");
                    self.last_errors.locked()[slot.socket] = Some(Arc::new(e));
                }
            }
        }
        all_up
    }

    /// Each socket with why its last connect failed (none: it connected).
    fn connect_errors(&self) -> Vec<SocketState> {
        let errors = self.last_errors.locked();
        self.opts
            .sockets
            .iter()
            .zip(errors.iter())
            .map(|(path, error)| SocketState {
                path: path.clone(),
                error: error.clone(),
            })
            .collect()
    }
}

/// A few socket indexes (the configured vault sockets are a handful).
#[derive(Default)]
struct SocketSet(u64);

impl SocketSet {
    fn insert(&mut self, socket: usize) {
        if socket < 64 {
            self.0 |= 1 << socket;
        }
    }

    fn contains(&self, socket: usize) -> bool {
        socket < 64 && self.0 & (1 << socket) != 0
    }
}

/// How long a new connection's first ping may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A connection counts only once the vault answers on it. A socket can
/// take connections while nothing serves them: a vault that starts binds
/// its socket before its keystore is open, and a killed one's listener
/// lingers while its threads exit. A handshake sent there would wait out
/// the whole sign timeout instead of going to a vault that answers.
fn probe(conn: Conn) -> std::io::Result<(Conn, Duration)> {
    match ping(&conn) {
        Ok(rtt) => Ok((conn, rtt)),
        Err(WaitError::Timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the vault took the connection but did not answer a ping",
        )),
        Err(WaitError::Closed) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the vault closed the connection before answering a ping",
        )),
    }
}

/// A ping on `conn` and its round trip, within [`PROBE_TIMEOUT`].
fn ping(conn: &Conn) -> Result<Duration, WaitError> {
    let ping = Request::Ping {
        payload: Vec::new(),
    };
    let start = Instant::now();
    let sent = conn.send(|id| ping.to_frame(id)).ok_or(WaitError::Closed)?;
    match conn.wait(&sent, start + PROBE_TIMEOUT) {
        Ok(_) => Ok(start.elapsed()),
        Err(e) => {
            conn.cancel(sent.id);
            Err(e)
        }
    }
}

/// Reconnects dead connections with exponential backoff (20 ms to 500 ms:
/// a vault that returns is used within half a second even without traffic).
/// While every connection is up it sleeps in `poll` until one is hung up
/// by the vault or given up by a caller (its socket shut down), or the
/// pool is dropped: a healthy pool costs no periodic wake-ups.
/// Holds only a weak reference: it ends once the pool is dropped.
fn supervise(weak: std::sync::Weak<Inner>, gone: UnixStream) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let all_up = inner.reconnect_dead();
        // With one endpoint there is nothing to rank or fail over to: no
        // pings, and a healthy pool costs no periodic wake-ups.
        let pings = inner.opts.sockets.len() > 1;
        if pings {
            inner.ping_all();
        }
        if all_up {
            backoff = MIN_BACKOFF;
            let conns: Vec<Arc<Conn>> = inner.slots.iter().filter_map(Slot::live).collect();
            drop(inner);
            if !wait_for_hangup(&conns, &gone, pings.then_some(PING_EVERY)) {
                return;
            }
        } else {
            drop(inner);
            metrics::counter!("vaultgate_proxy_vault_reconnect_failures_total").increment(1);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Blocks until one of `conns` is hung up or shut down (and closes those
/// that are), or `ping_every` passed, or `gone` says the pool was
/// dropped: then false. Only the
/// hang-up is watched (POLLRDHUP), so answers arriving wake nobody here.
fn wait_for_hangup(conns: &[Arc<Conn>], gone: &UnixStream, ping_every: Option<Duration>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let hangup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    loop {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::new(gone.as_fd(), PollFlags::POLLIN));
        fds.extend(conns.iter().map(|c| PollFd::new(c.fd(), hangup)));
        let timeout = ping_every
            .and_then(|t| PollTimeout::try_from(t).ok())
            .unwrap_or(PollTimeout::NONE);
        match poll(&mut fds, timeout) {
            // Time to ping.
            Ok(0) => return true,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                // Not expected; fall back to looking again after a pause.
                tracing::warn!(error = %e, "poll on vault connections failed");
                std::thread::sleep(MAX_BACKOFF);
                return true;
            }
        }
        // Any event on `gone` (readable: end of stream) means the pool is gone.
        if fds[0].revents() != Some(PollFlags::empty()) {
            return false;
        }
        let mut any = false;
        for (c, fd) in conns.iter().zip(&fds[1..]) {
            // POLLRDHUP is unknown to nix (`None`); POLLHUP and POLLERR are known.
            if fd.revents() != Some(PollFlags::empty()) {
                c.close();
                any = true;
            }
        }
        if any {
            return true;
        }
    }
}

/// The adaptive wait: a plain wait first (no thread hand-off on the fast
/// path), then `block_in_place` so tokio moves this worker's other tasks
/// elsewhere while we keep waiting, up to `deadline`.
fn wait(conn: &Conn, sent: &Sent, deadline: Instant, plain: Duration) -> Result<Frame, WaitError> {
    let plain_until = (Instant::now() + plain).min(deadline);
    match conn.wait(sent, plain_until) {
        Err(WaitError::Timeout) if Instant::now() < deadline => {}
        other => return other,
    }
    if on_multi_thread_worker() {
        metrics::counter!("vaultgate_proxy_sign_block_in_place_total").increment(1);
        tokio::task::block_in_place(|| conn.wait(sent, deadline))
    } else {
        conn.wait(sent, deadline)
    }
}

/// `block_in_place` panics on a current-thread runtime; elsewhere (plain
/// threads, blocking pool) a plain wait stalls nothing.
fn on_multi_thread_worker() -> bool {
    matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread)
    )
}

#[cfg(test)]
mod tests {
    //! Against a tiny fake vault speaking only the frame layer: the real
    //! vault cannot be told to stall or to answer out of order.

    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use bytes::BytesMut;

    use super::*;
    use crate::protocol::{frame, Op};
    use std::path::PathBuf;

    /// Answers every Sign with a signature equal to its request id, in
    /// reverse order of arrival per read; never answers when `silent`.
    fn fake_vault(dir: &std::path::Path, silent: bool) -> PathBuf {
        let path = dir.join("fake.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = BytesMut::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let mut got = Vec::new();
                        while let Ok(Some(f)) = frame::decode(&mut buf) {
                            got.push(f);
                        }
                        // A silent vault still answers pings: it takes
                        // requests and never signs.
                        if silent {
                            got.retain(|f| f.opcode == Op::Ping as u8);
                        }
                        let mut out = BytesMut::new();
                        for f in got.iter().rev() {
                            let resp = Response::Signature {
                                version: 1,
                                signature: f.request_id.to_be_bytes().to_vec(),
                            };
                            resp.to_frame(Op::Sign, f.request_id)
                                .encode(&mut out)
                                .unwrap();
                        }
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        path
    }

    fn pool(socket: PathBuf, timeout: Duration) -> VaultPool {
        let p = VaultPool::start(PoolOptions {
            sockets: vec![Endpoint::Unix(socket)],
            tls: None,
            connections_per_socket: 1,
            timeout,
            plain_wait: Duration::from_micros(50),
        });
        assert!(p.wait_connected(Duration::from_secs(5)));
        p
    }

    fn sign_req() -> Request {
        Request::Sign {
            key: "k".into(),
            version: Some(1),
            scheme: 0x0403,
            message: b"m".to_vec(),
        }
    }

    #[test]
    fn answers_are_matched_by_request_id_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(fake_vault(dir.path(), false), Duration::from_secs(5));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| match p.call(&sign_req()).unwrap() {
                            Response::Signature { signature, .. } => signature,
                            other => panic!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Vec<u8>> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        // Each caller got the answer to its own id: all 400 distinct.
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_silent_vault_hits_the_hard_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(fake_vault(dir.path(), true), Duration::from_millis(50));
        let start = Instant::now();
        let e = p.call(&sign_req()).unwrap_err();
        assert!(matches!(e, SignerError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn no_vault_means_unavailable_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = VaultPool::start(PoolOptions {
            sockets: vec![Endpoint::Unix(dir.path().join("none.sock"))],
            tls: None,
            connections_per_socket: 2,
            timeout: Duration::from_millis(50),
            plain_wait: Duration::from_micros(50),
        });
        assert!(matches!(p.call(&sign_req()), Err(SignerError::Unavailable)));
    }

    /// A listener whose accepted connections arrive on the receiver once
    /// they have answered the pool's probe (their first frame).
    fn accepting(dir: &std::path::Path) -> (PathBuf, std::sync::mpsc::Receiver<UnixStream>) {
        let path = dir.join("accepting.sock");
        let l = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 4096];
                let ping = loop {
                    if let Ok(Some(f)) = frame::decode(&mut buf) {
                        break f;
                    }
                    let n = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                };
                let mut out = BytesMut::new();
                Frame::new(ping.opcode, ping.request_id, ping.body)
                    .encode(&mut out)
                    .unwrap();
                s.write_all(&out).unwrap();
                if tx.send(s).is_err() {
                    return;
                }
            }
        });
        (path, rx)
    }

    #[test]
    fn a_socket_that_takes_connections_but_never_answers_is_passed_over() {
        // A vault starting up (socket bound, keystore not open yet), or a
        // killed one whose listener lingers: first in the failover order.
        let dir = tempfile::tempdir().unwrap();
        let mute = dir.path().join("mute.sock");
        let held = UnixListener::bind(&mute).unwrap();
        let live = fake_vault(dir.path(), false);
        let p = VaultPool::start(PoolOptions {
            sockets: vec![Endpoint::Unix(mute), Endpoint::Unix(live)],
            tls: None,
            connections_per_socket: 1,
            timeout: Duration::from_millis(100),
            plain_wait: Duration::from_micros(50),
        });
        assert!(p.wait_connected(Duration::from_secs(5)));
        let start = Instant::now();
        for _ in 0..20 {
            assert!(matches!(
                p.call(&sign_req()),
                Ok(Response::Signature { .. })
            ));
        }
        // No call waited out the 100 ms timeout on the mute socket.
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        drop(held);
    }

    /// Answers pings; hangs up on anything else without answering, as a
    /// vault that dies with the request in hand.
    fn hanging_up_vault(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("dying.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = BytesMut::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(f)) = frame::decode(&mut buf) {
                            if f.opcode != Op::Ping as u8 {
                                return;
                            }
                            let mut out = BytesMut::new();
                            Frame::new(f.opcode, f.request_id, f.body)
                                .encode(&mut out)
                                .unwrap();
                            if s.write_all(&out).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        path
    }

    #[test]
    fn a_request_whose_vault_hangs_up_goes_to_the_next_vault() {
        // Its other connections look alive for a moment yet (a dying
        // process closes them one by one): each would take the request
        // and hang up too, until no try was left.
        let dir = tempfile::tempdir().unwrap();
        let dying = hanging_up_vault(dir.path());
        let live = fake_vault(dir.path(), false);
        let p = VaultPool::start(PoolOptions {
            sockets: vec![Endpoint::Unix(dying), Endpoint::Unix(live)],
            tls: None,
            connections_per_socket: 4,
            timeout: Duration::from_secs(5),
            plain_wait: Duration::from_micros(50),
        });
        assert!(p.wait_connected(Duration::from_secs(5)));
        for i in 0..4 {
            let r = p.call(&sign_req());
            assert!(
                matches!(r, Ok(Response::Signature { .. })),
                "call {i}: {r:?}"
            );
        }
    }

    #[test]
    fn an_idle_connection_the_vault_closes_is_replaced_without_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let (path, accepted) = accepting(dir.path());
        let p = pool(path, Duration::from_secs(5));
        let first = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(first);
        // No call is made: only the supervisor can notice and reconnect.
        let second = accepted.recv_timeout(Duration::from_secs(10));
        assert!(second.is_ok(), "no reconnect after the vault hung up");
        assert!(p.wait_connected(Duration::from_secs(5)));
    }

    #[test]
    fn dropping_the_pool_stops_the_supervisor_and_closes_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (path, accepted) = accepting(dir.path());
        let p = pool(path, Duration::from_secs(5));
        let mut conn = accepted.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(p);
        // The supervisor holds the connection while it watches it; the end
        // of the stream here means it woke and let go.
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut one = [0u8; 1];
        assert_eq!(conn.read(&mut one).unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn waiting_on_a_tokio_worker_hands_the_thread_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(fake_vault(dir.path(), true), Duration::from_millis(100));
        // One worker: a timer on it keeps ticking while a call waits only
        // if the call handed the worker over.
        let ticker = tokio::spawn(async {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            start.elapsed()
        });
        let r = tokio::spawn(async move { p.call(&sign_req()) })
            .await
            .unwrap();
        assert!(r.is_err());
        assert!(ticker.await.unwrap() < Duration::from_millis(90));
    }
}
