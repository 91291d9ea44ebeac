//! The audit log: one JSON line per operation and per refusal, chained.
//!
//! Each line carries `prev` (the previous line's MAC) and ends with its own
//! `mac`: HMAC-SHA256, under a subkey of the master key, over the line's
//! bytes up to the `,"mac":` field. Editing, deleting or reordering any line
//! breaks the chain; someone who can write the file but lacks the master
//! key cannot make a consistent one. `audit.head` holds the last record's
//! sequence number and MAC, so cutting lines off the end is detected too.
//!
//! Records are written by one thread, in batches: a record is appended at
//! most 10 ms after it is queued; the file is fdatasync'ed and the head
//! replaced atomically every `audit_sync` (1 s by default), on flush and
//! at exit. While records keep coming the writer runs on its own 10 ms
//! clock and queueing a record wakes nobody; only a record that finds the
//! writer idle (nothing queued in its last round) wakes it.
//!
//! Fail closed: when a batch cannot be written (disk full, I/O error, file
//! size limit), whatever part of it got in is cut off again, the batch is
//! kept and retried every [`RETRY_EVERY`], and [`Audit::failure`] reports
//! the error, so the vault refuses every operation it could not audit
//! until a retry succeeds. The log keeps [`RESERVE`] bytes allocated ahead
//! of its end (fallocate, size unchanged), so a disk that fills up stops
//! key changes (their records are new files) well before it stops the
//! audit log, and with it signing.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::policy::Caller;
use crate::fsutil;
use crate::sync::Locked;

pub const LOG_FILE: &str = "audit.log";
pub const HEAD_FILE: &str = "audit.head";
const MAC_FIELD: &str = ",\"mac\":\"";
/// Longest a record waits before its batch is synced, under load.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How often a batch that could not be written is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Space kept allocated past the end of the log.
pub const RESERVE: u64 = 1 << 20;
/// The reserve is topped up when less than this is left of it.
const RESERVE_LOW: u64 = 256 << 10;
/// Records held in memory while the log cannot be written; past this,
/// new records are dropped and counted (the vault refuses operations
/// meanwhile, so only refusals and connection events arrive).
const MAX_BACKLOG: usize = 8 << 20;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is numbered and chained.
#[derive(Debug, Clone)]
pub struct Event {
    pub caller: Option<Caller>,
    pub op: &'static str,
    pub key: Option<String>,
    pub version: Option<u32>,
    /// "ok", "denied" or "error".
    pub result: &'static str,
    pub error: Option<String>,
}

impl Event {
    pub fn system(op: &'static str, error: Option<String>) -> Event {
        Event {
            caller: None,
            op,
            key: None,
            version: None,
            result: if error.is_some() { "error" } else { "ok" },
            error,
        }
    }
}

/// The fields of a line `verify` checks (the MAC covers all of them).
#[derive(Debug, Deserialize)]
struct Line {
    seq: u64,
    prev: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit record {line}: {reason}")]
    Bad { line: u64, reason: String },
    #[error("audit log is truncated: {head} records were written, {found} remain")]
    Truncated { head: u64, found: u64 },
}

/// What callers hand the writer thread.
#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    flushes: Vec<mpsc::Sender<()>>,
    /// The writer waits with no deadline: the next record must wake it.
    idle: bool,
    /// Every [`Audit`] handle is gone: write what is left and stop.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Holders never panic mid-update; the queue stays usable.
        self.queue.locked()
    }
}

/// Owned by the [`Audit`] handles; the last one dropped stops the writer.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// Handle to the audit writer thread.
#[derive(Clone)]
pub struct Audit {
    handle: Arc<Handle>,
    health: Arc<Health>,
}

/// Whether the last attempt to write the log failed, and why.
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    error: Mutex<String>,
}

impl Health {
    fn set(&self, error: Option<String>) {
        let mut e = self.error.locked();
        self.failing.store(error.is_some(), Ordering::SeqCst);
        *e = error.unwrap_or_default();
        metrics::gauge!("vaultgate_vault_audit_failing").set(if self.failing() {
            1.0
        } else {
            0.0
        });
    }

    fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

impl Audit {
    /// Opens (or creates) the log in `state_dir`, repairing a torn last
    /// line left by a crash, and starts the writer thread.
    /// Records are written to the file in batches, each record at most
    /// 10 ms after it is queued (a killed vault loses only what is not yet
    /// written); the file is
    /// fdatasync'ed and `audit.head` replaced every `sync_every` (zero:
    /// every batch), at each [`Audit::flush`] and at exit, so a power loss
    /// costs at most that much of the log's tail — the trade databases
    /// make with a WAL writer delay. A sync costs ~200 µs of CPU on a VM:
    /// one per batch at a few hundred signatures a second made the audit
    /// thread a third of the vault's CPU.
    pub fn open(
        state_dir: &Path,
        key: ring::hmac::Key,
        syslog: bool,
        sync_every: Duration,
    ) -> Result<Audit, AuditError> {
        let path = state_dir.join(LOG_FILE);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let (seq, prev, repaired) = tail(&mut file).map_err(io)?;
        let committed = file.metadata().map_err(io)?.len();
        let health = Arc::new(Health::default());
        let mut writer = Writer {
            file,
            committed,
            reserved_to: 0,
            dirty: false,
            dropped: 0,
            health: health.clone(),
            path: path.clone(),
            head_path: state_dir.join(HEAD_FILE),
            key,
            seq,
            prev,
            line: String::with_capacity(512),
            syslog: if syslog { Syslog::connect() } else { None },
            sync_every,
            unsynced: false,
            head_seq: seq,
        };
        writer.reserve(0);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(&theirs))
            .map_err(io)?;
        let audit = Audit {
            handle: Arc::new(Handle { shared }),
            health,
        };
        if repaired > 0 {
            audit.record(Event::system(
                "audit-repair",
                Some(format!(
                    "removed a torn last line of {repaired} bytes left by a crash"
                )),
            ));
        }
        Ok(audit)
    }

    /// Queues a record. Never blocks the caller (beyond a short lock),
    /// and wakes the writer only if it is idle.
    pub fn record(&self, event: Event) {
        let shared = &self.handle.shared;
        let mut q = shared.lock();
        q.events.push(event);
        let wake = std::mem::take(&mut q.idle);
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Why the log cannot be written now (the last batch failed; it is
    /// being retried), or `None` if it can. Cheap: one atomic load when
    /// all is well.
    pub fn failure(&self) -> Option<String> {
        if !self.health.failing() {
            return None;
        }
        let e = self.health.error.locked();
        self.health.failing().then(|| e.clone())
    }

    /// Waits until everything queued so far is on disk, or the attempt to
    /// write it failed ([`Audit::failure`] then says why).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        let shared = &self.handle.shared;
        shared.lock().flushes.push(tx);
        shared.wake.notify_one();
        // An error: the writer thread is gone (it only stops when every
        // handle is dropped, or by a panic); nothing more will be written.
        let _ = rx.recv();
    }
}

struct Writer {
    file: File,
    /// The log's length after the last batch that was written whole.
    committed: u64,
    /// Space is allocated up to here (best effort).
    reserved_to: u64,
    /// A failed write may have left part of a batch past `committed`.
    dirty: bool,
    /// Records dropped because the backlog was full.
    dropped: u64,
    health: Arc<Health>,
    path: PathBuf,
    head_path: PathBuf,
    key: ring::hmac::Key,
    seq: u64,
    prev: String,
    /// Reused for every line, to spare an allocation per record.
    line: String,
    syslog: Option<Syslog>,
    sync_every: Duration,
    /// Written since the last fdatasync.
    unsynced: bool,
    /// The sequence number `audit.head` holds.
    head_seq: u64,
}

impl Writer {
    #[allow(
        clippy::too_many_lines,
        reason = "the writer loop: batch, write, fsync, answer, in one place for its invariants"
    )]
    fn run(mut self, shared: &Shared) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut waiters = Vec::new();
        let mut taken = Vec::new();
        let mut clock = Clock::default();
        let mut last_sync = Instant::now();
        // When the current round takes its records; `None`: idle, the next
        // record starts a round (and wakes this thread).
        let mut round: Option<Instant> = None;
        let mut closed = false;
        // When the last write failed (retried from there on).
        let mut failed_at = Instant::now();
        while !closed {
            let mut q = shared.lock();
            loop {
                let now = Instant::now();
                // Flushes and a stop do not wait for the round.
                if !q.flushes.is_empty() || q.closed {
                    break;
                }
                if round.is_none() && !q.events.is_empty() {
                    round = Some(now + COMMIT_EVERY);
                }
                // While failing, wake up to retry even if nothing arrives;
                // with written records not yet synced, wake up to sync them.
                let mut until = round;
                if self.health.failing() {
                    let retry = failed_at + RETRY_EVERY;
                    if until.is_none_or(|u| retry < u) {
                        until = Some(retry);
                    }
                } else if self.unsynced {
                    let sync = last_sync + self.sync_every;
                    if until.is_none_or(|u| sync < u) {
                        until = Some(sync);
                    }
                }
                // With no round due, the next record must wake this thread
                // to start one; within a round, queueing wakes nobody.
                q.idle = round.is_none();
                match until {
                    None => q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                    Some(u) if now >= u => break,
                    Some(u) => {
                        q = match shared.wake.wait_timeout(q, u - now) {
                            Ok((g, _)) => g,
                            Err(e) => e.into_inner().0,
                        }
                    }
                }
            }
            q.idle = false;
            closed = q.closed;
            std::mem::swap(&mut taken, &mut q.events);
            waiters.append(&mut q.flushes);
            drop(q);
            let now = Instant::now();
            round = match round {
                // Records keep coming: the next round is due one period
                // after this one (or after now, if this one came early),
                // so nothing queued from now on waits longer than that.
                Some(r) if !taken.is_empty() => Some((r.min(now) + COMMIT_EVERY).max(now)),
                // A round found nothing: idle until the next record.
                _ => None,
            };
            for e in taken.drain(..) {
                if buf.len() >= MAX_BACKLOG {
                    self.dropped += 1;
                } else {
                    self.append(&mut buf, e, &mut clock);
                }
            }
            if self.health.failing() && self.dropped > 0 && buf.len() < MAX_BACKLOG {
                let n = std::mem::take(&mut self.dropped);
                let e = Event::system(
                    "audit-dropped",
                    Some(format!(
                        "{n} records dropped while the log could not be written"
                    )),
                );
                self.append(&mut buf, e, &mut clock);
            }
            if !buf.is_empty() {
                match self.commit(&buf) {
                    Ok(()) => {
                        if self.health.failing() {
                            tracing::warn!(path = %self.path.display(), "audit log writable again; operations resume");
                            self.health.set(None);
                        }
                        buf.clear();
                    }
                    Err(e) => {
                        if !self.health.failing() {
                            tracing::error!(path = %self.path.display(), error = %e, "audit write failed; refusing operations until it succeeds");
                        }
                        metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
                        self.health
                            .set(Some(format!("{}: {e}", self.path.display())));
                        failed_at = Instant::now();
                    }
                }
            }
            // The head must never claim records that are still in `buf`.
            if self.unsynced
                && buf.is_empty()
                && (!waiters.is_empty() || last_sync.elapsed() >= self.sync_every)
            {
                self.sync();
                last_sync = Instant::now();
            }
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        }
        // The vault is stopping: leave the log and the head exact.
        if !buf.is_empty() {
            if let Err(e) = self.commit(&buf) {
                // The head must not claim records the log does not hold.
                tracing::error!(error = %e, "audit records lost at shutdown: the log cannot be written");
                return;
            }
        }
        self.sync();
    }

    /// Makes what was written durable, then records it in `audit.head`
    /// (never ahead of the synced log). Nothing new: nothing to do.
    fn sync(&mut self) {
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(path = %self.path.display(), error = %e, "audit log sync failed");
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
                return;
            }
            self.unsynced = false;
        }
        if self.seq != self.head_seq {
            self.write_head();
        }
    }

    fn append(&mut self, buf: &mut Vec<u8>, e: Event, clock: &mut Clock) {
        self.seq += 1;
        let start = buf.len();
        // Written by hand into a reused buffer, not through serde: this
        // runs once per signature. `verify` reads it back with serde.
        // Integers through itoa, not `write!`: the formatting machinery
        // was a third of the writer's CPU per record after the HMAC.
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let mut ints = itoa::Buffer::new();
        line.push_str("{\"seq\":");
        line.push_str(ints.format(self.seq));
        line.push_str(",\"time\":\"");
        clock.write(&mut line);
        line.push('"');
        let num = |line: &mut String, name: &str, v: Option<i64>| {
            line.push_str(",\"");
            line.push_str(name);
            line.push_str("\":");
            match v {
                Some(v) => line.push_str(itoa::Buffer::new().format(v)),
                None => line.push_str("null"),
            }
        };
        num(&mut line, "uid", e.caller.map(|c| c.uid.into()));
        num(&mut line, "gid", e.caller.map(|c| c.gid.into()));
        num(
            &mut line,
            "pid",
            e.caller.and_then(|c| c.pid).map(i64::from),
        );
        line.push_str(",\"op\":");
        json_str(&mut line, Some(e.op));
        line.push_str(",\"key\":");
        json_str(&mut line, e.key.as_deref());
        num(&mut line, "version", e.version.map(i64::from));
        line.push_str(",\"result\":");
        json_str(&mut line, Some(e.result));
        line.push_str(",\"error\":");
        json_str(&mut line, e.error.as_deref());
        line.push_str(",\"prev\":\"");
        line.push_str(&self.prev);
        line.push('"');
        let tag = ring::hmac::sign(&self.key, line.as_bytes());
        let mut mac = [0u8; 64];
        let _ = hex::encode_to_slice(tag.as_ref(), &mut mac);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(MAC_FIELD.as_bytes());
        buf.extend_from_slice(&mac);
        buf.extend_from_slice(b"\"}\n");
        if let Some(s) = &self.syslog {
            s.send(&buf[start..buf.len() - 1]);
        }
        self.prev.clear();
        self.prev
            .push_str(std::str::from_utf8(&mac).unwrap_or_default());
        self.line = line;
    }

    /// Appends a batch (synced later, by [`Writer::sync`]). On failure the log is cut back to
    /// its last whole batch (now or before the next try), so a retry
    /// appends whole lines to an intact chain.
    fn commit(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.dirty {
            self.file.set_len(self.committed)?;
            self.dirty = false;
        }
        self.reserve(buf.len() as u64);
        if let Err(e) = self.file.write_all(buf) {
            self.dirty = self.file.set_len(self.committed).is_err();
            return Err(e);
        }
        self.committed += buf.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Keeps [`RESERVE`] bytes allocated past the end of the log. Where
    /// the file system cannot (full, or no fallocate), appends simply
    /// need new space as they go.
    fn reserve(&mut self, incoming: u64) {
        let end = self.committed + incoming;
        if end + RESERVE_LOW <= self.reserved_to {
            return;
        }
        match nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            self.committed as libc::off_t,
            (incoming + RESERVE) as libc::off_t,
        ) {
            Ok(()) => self.reserved_to = end + RESERVE,
            Err(e) => {
                // Try again after the next RESERVE_LOW bytes, not per batch.
                let left = self.reserved_to.saturating_sub(end);
                if left > 0 {
                    tracing::warn!(path = %self.path.display(), error = %e, left, "cannot extend the audit log's reserved space");
                }
                self.reserved_to = self.reserved_to.max(end + RESERVE_LOW);
            }
        }
    }

    /// Replaces `audit.head`. A failure is logged and counted but does
    /// not stop the vault: the records themselves are on disk and chained;
    /// only cutting off the records after the stale head would go unseen.
    fn write_head(&mut self) {
        let head = serde_json::to_vec(&Head {
            seq: self.seq,
            mac: self.prev.clone(),
        })
        .unwrap_or_default();
        match fsutil::write_atomic(&self.head_path, &head, 0o600) {
            Ok(()) => self.head_seq = self.seq,
            Err(e) => {
                tracing::warn!(path = %self.head_path.display(), error = %e, "audit head not updated");
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
            }
        }
    }
}

/// Appends `s` as a JSON string (or `null`).
fn json_str(out: &mut String, s: Option<&str>) {
    match s {
        None => out.push_str("null"),
        Some(s) if s.chars().all(|c| c >= ' ' && c != '"' && c != '\\') => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Some(s) => out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".into())),
    }
}

/// RFC 3339 UTC timestamps with nanoseconds; the date-and-second part is
/// formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: String,
}

impl Clock {
    fn write(&mut self, out: &mut String) {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if d.as_secs() != self.second || self.prefix.is_empty() {
            self.second = d.as_secs();
            let t = time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let full = t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            self.prefix = full.trim_end_matches('Z').to_owned();
        }
        out.push_str(&self.prefix);
        let mut ints = itoa::Buffer::new();
        let nanos = ints.format(d.subsec_nanos());
        out.push('.');
        for _ in nanos.len()..9 {
            out.push('0');
        }
        out.push_str(nanos);
        out.push('Z');
    }
}

/// Reads the last complete line for the chain state; cuts a torn final
/// line (no newline) off the file. Returns (seq, mac, bytes removed).
fn tail(file: &mut File) -> std::io::Result<(u64, String, u64)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_owned(), 0));
    }
    let window = len.min(256 * 1024);
    file.seek(SeekFrom::Start(len - window))?;
    let mut buf = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut buf)?;
    let end = match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    let torn = buf.len() - end;
    if torn > 0 {
        file.set_len(len - torn as u64)?;
        file.sync_data()?;
    }
    let complete = &buf[..end];
    let last = complete
        .strip_suffix(b"\n")
        .map(|c| c.rsplit(|b| *b == b'\n').next().unwrap_or(c));
    match last {
        Some(line) if !line.is_empty() => {
            let text = String::from_utf8_lossy(line);
            let (seq, _, mac) = split(&text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "last audit record does not parse",
                )
            })?;
            Ok((seq, mac.to_owned(), torn as u64))
        }
        _ => Ok((0, GENESIS.to_owned(), torn as u64)),
    }
}

/// Splits a line into (seq, body, mac); `None` if it is not of our shape.
fn split(line: &str) -> Option<(u64, &str, &str)> {
    let i = line.rfind(MAC_FIELD)?;
    let body = &line[..i];
    let mac = line[i + MAC_FIELD.len()..].strip_suffix("\"}")?;
    let parsed: Line = serde_json::from_str(&format!("{body}}}")).ok()?;
    Some((parsed.seq, body, mac))
}

/// Checks the whole chain in `state_dir`. Returns the number of records.
pub fn verify(state_dir: &Path, key: &ring::hmac::Key) -> Result<u64, AuditError> {
    let path = state_dir.join(LOG_FILE);
    let file = File::open(&path).map_err(|source| AuditError::Io {
        path: path.clone(),
        source,
    })?;
    let mut prev = GENESIS.to_owned();
    let mut n = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let at = n + 1;
        let bad = |reason: &str| AuditError::Bad {
            line: at,
            reason: reason.to_owned(),
        };
        let (seq, body, mac) = split(&line).ok_or_else(|| bad("does not parse"))?;
        let parsed: Line =
            serde_json::from_str(&format!("{body}}}")).map_err(|_| bad("does not parse"))?;
        if seq != at {
            return Err(bad(&format!(
                "sequence {seq} where {at} was expected (deleted or reordered)"
            )));
        }
        if parsed.prev != prev {
            return Err(bad(
                "does not chain to the previous record (deleted or reordered)",
            ));
        }
        let tag = hex::decode(mac).map_err(|_| bad("MAC is not hex"))?;
        ring::hmac::verify(key, body.as_bytes(), &tag).map_err(|_| bad("MAC mismatch (edited)"))?;
        prev = mac.to_owned();
        n = at;
    }
    let head_path = state_dir.join(HEAD_FILE);
    if let Ok(bytes) = std::fs::read(&head_path) {
        let head: Head = serde_json::from_slice(&bytes).map_err(|_| AuditError::Bad {
            line: n,
            reason: format!("{} does not parse", head_path.display()),
        })?;
        // A crash between appending and replacing the head leaves the log
        // ahead of the head, which is fine; behind it means lines were cut.
        if head.seq > n {
            return Err(AuditError::Truncated {
                head: head.seq,
                found: n,
            });
        }
    }
    Ok(n)
}

/// Copies records to the local syslog (authpriv.info) as they are written.
struct Syslog {
    sock: std::os::unix::net::UnixDatagram,
    prefix: String,
}

impl Syslog {
    fn connect() -> Option<Syslog> {
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        match sock.connect("/dev/log") {
            Ok(()) => Some(Syslog {
                sock,
                prefix: format!("<86>vaultgate-vault[{}]: ", std::process::id()),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "syslog requested but /dev/log is not reachable; audit goes to the file only");
                None
            }
        }
    }

    fn send(&self, line: &[u8]) {
        let mut msg = Vec::with_capacity(self.prefix.len() + line.len());
        msg.extend_from_slice(self.prefix.as_bytes());
        msg.extend_from_slice(line);
        let _ = self.sock.send(&msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32])
    }

    fn write(dir: &Path, n: usize) {
        let audit = Audit::open(dir, key(), false, Duration::ZERO).unwrap();
        for i in 0..n {
            audit.record(Event {
                caller: Some(Caller {
                    uid: 1,
                    gid: 2,
                    pid: Some(3),
                }),
                op: "sign",
                key: Some(format!("k{i}")),
                version: Some(1),
                result: "ok",
                error: None,
            });
        }
        audit.flush();
    }

    #[test]
    fn chain_verifies_across_reopen_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        write(dir.path(), 5);
        assert_eq!(verify(dir.path(), &key()).unwrap(), 10);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // edit a field
        std::fs::write(&path, text.replacen("\"k3\"", "\"k9\"", 1)).unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::Bad { line: 4, .. })
        ));
        // delete a line
        let mut v = lines.clone();
        v.remove(2);
        std::fs::write(&path, v.join("\n") + "\n").unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::Bad { line: 3, .. })
        ));
        // swap two lines
        let mut v = lines.clone();
        v.swap(5, 6);
        std::fs::write(&path, v.join("\n") + "\n").unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::Bad { line: 6, .. })
        ));
        // cut the tail
        std::fs::write(&path, lines[..8].join("\n") + "\n").unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::Truncated { head: 10, found: 8 })
        ));
        // a different key cannot verify
        std::fs::write(&path, &text).unwrap();
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8u8; 32]);
        assert!(verify(dir.path(), &other).is_err());
    }

    /// Whether the log holds `n` lines within 5 s (no flush: only the
    /// writer's own schedule puts them there).
    fn lines_within(dir: &Path, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
            if text.lines().count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn records_reach_the_file_unflushed_whether_the_writer_is_idle_or_on_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), key(), false, Duration::from_secs(1)).unwrap();
        let event = || Event::system("test", None);
        // Idle writer: the record wakes it.
        audit.record(event());
        assert!(lines_within(dir.path(), 1), "a record to an idle writer");
        // A steady trickle keeps the writer on its 10 ms clock, where
        // queueing wakes nobody: the last ones must not be stranded.
        for _ in 0..50 {
            audit.record(event());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(lines_within(dir.path(), 51), "the end of a trickle");
        // An empty round makes it idle again; the next record wakes it.
        audit.record(event());
        assert!(lines_within(dir.path(), 52), "a record after the trickle");
        audit.flush();
        assert_eq!(verify(dir.path(), &key()).unwrap(), 52);
    }

    #[test]
    fn a_torn_last_line_is_repaired_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 3);
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"ti").unwrap();
        drop(f);
        write(dir.path(), 2);
        // 3 + the repair record + 2
        assert_eq!(verify(dir.path(), &key()).unwrap(), 6);
    }
}
