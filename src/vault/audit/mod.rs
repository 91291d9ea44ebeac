//! The audit log: one JSON line per operation and per refusal, chained.
//!
//! Each line carries `prev` (the previous line's MAC) and ends with its own
//! `mac`: HMAC-SHA256, under a subkey of the master key, over the line's
//! bytes up to the `,"mac":` field. Editing, deleting or reordering any line
//! breaks the chain; someone who can write the file but lacks the master
//! key cannot make a consistent one. `audit.head` (authenticated too, see
//! [`head`]) records where the log ended at its last sync, so cutting lines
//! off the end is detected, by `verify` and when the vault starts ([`tail`]).
//!
//! Records are written by one thread ([`writer`]), in batches: a record is
//! appended at most 10 ms after it is queued; the file is fdatasync'ed and
//! the head replaced every `audit_sync` (1 s by default), on flush and at
//! exit. While records keep coming the writer runs on its own 10 ms clock
//! and queueing a record wakes nobody; only a record that finds the writer
//! idle (nothing queued in its last round) wakes it.
//!
//! Complete, and fail closed: an operation is performed only if
//! [`Audit::admit`] lets it, which it does while the log can be written
//! and the queue is shorter than [`MAX_PENDING`]; every admitted
//! operation's record is written. When a batch cannot be written (disk
//! full, I/O error, file size limit), whatever part of it got in is cut off
//! again, the batch is kept and retried every [`writer::RETRY_EVERY`], and
//! the vault refuses every operation meanwhile. The log keeps
//! [`writer::RESERVE`] bytes allocated ahead of its end (fallocate, size
//! unchanged), so a disk that fills up stops key changes (their records
//! are new files) well before it stops the audit log, and with it signing.
//!
//! Rotation ([`rotate`]) closes the live log as a segment,
//! `audit-<first>-<last>.log`, listed with its digest in the authenticated
//! [`index`], and begins a new `audit.log` whose first record chains on to
//! the closed one's last: one chain across all segments, which `verify`
//! follows and the start checks ([`tail`]) know, so a rotation is never
//! taken for a cut, while a removed, altered or foreign segment is.
//!
//! - [`fold`]    — successful uses folded into counted records while queued
//! - [`head`]    — `audit.head`: where the log ended at its last sync
//! - [`index`]   — `audit.index`: the closed segments and their digests
//! - [`rotate`]  — closing the live log as a segment; retention
//! - [`segment`] — closed segments' file names, listing, hashing
//! - [`tail`]    — the checks made at start, and finishing a rotation a crash cut short
//! - [`verify`](mod@verify)  — checking the whole chain, segment by segment
//! - [`writer`]  — the writer thread

mod fold;
mod head;
mod index;
mod rotate;
mod segment;
mod tail;
mod verify;
mod writer;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use head::Anchor;
pub use rotate::Closed;
pub use tail::Alarm;
pub use verify::{Record, Report};

use super::policy::Caller;
use crate::sync::Locked;

pub const LOG_FILE: &str = "audit.log";
pub const HEAD_FILE: &str = "audit.head";
const MAC_FIELD: &str = ",\"mac\":\"";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Records queued but not yet written past which operations are refused
/// until the writer catches up (a flood cannot grow the queue without
/// bound, and nothing admitted is ever dropped).
pub const MAX_PENDING: usize = 100_000;

/// What happened, before it is numbered and chained.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub caller: Option<Caller>,
    pub op: &'static str,
    pub key: Option<String>,
    pub version: Option<u32>,
    /// The CA key that signed (or was refused to sign) a certificate
    /// issued for `key`.
    pub ca: Option<String>,
    /// The version of `ca` that signed.
    pub ca_version: Option<u32>,
    /// "ok", "denied", "error" or "alarm".
    pub result: &'static str,
    pub error: Option<String>,
    /// A counted summary: this record stands for `count` occurrences.
    pub count: Option<u64>,
    /// The key's generation after a keystore change.
    pub generation: Option<u64>,
    /// The keystore manifest's generation after a change.
    pub manifest: Option<u64>,
    /// The closed segment a rotation or retention record is about.
    pub segment: Option<String>,
    /// The SHA-256 of that segment's bytes, as the index lists it.
    pub sha256: Option<String>,
    /// A notice (refusal, counted summary) that may be dropped, and
    /// counted, while the log cannot be written. Operations never are.
    pub droppable: bool,
}

impl Event {
    pub fn system(op: &'static str, error: Option<String>) -> Event {
        Event {
            op,
            result: if error.is_some() { "error" } else { "ok" },
            error,
            ..Event::default()
        }
    }

    /// An integrity alarm, optionally about one key.
    pub fn alarm(alarm: &Alarm, key: Option<&str>) -> Event {
        Event {
            op: "integrity-alarm",
            key: key.map(str::to_owned),
            result: "alarm",
            error: Some(format!("{}: {}", alarm.kind, alarm.message)),
            ..Event::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit record {line} ({file}): {reason}")]
    Bad {
        file: String,
        line: u64,
        reason: String,
    },
    #[error("closed audit segment {file} (records {first}..={last}) is missing")]
    SegmentMissing { file: String, first: u64, last: u64 },
    #[error("closed audit segment {file} is not what audit.index lists: {reason}")]
    SegmentAltered { file: String, reason: String },
    #[error(
        "{file} is not in audit.index: a segment of another chain, or an older index was put back"
    )]
    SegmentUnknown { file: String },
    #[error(
        "audit.index is missing but closed segment {file} is here: which segments make up the chain cannot be told"
    )]
    IndexMissing { file: String },
    #[error("{0}")]
    IndexForged(String),
    #[error("the live audit log holds no record since the last rotation (it ends at {seq}): nothing to rotate")]
    NothingToRotate { seq: u64 },
    #[error("the audit log cannot be written ({0})")]
    Unwritable(String),
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("audit log is truncated: {head} records were written, {found} remain")]
    Truncated { head: u64, found: u64 },
    #[error(
        "audit.head is missing: whether records after the log's {records} were cut cannot be told"
    )]
    HeadMissing { records: u64 },
    #[error("{0}")]
    HeadForged(String),
    #[error(
        "the chain of {records} records is intact, but it holds {n} integrity alarm(s): {list}",
        n = .alarms.len(),
        list = .alarms.iter().map(|(s, m)| format!("record {s}: {m}")).collect::<Vec<_>>().join("; ")
    )]
    Alarms {
        records: u64,
        alarms: Vec<(u64, String)>,
    },
}

/// How the log is written: syslog copy, sync period, rotation, retention.
#[derive(Debug, Clone)]
pub struct Options {
    pub syslog: bool,
    /// How often the log is fdatasync'ed (zero: every batch).
    pub sync_every: Duration,
    /// Rotate once the live log holds this many bytes (0: only on request).
    pub rotate_size: u64,
    /// Closed segments kept; older ones are deleted at a rotation (0: all).
    pub keep_segments: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            syslog: false,
            sync_every: Duration::from_secs(1),
            rotate_size: 0,
            keep_segments: 0,
        }
    }
}

/// What callers hand the writer thread.
#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    /// Which of `events` later uses may be folded into.
    folds: fold::Folds,
    flushes: Vec<mpsc::Sender<()>>,
    rotations: Vec<rotate::Reply>,
    /// The writer waits with no deadline: the next record must wake it.
    idle: bool,
    /// Every [`Audit`] handle is gone: write what is left and stop.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Records queued and not yet written.
    pending: AtomicUsize,
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
    path: PathBuf,
    /// The manifest generation `audit.head` recorded when the log was
    /// opened, if the head was authentic.
    head_manifest: Option<u64>,
}

/// What the writer shares with the handles: whether the last attempt to
/// write failed and why, the synced position, the manifest generation.
struct Health {
    failing: AtomicBool,
    error: Mutex<String>,
    /// Where the log ended at its last sync (what the head holds).
    synced: Mutex<Anchor>,
    /// The keystore manifest's generation, written into every head.
    manifest: AtomicU64,
    /// Rotate once the live log holds this many bytes (0: never by size).
    rotate_size: AtomicU64,
    /// Closed segments retention keeps (0: all).
    keep_segments: AtomicUsize,
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

/// Counts, logs and records an alarm (see [`tail`]).
fn raise(audit: &Audit, alarm: &Alarm, key: Option<&str>) {
    tracing::error!(kind = alarm.kind, key, "integrity alarm: {}", alarm.message);
    metrics::counter!("vaultgate_vault_integrity_alarms_total", "kind" => alarm.kind).increment(1);
    audit.record(Event::alarm(alarm, key));
}

impl Audit {
    /// Opens (or creates) the log in `state_dir`, checks it against its
    /// head (recording an alarm for what does not fit, cutting a torn last
    /// line), writes the head for where it now ends, and starts the writer
    /// thread. Records are written to the file in batches, each at most
    /// 10 ms after it is queued (a killed vault loses only what is not yet
    /// written); the file is fdatasync'ed and `audit.head` replaced every
    /// `sync_every` (zero: every batch), at each [`Audit::flush`] and at
    /// exit, so a power loss costs at most that much of the log's tail —
    /// the trade databases make with a WAL writer delay. A sync costs
    /// ~200 µs of CPU on a VM: one per batch at a few hundred signatures a
    /// second made the audit thread a third of the vault's CPU.
    pub fn open(
        state_dir: &Path,
        key: ring::hmac::Key,
        options: &Options,
    ) -> Result<Audit, AuditError> {
        let path = state_dir.join(LOG_FILE);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let layout = tail::segments(state_dir, &path, &key)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let opened = tail::open(state_dir, &path, &mut file, &key, layout)?;
        let committed = file.metadata().map_err(io)?.len();
        let health = Arc::new(Health {
            failing: AtomicBool::new(false),
            error: Mutex::new(String::new()),
            synced: Mutex::new(opened.anchor.clone()),
            manifest: AtomicU64::new(opened.head_manifest.unwrap_or(0)),
            rotate_size: AtomicU64::new(options.rotate_size),
            keep_segments: AtomicUsize::new(options.keep_segments),
        });
        let mut writer = writer::Writer {
            file,
            committed,
            reserved_to: 0,
            dirty: false,
            dropped: 0,
            health: health.clone(),
            path: path.clone(),
            dir: state_dir.to_owned(),
            head_path: state_dir.join(HEAD_FILE),
            index: opened.index,
            own_records: 0,
            key,
            seq: opened.anchor.seq,
            prev: opened.anchor.mac.clone(),
            line: String::with_capacity(512),
            syslog: if options.syslog {
                Syslog::connect()
            } else {
                None
            },
            sync_every: options.sync_every,
            unsynced: false,
            head_seq: u64::MAX,
            head_manifest: u64::MAX,
        };
        // A head for where the log ends now, before anything is appended:
        // from here on a log that ends short of its head was cut.
        writer.write_head();
        writer.reserve(0);
        writer.publish_size();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            pending: AtomicUsize::new(0),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(&theirs))
            .map_err(io)?;
        let audit = Audit {
            handle: Arc::new(Handle { shared }),
            health,
            path,
            head_manifest: opened.head_manifest,
        };
        if opened.repaired > 0 {
            audit.record(Event::system(
                "audit-repair",
                Some(format!(
                    "removed a torn last line of {} bytes left by a crash",
                    opened.repaired
                )),
            ));
        }
        if opened.legacy_head {
            tracing::warn!(
                "audit.head was of the old unauthenticated format: trusted this once, \
                 and replaced by an authenticated one"
            );
        }
        for alarm in &opened.alarms {
            raise(&audit, alarm, None);
        }
        Ok(audit)
    }

    /// Queues a record, or counts a successful use in one queued for the
    /// same caller, key and version ([`fold`]). Never blocks the caller
    /// (beyond a short lock), and wakes the writer only if it is idle.
    pub fn record(&self, event: Event) {
        let shared = &self.handle.shared;
        let mut guard = shared.lock();
        let q = &mut *guard;
        if q.folds.fold(&mut q.events, &event) {
            return;
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        q.events.push(event);
        let wake = std::mem::take(&mut q.idle);
        drop(guard);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Records an integrity alarm: logged as an error, counted in
    /// `vaultgate_vault_integrity_alarms_total{kind}`, and written as a
    /// record `verify` fails on.
    pub fn alarm(&self, alarm: &Alarm, key: Option<&str>) {
        raise(self, alarm, key);
    }

    /// Whether an operation may be performed now: only if its record can
    /// be written, i.e. the log is writable and not too far behind.
    /// Cheap: two atomic loads when all is well.
    pub fn admit(&self) -> Result<(), String> {
        if let Some(why) = self.failure() {
            return Err(format!("the audit log cannot be written ({why})"));
        }
        let n = self.handle.shared.pending.load(Ordering::Acquire);
        if n > MAX_PENDING {
            metrics::counter!("vaultgate_vault_audit_behind_total").increment(1);
            return Err(format!(
                "the audit log is {n} records behind; the vault takes new operations once it has caught up"
            ));
        }
        Ok(())
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

    /// Where the log ended at its last sync: what the keystore manifest
    /// anchors.
    pub fn synced(&self) -> Anchor {
        self.health.synced.locked().clone()
    }

    /// The manifest generation the next heads record.
    pub fn set_manifest(&self, generation: u64) {
        self.health.manifest.store(generation, Ordering::Release);
    }

    /// The manifest generation `audit.head` held when the log was opened
    /// (`None`: no authentic head, or one from before manifests).
    pub fn head_manifest(&self) -> Option<u64> {
        self.head_manifest
    }

    /// Whether the log holds the record `anchor` names, where it names it
    /// (in the live log, or in the closed segment that holds it now).
    pub fn holds(&self, anchor: &Anchor) -> Result<bool, AuditError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let path = tail::holder(dir, anchor.seq).unwrap_or_else(|| self.path.clone());
        tail::holds(&path, anchor).map_err(|source| AuditError::Io { path, source })
    }

    /// Closes the live log as a segment and begins a new one that chains
    /// on (see [`rotate`]); waits until it is done. Retention then deletes
    /// the oldest segments past `keep_segments`.
    pub fn rotate(&self) -> Result<Closed, Arc<AuditError>> {
        let (tx, rx) = mpsc::channel();
        let shared = &self.handle.shared;
        shared.lock().rotations.push(tx);
        shared.wake.notify_one();
        rx.recv().unwrap_or(Err(Arc::new(AuditError::Stopped)))
    }

    /// Changes the rotation size (0: never by size) and the segments
    /// retention keeps (0: all), from the next round on.
    pub fn set_rotation(&self, rotate_size: u64, keep_segments: usize) {
        self.health
            .rotate_size
            .store(rotate_size, Ordering::Release);
        self.health
            .keep_segments
            .store(keep_segments, Ordering::Release);
    }
}

/// Checks the whole chain in `state_dir`: the number of records, or what
/// is wrong, alarms included.
pub fn verify(state_dir: &Path, key: &ring::hmac::Key) -> Result<Report, AuditError> {
    let report = verify::check_settled(state_dir, key)?;
    if !report.alarms.is_empty() {
        return Err(AuditError::Alarms {
            records: report.records,
            alarms: report.alarms,
        });
    }
    Ok(report)
}

/// The keystore manifest generation the authentic `audit.head` in
/// `state_dir` records, read without opening the log (an offline tool's
/// view of what the vault checks at start); `None` without one.
pub fn head_manifest(state_dir: &Path, key: &ring::hmac::Key) -> std::io::Result<Option<u64>> {
    Ok(match head::read(&state_dir.join(HEAD_FILE), key)? {
        head::Head::Authentic { manifest, .. } => Some(manifest),
        _ => None,
    })
}

/// Reads every verified record in order (for the keystore's check of its
/// manifest against the chain). Alarms do not stop it.
#[expect(
    dead_code,
    reason = "the keystore manifest's check reads the chain with it"
)]
pub fn scan(
    state_dir: &Path,
    key: &ring::hmac::Key,
    each: impl FnMut(&Record),
) -> Result<Report, AuditError> {
    verify::check(state_dir, key, each)
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

/// Splits a line into (seq, body, mac); `None` if it is not of our shape.
fn split(line: &str) -> Option<(u64, &str, &str)> {
    let i = line.rfind(MAC_FIELD)?;
    let body = &line[..i];
    let mac = line[i + MAC_FIELD.len()..].strip_suffix("\"}")?;
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let parsed: Seq = serde_json::from_str(&format!("{body}}}")).ok()?;
    Some((parsed.seq, body, mac))
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
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    fn key() -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32])
    }

    fn opts(sync_every: Duration) -> Options {
        Options {
            sync_every,
            ..Options::default()
        }
    }

    fn sign_event(i: usize) -> Event {
        Event {
            caller: Some(Caller::new(1, 2, Some(3))),
            op: "sign",
            key: Some(format!("k{i}")),
            version: Some(1),
            result: "ok",
            ..Event::default()
        }
    }

    fn write(dir: &Path, n: usize) {
        let audit = Audit::open(dir, key(), &opts(Duration::ZERO)).unwrap();
        for i in 0..n {
            audit.record(sign_event(i));
        }
        audit.flush();
    }

    fn records(dir: &Path) -> u64 {
        verify(dir, &key()).unwrap().records
    }

    /// The alarms the log holds, as `verify` reports them.
    fn alarms(dir: &Path) -> Vec<String> {
        match verify(dir, &key()) {
            Err(AuditError::Alarms { alarms, .. }) => alarms.into_iter().map(|a| a.1).collect(),
            other => panic!("expected alarms, got {other:?}"),
        }
    }

    #[test]
    fn chain_verifies_across_reopen_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        write(dir.path(), 5);
        assert_eq!(records(dir.path()), 10);
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
        // an edited head is refused, and so is a missing one
        let head = dir.path().join(HEAD_FILE);
        let good = std::fs::read(&head).unwrap();
        std::fs::write(
            &head,
            String::from_utf8_lossy(&good).replace("\"seq\":10", "\"seq\":9"),
        )
        .unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::HeadForged(_))
        ));
        std::fs::remove_file(&head).unwrap();
        assert!(matches!(
            verify(dir.path(), &key()),
            Err(AuditError::HeadMissing { records: 10 })
        ));
    }

    #[test]
    fn a_tail_cut_while_stopped_is_an_alarm_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Cut at a line boundary, as someone with write access could.
        std::fs::write(&path, lines[..7].join("\n") + "\n").unwrap();
        write(dir.path(), 2);
        let found = alarms(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("audit-cut") && found[0].contains("records 8..=10 are missing"),
            "{found:?}"
        );
        // Starting again does not make it go away.
        write(dir.path(), 1);
        assert_eq!(alarms(dir.path()).len(), 1);
    }

    #[test]
    fn a_missing_head_is_an_alarm() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 4);
        std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
        write(dir.path(), 1);
        let found = alarms(dir.path());
        assert!(found[0].contains("audit-head-missing"), "{found:?}");
    }

    #[test]
    fn a_cut_inside_a_synced_record_is_not_taken_for_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // Record 5 was synced (the head names it): cutting inside it is
        // not what a crash does.
        std::fs::write(&path, &text[..text.len() - 40]).unwrap();
        write(dir.path(), 1);
        let found = alarms(dir.path());
        assert!(
            found.iter().any(|a| a.contains("audit-fragment")),
            "{found:?}"
        );
        assert!(found.iter().any(|a| a.contains("audit-cut")), "{found:?}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("audit.fragment-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the fragment is kept for inspection");
    }

    #[test]
    fn a_flood_of_records_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), key(), &opts(Duration::from_secs(1))).unwrap();
        // Big records from several threads at once: far more than one
        // round's worth of bytes reaches the writer between its rounds.
        let long = "x".repeat(600);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (audit, long) = (&audit, &long);
                s.spawn(move || {
                    for i in 0..8_000 {
                        audit.record(Event {
                            error: Some(format!("{t} {i} {long}")),
                            result: "denied",
                            ..sign_event(i)
                        });
                    }
                });
            }
        });
        audit.flush();
        let report = verify(dir.path(), &key()).unwrap();
        assert_eq!(report.records, 32_000);
        assert_eq!(report.dropped, 0);
        assert_eq!(audit.handle.shared.pending.load(Ordering::Acquire), 0);
        assert!(audit.admit().is_ok());
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
        let audit = Audit::open(dir.path(), key(), &opts(Duration::from_secs(1))).unwrap();
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
        assert_eq!(records(dir.path()), 52);
    }

    /// The alarm records in the live log (where `verify` stops short of
    /// them, at a missing segment).
    fn recorded_alarms(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"op\":\"integrity-alarm\""))
            .map(str::to_owned)
            .collect()
    }

    /// The closed segments in `dir`, oldest first.
    fn segments(dir: &Path) -> Vec<String> {
        segment::list(dir)
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect()
    }

    fn write_and_rotate(audit: &Audit, n: usize) -> Closed {
        for i in 0..n {
            audit.record(sign_event(i));
        }
        audit.rotate().unwrap()
    }

    #[test]
    fn rotation_closes_a_segment_the_next_one_chains_on_to() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), key(), &opts(Duration::ZERO)).unwrap();
        let one = write_and_rotate(&audit, 5);
        assert_eq!((one.first, one.last), (1, 5));
        assert_eq!(one.segment, segment::name(1, 5));
        // The new log's first record (6) names the closed segment.
        let two = write_and_rotate(&audit, 3);
        assert_eq!((two.first, two.last), (6, 9));
        // Only the rotation's own record since: nothing to close.
        assert!(matches!(
            *audit.rotate().unwrap_err(),
            AuditError::NothingToRotate { seq: 10 }
        ));
        audit.record(sign_event(0));
        audit.flush();
        let live = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert!(
            live.starts_with("{\"seq\":10,")
                && live.contains("\"op\":\"audit-segment-closed\"")
                && live.contains(&format!("\"segment\":\"{}\"", two.segment)),
            "{live}"
        );
        let report = verify(dir.path(), &key()).unwrap();
        assert_eq!(
            (report.records, report.first, report.last, report.segments),
            (11, 1, 11, 2)
        );
        drop(audit);
        // Reopened: no alarm, the chain goes on.
        write(dir.path(), 1);
        assert_eq!(verify(dir.path(), &key()).unwrap().last, 12);
        assert!(audit_ok_after_reopen(dir.path()));
    }

    /// Opening once more raises no alarm.
    fn audit_ok_after_reopen(dir: &Path) -> bool {
        write(dir, 0);
        verify(dir, &key()).is_ok()
    }

    #[test]
    fn a_missing_altered_or_foreign_segment_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), key(), &opts(Duration::ZERO)).unwrap();
        let names: Vec<String> = (0..3)
            .map(|_| write_and_rotate(&audit, 4).segment)
            .collect();
        audit.flush();
        drop(audit);
        let middle = dir.path().join(&names[1]);
        let good = std::fs::read(&middle).unwrap();

        std::fs::remove_file(&middle).unwrap();
        let e = verify(dir.path(), &key()).unwrap_err();
        assert!(
            matches!(&e, AuditError::SegmentMissing { file, .. } if *file == names[1]),
            "{e}"
        );
        write(dir.path(), 0);
        let found = recorded_alarms(dir.path());
        assert!(
            found
                .iter()
                .any(|a| a.contains("audit-segment-missing") && a.contains(&names[1])),
            "{found:?}"
        );

        // An edited record inside a closed segment.
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), key(), &opts(Duration::ZERO)).unwrap();
        let first = write_and_rotate(&audit, 4).segment;
        write_and_rotate(&audit, 4);
        audit.flush();
        drop(audit);
        let path = dir.path().join(&first);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"k1\"", "\"k7\"", 1)).unwrap();
        let e = verify(dir.path(), &key()).unwrap_err();
        assert!(
            matches!(&e, AuditError::Bad { file, line: 2, .. } if *file == first),
            "{e}"
        );

        // A segment from another vault's chain, under the same name.
        let other = tempfile::tempdir().unwrap();
        let audit = Audit::open(
            other.path(),
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[5u8; 32]),
            &opts(Duration::ZERO),
        )
        .unwrap();
        for i in 0..4 {
            audit.record(sign_event(i));
        }
        let theirs = audit.rotate().unwrap().segment;
        audit.flush();
        drop(audit);
        assert_eq!(theirs, first);
        std::fs::copy(other.path().join(&theirs), &path).unwrap();
        let e = verify(dir.path(), &key()).unwrap_err();
        assert!(e.to_string().contains(&first), "{e}");

        // A segment the index does not list.
        std::fs::write(&path, text).unwrap();
        assert!(verify(dir.path(), &key()).is_ok());
        std::fs::write(dir.path().join(segment::name(100, 120)), &good).unwrap();
        let e = verify(dir.path(), &key()).unwrap_err();
        assert!(matches!(e, AuditError::SegmentUnknown { .. }), "{e}");
    }

    #[test]
    fn a_rotation_cut_short_by_a_crash_is_finished_at_start() {
        for linked in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            write(d, 6);
            // The state just before the rotation's renames: the log and
            // head as they were, the index already naming the segment.
            let log = std::fs::read(d.join(LOG_FILE)).unwrap();
            let head = std::fs::read(d.join(HEAD_FILE)).unwrap();
            let audit = Audit::open(d, key(), &opts(Duration::ZERO)).unwrap();
            let closed = audit.rotate().unwrap();
            audit.flush();
            drop(audit);
            std::fs::remove_file(d.join(LOG_FILE)).unwrap();
            std::fs::remove_file(d.join(&closed.segment)).unwrap();
            std::fs::write(d.join(LOG_FILE), &log).unwrap();
            std::fs::write(d.join(HEAD_FILE), &head).unwrap();
            if linked {
                std::fs::hard_link(d.join(LOG_FILE), d.join(&closed.segment)).unwrap();
            }
            write(d, 2);
            let report = verify(d, &key()).unwrap();
            assert_eq!(report.segments, 1, "linked: {linked}");
            assert_eq!(segments(d), std::slice::from_ref(&closed.segment));
            // 6 in the segment, 2 in the new log; no alarm, no repair.
            assert_eq!((report.records, report.last), (8, 8), "linked: {linked}");
        }
    }

    #[test]
    fn retention_deletes_the_oldest_segments_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let audit = Audit::open(
            d,
            key(),
            &Options {
                keep_segments: 2,
                ..opts(Duration::ZERO)
            },
        )
        .unwrap();
        let closed: Vec<Closed> = (0..4).map(|_| write_and_rotate(&audit, 3)).collect();
        assert_eq!(closed[2].deleted, [closed[0].segment.clone()]);
        assert_eq!(closed[3].deleted, [closed[1].segment.clone()]);
        assert_eq!(
            segments(d),
            [closed[2].segment.clone(), closed[3].segment.clone()]
        );
        audit.flush();
        let report = verify(d, &key()).unwrap();
        assert_eq!((report.first, report.segments), (closed[2].first, 2));
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            5,
            "2 segments, log, head, index"
        );
        let live = std::fs::read_to_string(d.join(LOG_FILE)).unwrap();
        assert!(
            live.contains(&format!(
                "\"op\":\"audit-segment-deleted\",\"result\":\"ok\",\"count\":4,\"segment\":\"{}\"",
                closed[1].segment
            )),
            "{live}"
        );
        drop(audit);
        // Deleting the oldest kept segment by hand is not retention.
        std::fs::remove_file(d.join(&closed[2].segment)).unwrap();
        write(d, 0);
        assert!(recorded_alarms(d)
            .iter()
            .any(|a| a.contains("audit-segment-missing")));
    }

    #[test]
    fn the_log_rotates_by_size_while_records_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(
            dir.path(),
            key(),
            &Options {
                rotate_size: 8 << 10,
                ..opts(Duration::from_millis(50))
            },
        )
        .unwrap();
        // The writer rotates at most once per round; a flush ends one, so
        // rounds here hold 20 records (~3 KiB) whatever the machine's load.
        for i in 0..2000 {
            audit.record(sign_event(i));
            if i % 20 == 19 {
                audit.flush();
            }
        }
        audit.flush();
        let n = segments(dir.path()).len();
        assert!(n >= 20, "only {n} segments");
        for f in segment::list(dir.path()).unwrap() {
            let len = std::fs::metadata(dir.path().join(&f.name)).unwrap().len();
            // A segment ends with the batch that reached the size.
            assert!(len >= 8 << 10, "{}: {len} bytes", f.name);
        }
        let report = verify(dir.path(), &key()).unwrap();
        assert_eq!(report.records, 2000 + n as u64);
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
        assert_eq!(records(dir.path()), 6);
    }
}
