//! The audit writer thread: takes queued records in rounds, numbers,
//! chains and appends them, syncs the file and replaces the head.
//!
//! Records are never dropped while the log can be written: the vault
//! admits an operation only while the queue is short enough
//! ([`super::Audit::admit`]), so what is queued is bounded by what is in
//! flight, and everything queued is written. Only while the log cannot be
//! written, when no operation is admitted, are notices (connection
//! refusals, counted summaries) dropped past [`MAX_BACKLOG`]; an
//! `audit-dropped` record then says how many, as soon as writing resumes.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::head::{self, Anchor};
use super::index::Index;
use super::rotate::Reply;
use super::{json_str, Clock, Event, Health, Shared, Syslog, MAC_FIELD};
use crate::fsutil;
use crate::sync::Locked;
use crate::vault::policy::Caller;

/// Longest a record waits before its batch is written, under load.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How often a batch that could not be written is tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Space kept allocated past the end of the log.
pub const RESERVE: u64 = 1 << 20;
/// The reserve is topped up when less than this is left of it.
const RESERVE_LOW: u64 = 256 << 10;
/// Bytes of records held in memory while the log cannot be written; past
/// this, notices are dropped and counted.
const MAX_BACKLOG: usize = 8 << 20;

pub(super) struct Writer {
    pub file: File,
    /// The log's length after the last batch that was written whole.
    pub committed: u64,
    /// Space is allocated up to here (best effort).
    pub reserved_to: u64,
    /// A failed write may have left part of a batch past `committed`.
    pub dirty: bool,
    /// Notices dropped because the backlog was full.
    pub dropped: u64,
    pub health: Arc<Health>,
    pub path: PathBuf,
    /// The state dir, where closed segments and the index live.
    pub dir: PathBuf,
    pub head_path: PathBuf,
    /// The closed segments; the live log chains on from their end.
    pub index: Index,
    /// Records the last rotation began the live log with (its own):
    /// a log holding only those has nothing to rotate.
    pub own_records: u64,
    pub key: ring::hmac::Key,
    pub seq: u64,
    pub prev: String,
    /// Reused for every line, to spare an allocation per record.
    pub line: String,
    pub syslog: Option<Syslog>,
    pub sync_every: Duration,
    /// Written since the last fdatasync.
    pub unsynced: bool,
    /// What `audit.head` holds now.
    pub head_seq: u64,
    pub head_manifest: u64,
}

/// The writer's state between rounds.
pub(super) struct Round {
    /// Lines appended but not yet written to the file.
    pub buf: Vec<u8>,
    /// Records in `buf`, to be taken off the pending count once written.
    in_buf: usize,
    waiters: Vec<mpsc::Sender<()>>,
    /// Rotations asked for, answered at the end of this round.
    pub rotations: Vec<Reply>,
    /// A rotation by size failed: not tried again before this.
    pub size_retry: Option<Instant>,
    taken: Vec<Event>,
    pub clock: Clock,
    last_sync: Instant,
    /// When the current round takes its records; `None`: idle, the next
    /// record starts a round (and wakes the thread).
    due: Option<Instant>,
    closed: bool,
    /// When the last write failed (retried from there on).
    failed_at: Instant,
}

impl Writer {
    pub fn run(mut self, shared: &Shared) {
        let mut r = Round {
            buf: Vec::with_capacity(64 * 1024),
            in_buf: 0,
            waiters: Vec::new(),
            rotations: Vec::new(),
            size_retry: None,
            taken: Vec::new(),
            clock: Clock::default(),
            last_sync: Instant::now(),
            due: None,
            closed: false,
            failed_at: Instant::now(),
        };
        while !r.closed {
            self.wait_for_round(shared, &mut r);
            self.append_taken(&mut r);
            self.write_buffered(shared, &mut r);
            if self.rotate_if_due(&mut r) {
                self.write_buffered(shared, &mut r);
            }
            self.sync_if_due(&mut r);
            for w in r.waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.finish(shared, &mut r);
    }

    /// Sleeps until records are due, a flush or stop is asked for, a
    /// failed write is to be retried or written records are to be synced;
    /// then takes what is queued.
    fn wait_for_round(&self, shared: &Shared, r: &mut Round) {
        let mut q = shared.lock();
        loop {
            let now = Instant::now();
            // Flushes and a stop do not wait for the round.
            if !q.flushes.is_empty() || !q.rotations.is_empty() || q.closed {
                break;
            }
            if r.due.is_none() && !q.events.is_empty() {
                r.due = Some(now + COMMIT_EVERY);
            }
            let mut until = r.due;
            if self.health.failing() {
                let retry = r.failed_at + RETRY_EVERY;
                if until.is_none_or(|u| retry < u) {
                    until = Some(retry);
                }
            } else if self.unsynced {
                let sync = r.last_sync + self.sync_every;
                if until.is_none_or(|u| sync < u) {
                    until = Some(sync);
                }
            }
            // With no round due, the next record must wake this thread
            // to start one; within a round, queueing wakes nobody.
            q.idle = r.due.is_none();
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
        r.closed = q.closed;
        std::mem::swap(&mut r.taken, &mut q.events);
        q.folds.taken();
        r.waiters.append(&mut q.flushes);
        r.rotations.append(&mut q.rotations);
        drop(q);
        let now = Instant::now();
        r.due = match r.due {
            // Records keep coming: the next round is due one period after
            // this one (or after now, if this one came early), so nothing
            // queued from now on waits longer than that.
            Some(d) if !r.taken.is_empty() => Some((d.min(now) + COMMIT_EVERY).max(now)),
            // A round found nothing: idle until the next record.
            _ => None,
        };
    }

    /// Numbers and chains the records taken. While the log cannot be
    /// written and the backlog is full, notices are counted instead.
    fn append_taken(&mut self, r: &mut Round) {
        let mut taken = std::mem::take(&mut r.taken);
        for e in taken.drain(..) {
            if e.droppable && self.health.failing() && r.buf.len() >= MAX_BACKLOG {
                self.dropped += 1;
                // Off the pending count with the batch it would have joined.
                r.in_buf += 1;
            } else {
                self.append(&mut r.buf, e, &mut r.clock);
                r.in_buf += 1;
            }
        }
        r.taken = taken;
        if self.dropped > 0 && !self.health.failing() {
            let n = std::mem::take(&mut self.dropped);
            let e = Event {
                count: Some(n),
                ..Event::system(
                    "audit-dropped",
                    Some(format!(
                        "{n} notices (refusals, counted summaries) were dropped while the log \
                         could not be written"
                    )),
                )
            };
            self.append(&mut r.buf, e, &mut r.clock);
        }
    }

    /// Writes the batch; on failure keeps it for the next try.
    fn write_buffered(&mut self, shared: &Shared, r: &mut Round) {
        if r.buf.is_empty() {
            return;
        }
        match self.commit(&r.buf) {
            Ok(()) => {
                if self.health.failing() {
                    tracing::warn!(path = %self.path.display(), "audit log writable again; operations resume");
                    self.health.set(None);
                }
                r.buf.clear();
                shared
                    .pending
                    .fetch_sub(std::mem::take(&mut r.in_buf), Ordering::AcqRel);
                self.publish_size();
            }
            Err(e) => {
                if !self.health.failing() {
                    tracing::error!(path = %self.path.display(), error = %e, "audit write failed; refusing operations until it succeeds");
                }
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
                self.health
                    .set(Some(format!("{}: {e}", self.path.display())));
                r.failed_at = Instant::now();
            }
        }
    }

    /// Syncs when a flush waits or the sync period has passed. The head
    /// must never claim records that are still in the buffer.
    fn sync_if_due(&mut self, r: &mut Round) {
        if (self.unsynced || self.head_behind())
            && r.buf.is_empty()
            && (!r.waiters.is_empty() || r.last_sync.elapsed() >= self.sync_every)
        {
            self.sync();
            r.last_sync = Instant::now();
        }
    }

    /// The vault is stopping: leave the log and the head exact.
    fn finish(&mut self, shared: &Shared, r: &mut Round) {
        if !r.buf.is_empty() {
            if let Err(e) = self.commit(&r.buf) {
                // The head must not claim records the log does not hold.
                tracing::error!(error = %e, "audit records lost at shutdown: the log cannot be written");
                return;
            }
            shared.pending.fetch_sub(r.in_buf, Ordering::AcqRel);
        }
        self.sync();
    }

    fn head_behind(&self) -> bool {
        self.seq != self.head_seq
            || self.health.manifest.load(Ordering::Acquire) != self.head_manifest
    }

    /// Makes what was written durable, then records it in `audit.head`
    /// (never ahead of the synced log). Nothing new: nothing to do.
    pub fn sync(&mut self) {
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(path = %self.path.display(), error = %e, "audit log sync failed");
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
                return;
            }
            self.unsynced = false;
        }
        if self.head_behind() {
            self.write_head();
        }
    }

    pub fn append(&mut self, buf: &mut Vec<u8>, e: Event, clock: &mut Clock) {
        self.seq += 1;
        let start = buf.len();
        let line = self.format(&e, clock);
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

    /// The record's line up to its MAC. Written by hand into a reused
    /// buffer, not through serde: this runs once per signature, and
    /// `verify` reads it back with serde. Integers through itoa, not
    /// `write!`: the formatting machinery was a third of the writer's CPU
    /// per record after the HMAC. Empty fields are left out.
    fn format(&mut self, e: &Event, clock: &mut Clock) -> String {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.push_str("{\"seq\":");
        line.push_str(itoa::Buffer::new().format(self.seq));
        line.push_str(",\"time\":\"");
        clock.write(&mut line);
        line.push('"');
        let num = |line: &mut String, name: &str, v: Option<i64>| {
            if let Some(v) = v {
                line.push_str(",\"");
                line.push_str(name);
                line.push_str("\":");
                line.push_str(itoa::Buffer::new().format(v));
            }
        };
        let text = |line: &mut String, name: &str, v: Option<&str>| {
            if v.is_some() {
                line.push_str(",\"");
                line.push_str(name);
                line.push_str("\":");
                json_str(line, v);
            }
        };
        let local = e.caller.as_ref().and_then(Caller::local);
        num(&mut line, "uid", local.map(|c| c.uid.into()));
        num(&mut line, "gid", local.map(|c| c.gid.into()));
        num(&mut line, "pid", local.and_then(|c| c.pid).map(i64::from));
        // A remote caller: its certificate identity (none if it showed no
        // valid one) and where it connected from.
        if let Some(r) = e.caller.as_ref().and_then(Caller::remote) {
            text(&mut line, "identity", r.identity.as_deref());
            text(&mut line, "peer", Some(&r.peer.to_string()));
        }
        text(&mut line, "op", Some(e.op));
        text(&mut line, "key", e.key.as_deref());
        num(&mut line, "version", e.version.map(i64::from));
        text(&mut line, "ca", e.ca.as_deref());
        num(&mut line, "ca_version", e.ca_version.map(i64::from));
        text(&mut line, "result", Some(e.result));
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        num(&mut line, "count", e.count.map(big));
        num(&mut line, "gen", e.generation.map(big));
        num(&mut line, "manifest", e.manifest.map(big));
        text(&mut line, "segment", e.segment.as_deref());
        text(&mut line, "sha256", e.sha256.as_deref());
        text(&mut line, "error", e.error.as_deref());
        line.push_str(",\"prev\":\"");
        line.push_str(&self.prev);
        line.push('"');
        line
    }

    /// Appends a batch (synced later, by [`Writer::sync`]). On failure the
    /// log is cut back to its last whole batch (now or before the next
    /// try), so a retry appends whole lines to an intact chain.
    pub(super) fn commit(&mut self, buf: &[u8]) -> std::io::Result<()> {
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
    pub fn reserve(&mut self, incoming: u64) {
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

    /// Replaces `audit.head` and publishes the synced position. A failure
    /// is logged and counted but does not stop the vault: the records
    /// themselves are on disk and chained; only cutting off the records
    /// after the stale head would go unseen.
    pub fn write_head(&mut self) {
        // An empty live log ends where the closed segments do: the head
        // then names the last closed record, at the end of its segment.
        let anchor = if self.committed == 0 {
            self.index.base()
        } else {
            Anchor {
                seq: self.seq,
                mac: self.prev.clone(),
                offset: self.committed,
            }
        };
        let manifest = self.health.manifest.load(Ordering::Acquire);
        let bytes = head::encode(&self.key, &anchor, manifest);
        match fsutil::write_atomic(&self.head_path, &bytes, 0o600) {
            Ok(()) => {
                self.head_seq = self.seq;
                self.head_manifest = manifest;
                *self.health.synced.locked() = anchor;
            }
            Err(e) => {
                tracing::warn!(path = %self.head_path.display(), error = %e, "audit head not updated");
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
            }
        }
    }
}
