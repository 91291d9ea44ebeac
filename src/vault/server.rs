//! The vault's socket: binding it safely, accepting callers, and serving
//! each connection's pipelined requests (Unix or mutual-TLS callers alike).
//!
//! Each connection's reader decodes every complete frame it has, runs the
//! fast operations (sign, encrypt, …) right there, and writes all their
//! answers in one write: no thread hop on the signing path, and batches
//! form by themselves under load. Slow operations (key generation, disk
//! writes, argon2) run on the blocking pool and answer when done, out of
//! order, matched by request id. A connection works in turns ([`super::fair`]):
//! a caller pipelining costly requests answers a slice of them, then lets
//! the other callers on its worker have theirs.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::UnixListener;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Refusal, SMALL_FRAME};
use super::audit::Event;
use super::denials::Denials;
use super::fair::{Turns, TURN};
use super::ops::{is_slow, needs_derivation, Vault};
use super::policy::{Caller, Local};
use super::stream::{Sink, Source};
use super::VaultError;
use crate::config::user::RunAs;
use crate::protocol::{frame, ErrorCode, Frame, KeyEvent, Request, Response};

/// Slow operations one connection may have running.
const MAX_SLOW_PER_CONNECTION: usize = 8;
/// Backup-passphrase stretches (argon2id, 19 MiB and ~50 ms of a core
/// each) running at once in the whole vault. More wait their turn, and
/// are dropped unrun if their caller leaves first: 64 connections asking
/// for one each cannot lock gigabytes or starve other work.
const MAX_DERIVATIONS: usize = 1;

/// At most one log line a second for something a caller can repeat at
/// will (each occurrence is audited and counted anyway): a flood of bad
/// frames must not flood the log, or block the vault on a slow one.
struct Quiet {
    second: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Quiet {
    const fn new() -> Quiet {
        Quiet {
            second: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` if this occurrence may be logged, `n` being how many
    /// were not since the last that was.
    fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = super::ops::now();
        let last = self.second.load(Relaxed);
        if now != last
            && self
                .second
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

static BAD_FRAME_LOG: Quiet = Quiet::new();
static REFUSAL_LOG: Quiet = Quiet::new();

/// A connection's sending side, shared by the reader (fast answers), slow
/// operations and event forwarding.
struct Out {
    /// Serialises whole answers.
    sink: Mutex<Sink>,
    /// A caller that does not read its answers for this long is cut off.
    timeout: Duration,
}

/// Unprocessed bytes read from a connection whose slow operations are all
/// busy; past this it is no longer read until one finishes.
const READ_AHEAD: usize = 64 * 1024;

/// Binds the vault socket at `path` with `mode` (and `group`), refusing a
/// path where another process listens and replacing a stale socket. It
/// listens only once the keystore is open ([`super::listen()`]).
/// With an `owner` (the user the vault is about to switch to), the socket
/// is that user's, in `group` or else the user's group, and a socket
/// directory created here is the user's too, so the vault can still
/// remove its socket when it stops.
pub fn bind(
    path: &Path,
    mode: u32,
    group: Option<u32>,
    owner: Option<&RunAs>,
) -> Result<super::listen::Bound, VaultError> {
    let err = |message: String| VaultError::Socket {
        path: path.to_owned(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(err(
                    "exists and is not a socket; refusing to replace it".into()
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    "another process is listening on it (is a vault already running?)".into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
            tracing::info!(path = %path.display(), "removed stale socket");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let uid = owner.map(|u| nix::unistd::Uid::from_raw(u.uid));
    let gid = group
        .or(owner.map(|u| u.gid))
        .map(nix::unistd::Gid::from_raw);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let created = !dir.exists();
        crate::fsutil::ensure_dir(dir, 0o755)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        if created && uid.is_some() {
            nix::unistd::chown(dir, uid, None).map_err(|e| {
                err(format!(
                    "cannot give its directory to the vault's user: {e}"
                ))
            })?;
        }
    }
    // Bind under a tight umask so the socket is never briefly open to all.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = super::listen::unix(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| err(e.to_string()))?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid).map_err(|e| {
            err(format!(
                "cannot give the socket to uid {uid:?} gid {gid:?}: {e}"
            ))
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(format!("cannot set mode {mode:o}: {e}")))?;
    Ok(listener)
}

/// What serving a connection needs, whichever listener took it.
pub struct Shared {
    vault: Arc<Vault>,
    workers: Workers,
    admission: Admission,
    derivations: Arc<Semaphore>,
}

impl Shared {
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The connection worker the next connection goes to.
    pub fn worker(&self) -> &tokio::runtime::Handle {
        self.workers.next()
    }

    /// Serves one connection to its end; call it on a worker.
    pub async fn serve(&self, conn: (Source, Sink), caller: Caller) {
        serve_connection(
            conn,
            caller,
            self.vault.clone(),
            &self.admission,
            self.derivations.clone(),
        )
        .await;
    }
}

/// Accepts and serves connections (on the Unix socket, and on the TLS
/// listeners if any) until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    tls: Option<super::tls::Listening>,
    vault: Arc<Vault>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let workers = match Workers::start() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start connection workers");
            return;
        }
    };
    let shared = Arc::new(Shared {
        vault,
        workers,
        admission: Admission::default(),
        derivations: Arc::new(Semaphore::new(MAX_DERIVATIONS)),
    });
    let tls_tasks = tls.map(|t| t.serve(&shared)).unwrap_or_default();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(1);
                let caller = stream.peer_cred().map(|c| {
                    Caller::Local(Local {
                        groups: peer_groups(&stream),
                        uid: c.uid(),
                        gid: c.gid(),
                        pid: c.pid(),
                    })
                });
                // Hand the socket to a worker's own reactor.
                let std_stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand over a connection");
                        continue;
                    }
                };
                let caller = match caller {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "no peer credentials; closing");
                        continue;
                    }
                };
                let conn_shared = shared.clone();
                shared.worker().spawn(async move {
                    match super::stream::unix(std_stream) {
                        Ok(conn) => conn_shared.serve(conn, caller).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot register a connection; closing")
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin or die.
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    for t in tls_tasks {
        t.abort();
    }
}

/// One single-threaded runtime per core, each serving its share of the
/// connections. A connection's reads, signatures and writes then stay on
/// one thread: no cross-thread wake-ups on the signing path, which on a
/// work-stealing runtime cost more kernel time than the decode and encode.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    fn start() -> std::io::Result<Workers> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("vault-conn-{i}"))
                .spawn(move || {
                    let _ = rt.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
            _stop: stops,
        })
    }

    fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

/// Serves one connection, Unix or TLS ([`super::stream`]).
#[allow(
    clippy::too_many_lines,
    reason = "one connection's loop: read, take the turn, run what was read, answer"
)]
async fn serve_connection(
    (mut sock, sink): (Source, Sink),
    caller: Caller,
    vault: Arc<Vault>,
    admission: &Admission,
    derivations: Arc<Semaphore>,
) {
    let admitted = match admission.admit(&caller, vault.knows(&caller)) {
        Ok(a) => a,
        Err(refusal) => {
            refuse(&vault, &caller, sink, &refusal).await;
            return;
        }
    };
    metrics::gauge!("vaultgate_vault_connections").increment(1.0);
    let settings = vault.settings();
    let write = Arc::new(Out {
        sink: Mutex::new(sink),
        timeout: settings.client_write_timeout,
    });
    let mut due = Deadlines::new(settings.client_read_timeout, admitted.known);
    drop(settings);
    let slow = Arc::new(Semaphore::new(MAX_SLOW_PER_CONNECTION));
    let turns = Turns::of(caller.party());
    let mut denials = Denials::new(Some(caller.clone()));
    // A turn ended with whole requests still in `buf`: work on them before
    // reading more.
    let mut pending = false;
    // Cancelled when this function returns, however it does: slow
    // operations still waiting for their turn are then dropped.
    let gone = CancellationToken::new();
    let _gone_on_return = gone.clone().drop_guard();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut forwarders: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    // Room held for the large frame at the front of `buf`.
    let mut room: Option<OwnedSemaphorePermit> = None;
    'conn: loop {
        if !pending {
            let read = read_more(&mut sock, &mut buf, &due, &vault, &caller, &write);
            let more = if denials.holding() {
                // Counted refusals are written within about a second,
                // even if the caller then falls silent. Cancelling the
                // read there loses nothing: it is waiting for readability.
                match tokio::time::timeout(Duration::from_secs(1), read).await {
                    Ok(more) => more,
                    Err(_) => {
                        denials.tick(vault.audit(), super::ops::now());
                        continue;
                    }
                }
            } else {
                read.await
            };
            if !more {
                break;
            }
        }
        let mut turn = turns.take().await;
        let began = Instant::now();
        pending = false;
        let mut decoded = false;
        let mut needs_room = None;
        loop {
            if room.is_none() {
                if let Ok(Some(len)) = frame::peek_header(&buf) {
                    if len > SMALL_FRAME && buf.len() < frame::HEADER_LEN + len {
                        needs_room = Some(len);
                        break;
                    }
                }
            }
            let frame = match frame::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    write_out(&write, &mut out).await;
                    reject(&vault, &caller, &write, 0, &e.to_string()).await;
                    break 'conn;
                }
            };
            decoded = true;
            // Only the large frame that was at the front holds room. Its
            // allocation is left to the frame: the rest moves to a fresh
            // buffer, so it does not stay alive behind small frames.
            let frame_room = room.take();
            if frame_room.is_some() {
                buf = BytesMut::from(&buf[..]);
            }
            let req = match Request::from_frame(&frame) {
                Ok(r) => r,
                Err(e) => {
                    write_out(&write, &mut out).await;
                    reject(&vault, &caller, &write, frame.request_id, &e.to_string()).await;
                    break 'conn;
                }
            };
            if is_slow(req.op()) {
                let permit = match slow.clone().try_acquire_owned() {
                    Ok(p) => p,
                    // Waiting is not working: others of this uid may.
                    Err(_) => {
                        turn = None;
                        match wait_for_slot(&slow, &mut sock, &mut buf).await {
                            Some(p) => p,
                            None => break 'conn,
                        }
                    }
                };
                let slow_op = SlowOp {
                    vault: vault.clone(),
                    caller: caller.clone(),
                    write: write.clone(),
                    id: frame.request_id,
                    gone: gone.clone(),
                    _room: frame_room,
                };
                tokio::spawn(slow_op.run(req, permit, derivations.clone()));
                if turn.is_none() {
                    pending = true;
                    break;
                }
            } else if req == Request::Subscribe {
                // Receive from before the answer, so no change falls between.
                let events = vault.subscribe();
                let resp = vault.handle(&caller, &req);
                if !matches!(resp, Response::Error { .. }) {
                    forwarders.push(tokio::spawn(forward_events(
                        events,
                        vault.clone(),
                        caller.clone(),
                        write.clone(),
                        frame.request_id,
                    )));
                }
                encode_into(
                    &resp.to_frame(req.op(), frame.request_id),
                    &mut out,
                    req.op(),
                );
            } else {
                let resp = vault.handle_counting_denials(&caller, &req, &mut denials);
                encode_into(
                    &resp.to_frame(req.op(), frame.request_id),
                    &mut out,
                    req.op(),
                );
                if denials.burst() {
                    cut_for_refusals(&vault, &caller, &mut denials, &mut out);
                    write_out(&write, &mut out).await;
                    break 'conn;
                }
            }
            if began.elapsed() >= TURN {
                pending = true;
                break;
            }
        }
        if !out.is_empty() && !write_out(&write, &mut out).await {
            metrics::counter!("vaultgate_vault_disconnects_total", "reason" => "not-reading")
                .increment(1);
            vault.audit().record(Event {
                caller: Some(caller.clone()),
                ..Event::system(
                    "disconnect",
                    Some("caller did not read its answers; disconnected".into()),
                )
            });
            break;
        }
        drop(turn);
        denials.tick(vault.audit(), super::ops::now());
        due.read(buf.is_empty(), decoded);
        if let Some(len) = needs_room {
            let Some((at, late)) = due.next() else {
                break;
            };
            match tokio::time::timeout_at(at, admitted.room_for(len)).await {
                Ok(Some(r)) => {
                    room = Some(r);
                    buf.reserve(frame::HEADER_LEN + len - buf.len());
                }
                Ok(None) => break,
                Err(_) => {
                    cut_late(&vault, &caller, late);
                    break;
                }
            }
        }
        if pending {
            // To the back of the worker's queue: taking the turn again
            // would not wait while no other connection of this uid does.
            tokio::task::yield_now().await;
        }
    }
    for f in forwarders {
        f.abort();
    }
    denials.tick(vault.audit(), u64::MAX);
    metrics::gauge!("vaultgate_vault_connections").decrement(1.0);
}

/// Reads what the caller sent next into `buf`, within the connection's
/// deadline. False when the connection ends: the caller closed (inside a
/// frame: rejected), it failed, or it was too slow (cut, audited).
async fn read_more(
    sock: &mut Source,
    buf: &mut BytesMut,
    due: &Deadlines,
    vault: &Vault,
    caller: &Caller,
    write: &Out,
) -> bool {
    let got = match due.next() {
        Some((at, late)) => match tokio::time::timeout_at(at, sock.read_some(buf)).await {
            Ok(r) => r,
            Err(_) => {
                cut_late(vault, caller, late);
                return false;
            }
        },
        None => sock.read_some(buf).await,
    };
    match got {
        Ok(0) => {
            if !buf.is_empty() {
                reject(vault, caller, write, 0, "connection closed inside a frame").await;
            }
            false
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Waits for one of the connection's slow-operation slots, reading on
/// meanwhile, so that a caller who leaves is noticed (and its queued work
/// dropped) rather than waited for. `None`: the caller left.
async fn wait_for_slot(
    slow: &Arc<Semaphore>,
    sock: &mut Source,
    buf: &mut BytesMut,
) -> Option<OwnedSemaphorePermit> {
    loop {
        tokio::select! {
            p = slow.clone().acquire_owned() => return p.ok(),
            r = sock.read_some(buf), if buf.len() < READ_AHEAD => match r {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Tells a caller why its connection is not served, and audits it.
async fn refuse(vault: &Vault, caller: &Caller, sink: Sink, refusal: &Refusal) {
    metrics::counter!("vaultgate_vault_disconnects_total", "reason" => refusal.reason())
        .increment(1);
    let why = refusal.to_string();
    if let Some(suppressed) = REFUSAL_LOG.allow() {
        tracing::warn!(%caller, suppressed, "{why}; refusing another");
    }
    vault.refused_connection(Event {
        caller: Some(caller.clone()),
        result: "denied",
        ..Event::system("connection-refused", Some(why.clone()))
    });
    let out = Out {
        sink: Mutex::new(sink),
        timeout: Duration::from_secs(1),
    };
    let mut buf = BytesMut::new();
    if Response::error(ErrorCode::Denied, why)
        .to_frame(crate::protocol::Op::Ping, 0)
        .encode(&mut buf)
        .is_ok()
    {
        write_out(&out, &mut buf).await;
    }
}

/// What a connection was too slow to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// The rest of a request whose first bytes came.
    Partial(Duration),
    /// Any request, from a caller no grant names.
    Idle(Duration),
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Late::Partial(t) => write!(f, "a request begun was not complete within {t:?}"),
            Late::Idle(t) => write!(f, "no request within {t:?} from a caller no grant names"),
        }
    }
}

/// When a connection must next have sent something (`client_read_timeout`
/// from a request's first byte; for a caller no grant names, also from
/// its last request).
struct Deadlines {
    timeout: Duration,
    known: bool,
    partial_since: Option<Instant>,
    idle_since: Instant,
}

impl Deadlines {
    fn new(timeout: Duration, known: bool) -> Deadlines {
        Deadlines {
            timeout,
            known,
            partial_since: None,
            idle_since: Instant::now(),
        }
    }

    /// After a read and the frames it completed: whether bytes of an
    /// incomplete frame are left, and whether any frame was completed.
    fn read(&mut self, drained: bool, decoded: bool) {
        let now = Instant::now();
        if decoded {
            self.idle_since = now;
        }
        if drained {
            self.partial_since = None;
        } else if decoded || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
    }

    fn next(&self) -> Option<(Instant, Late)> {
        match self.partial_since {
            Some(t) => Some((t + self.timeout, Late::Partial(self.timeout))),
            None if !self.known => Some((self.idle_since + self.timeout, Late::Idle(self.timeout))),
            None => None,
        }
    }
}

/// Ends a connection that was too slow to send, counted and audited.
fn cut_late(vault: &Vault, caller: &Caller, late: Late) {
    let reason = match late {
        Late::Partial(_) => "slow-request",
        Late::Idle(_) => "idle",
    };
    metrics::counter!("vaultgate_vault_disconnects_total", "reason" => reason).increment(1);
    vault.audit().record(Event {
        caller: Some(caller.clone()),
        ..Event::system("disconnect", Some(format!("{late}; disconnected")))
    });
}

/// Ends a connection that sent a burst of refusals ([`Denials::burst`]):
/// its folded refusals are written first, then the cut (folded
/// vault-wide, as refused connections are: a caller reconnecting to be
/// cut again gets a few records a second), and `out` gets a `denied`
/// error saying why after the answers already in it, whose records are
/// all queued.
fn cut_for_refusals(vault: &Vault, caller: &Caller, denials: &mut Denials, out: &mut BytesMut) {
    metrics::counter!("vaultgate_vault_disconnects_total", "reason" => "refusals").increment(1);
    denials.tick(vault.audit(), u64::MAX);
    let why = format!(
        "more than {} refused requests within a second; disconnected",
        super::denials::CUT_PAST
    );
    if let Some(suppressed) = REFUSAL_LOG.allow() {
        tracing::warn!(%caller, suppressed, "{why}");
    }
    vault.refused_connection(Event {
        caller: Some(caller.clone()),
        result: "denied",
        ..Event::system("disconnect", Some(why.clone()))
    });
    encode_into(
        &Response::error(ErrorCode::Denied, why).to_frame(crate::protocol::Op::Ping, 0),
        out,
        crate::protocol::Op::Ping,
    );
}

/// One slow operation, run off the connection's task.
struct SlowOp {
    vault: Arc<Vault>,
    caller: Caller,
    write: Arc<Out>,
    id: u32,
    /// Cancelled once the connection is gone.
    gone: CancellationToken,
    /// The large-frame room the request's frame took, held until answered.
    _room: Option<OwnedSemaphorePermit>,
}

impl SlowOp {
    async fn run(
        self,
        req: Request,
        _permit: tokio::sync::OwnedSemaphorePermit,
        derivations: Arc<Semaphore>,
    ) {
        let op = req.op();
        let _turn = if needs_derivation(op) {
            tokio::select! {
                t = derivations.acquire_owned() => t.ok(),
                () = self.gone.cancelled() => {
                    // Never run, never answered: nothing to audit.
                    metrics::counter!("vaultgate_vault_requests_total", "op" => op.name(), "result" => "abandoned")
                        .increment(1);
                    return;
                }
            }
        } else {
            None
        };
        let (vault, caller) = (self.vault.clone(), self.caller);
        let resp = tokio::task::spawn_blocking(move || vault.handle(&caller, &req))
            .await
            .unwrap_or_else(|_| Response::error(ErrorCode::Internal, "operation panicked"));
        let mut one = BytesMut::new();
        if resp.to_frame(op, self.id).encode(&mut one).is_ok() {
            write_out(&self.write, &mut one).await;
        }
    }
}

/// Pushes key changes the caller may see, as event frames carrying the
/// subscribe request's id, until the connection goes.
async fn forward_events(
    mut events: tokio::sync::broadcast::Receiver<KeyEvent>,
    vault: Arc<Vault>,
    caller: Caller,
    write: Arc<Out>,
    id: u32,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            // Fell behind: tell the subscriber to re-read everything.
            Err(RecvError::Lagged(_)) => KeyEvent {
                key: "*".into(),
                primary: 0,
                json: "null".into(),
            },
            Err(RecvError::Closed) => return,
        };
        if !vault.may_watch(&caller, &event.key) {
            continue;
        }
        let mut out = BytesMut::new();
        if event.to_frame(id).encode(&mut out).is_err() || !write_out(&write, &mut out).await {
            return;
        }
    }
}

fn encode_into(frame: &Frame, out: &mut BytesMut, op: crate::protocol::Op) {
    if frame.encode(out).is_err() {
        // Answers are bounded by request limits; this is a bug, not input.
        tracing::error!(%op, "answer exceeds the frame limit");
    }
}

/// Writes and clears `out`; false if the peer is gone or not reading.
async fn write_out(write: &Out, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let mut sink = write.sink.lock().await;
    let ok = sink.write_all(out, write.timeout).await;
    out.clear();
    ok
}

/// The caller's supplementary groups; none if the kernel will not say
/// (fewer grants match, never more).
fn peer_groups(stream: &tokio::net::UnixStream) -> std::sync::Arc<[u32]> {
    use std::os::fd::AsFd;
    match crate::os::peer_groups(stream.as_fd()) {
        Ok(groups) => groups.into(),
        Err(e) => {
            tracing::warn!(error = %e, "no supplementary groups for a caller; gid grants match its gid only");
            std::sync::Arc::from([])
        }
    }
}

/// Answers a malformed frame with an error, audits it; the caller then
/// closes the connection.
async fn reject(vault: &Vault, caller: &Caller, write: &Out, id: u32, why: &str) {
    if let Some(suppressed) = BAD_FRAME_LOG.allow() {
        tracing::warn!(%caller, error = %why, suppressed, "bad frame; closing connection");
    }
    metrics::counter!("vaultgate_vault_bad_frames_total").increment(1);
    metrics::counter!("vaultgate_vault_disconnects_total", "reason" => "bad-frame").increment(1);
    vault.audit().record(Event {
        caller: Some(caller.clone()),
        op: "bad-frame",
        key: None,
        result: "error",
        error: Some(why.to_owned()),
        droppable: true,
        ..Event::default()
    });
    let mut out = BytesMut::new();
    let frame = Response::error(ErrorCode::BadRequest, why).to_frame(crate::protocol::Op::Ping, id);
    if frame.encode(&mut out).is_ok() {
        write_out(write, &mut out).await;
    }
}
