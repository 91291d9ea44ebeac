//! Rotation: the live log closed as a segment and a new one begun, on
//! request or once the log reaches `audit_rotate_size`; then retention.
//!
//! Between two rounds of the writer, with everything written synced:
//! 1. the next live log is made as a temp file beside the current one;
//! 2. `audit.index` is replaced by one that lists the closed segment
//!    (records, first `prev`, last MAC, length, SHA-256);
//! 3. the closed segment's name is linked to the live log's file;
//! 4. the temp file is renamed over `audit.log`, and the directory synced.
//!
//! A crash leaves one of: the old state (and a temp file, cleared at
//! start); an index one segment ahead, whose segment is still `audit.log`
//! (or, after 3, also linked under its own name), which the next start
//! recognises and finishes ([`super::tail::segments`]); or the new state.
//! At no instant is there no `audit.log`. The first record of the new log
//! is `audit-segment-closed`, naming the segment and its digest, chained
//! to the closed segment's last record, so the chain itself attests each
//! closed segment too.
//!
//! Retention (`audit_keep_segments`) then deletes the oldest segments past
//! the count: their `audit-segment-deleted` records are synced first, the
//! index then moves its start to the oldest kept segment, then the files
//! go. A crash in between leaves files the index no longer lists, older
//! than its start, which the next start removes.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::index::{self, Index, Segment, INDEX_FILE};
use super::writer::{Round, Writer};
use super::{segment, AuditError, Clock, Event, LOG_FILE};
use crate::fsutil;
use crate::sync::Locked;

/// What a rotation request is answered on.
pub type Reply = mpsc::Sender<Result<Closed, Arc<AuditError>>>;

/// A rotation that failed by size is not tried again sooner than this.
const SIZE_RETRY: Duration = Duration::from_secs(60);

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The closed segment's file name.
    pub segment: String,
    pub first: u64,
    pub last: u64,
    /// Segments retention deleted after it.
    pub deleted: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Writer {
    /// Rotates if asked to or if the log has reached its size, and
    /// answers whoever asked. Only between rounds with nothing left
    /// unwritten. Whether records were added to the round's buffer.
    pub(super) fn rotate_if_due(&mut self, r: &mut Round) -> bool {
        let size = self.health.rotate_size.load(Ordering::Acquire);
        let by_size =
            size > 0 && self.committed >= size && r.size_retry.is_none_or(|t| Instant::now() >= t);
        if r.rotations.is_empty() && !by_size {
            return false;
        }
        let result = if !r.buf.is_empty() || self.health.failing() {
            Err(AuditError::Unwritable(self.health.error.locked().clone()))
        } else {
            self.rotate(&mut r.buf, &mut r.clock)
        };
        match &result {
            Ok(c) => {
                r.size_retry = None;
                tracing::info!(segment = %c.segment, deleted = ?c.deleted, "audit log rotated");
            }
            Err(e) => {
                if by_size {
                    r.size_retry = Some(Instant::now() + SIZE_RETRY);
                }
                tracing::error!(error = %e, "audit log rotation failed; the live log goes on");
                metrics::counter!("vaultgate_vault_audit_write_errors_total").increment(1);
            }
        }
        let result = result.map_err(Arc::new);
        for reply in r.rotations.drain(..) {
            let _ = reply.send(result.clone());
        }
        !r.buf.is_empty()
    }

    /// Closes the live log as a segment (steps in the module doc), then
    /// applies retention.
    fn rotate(&mut self, buf: &mut Vec<u8>, clock: &mut Clock) -> Result<Closed, AuditError> {
        let base = self.index.base();
        if self.seq <= base.seq + self.own_records {
            return Err(AuditError::NothingToRotate { seq: self.seq });
        }
        // What the segment holds is durable, and the head says so, before
        // the index names it.
        self.file.sync_data().map_err(io(&self.path))?;
        self.unsynced = false;
        self.write_head();
        let closed = Segment {
            name: segment::name(base.seq + 1, self.seq),
            first: base.seq + 1,
            last: self.seq,
            prev: base.mac,
            mac: self.prev.clone(),
            bytes: self.committed,
            sha256: segment::sha256(&self.path, self.committed).map_err(io(&self.path))?,
        };
        let closed_path = self.dir.join(&closed.name);
        let index_path = self.dir.join(INDEX_FILE);
        // Named as fsutil's temp files, so a crash's leftover is cleared.
        let next_path = self
            .dir
            .join(format!(".{LOG_FILE}.tmp-{}", std::process::id()));
        // One left by a rotation that failed is removed (it is empty).
        let _ = std::fs::remove_file(&next_path);
        let next = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&next_path)
            .map_err(io(&next_path))?;
        let mut index = self.index.clone();
        index.segments.push(closed.clone());
        let undo = |this: &Self, linked: bool| {
            if linked {
                let _ = std::fs::remove_file(&closed_path);
            }
            let _ = std::fs::remove_file(&next_path);
            if let Err(e) =
                fsutil::write_atomic(&index_path, &index::encode(&this.key, &this.index), 0o600)
            {
                tracing::error!(path = %index_path.display(), error = %e, "could not put the audit index back after a failed rotation");
            }
        };
        if let Err(e) = fsutil::write_atomic(&index_path, &index::encode(&self.key, &index), 0o600)
        {
            let _ = std::fs::remove_file(&next_path);
            return Err(io(&index_path)(e));
        }
        if let Err(e) = std::fs::hard_link(&self.path, &closed_path) {
            undo(self, false);
            return Err(io(&closed_path)(e));
        }
        if let Err(e) = std::fs::rename(&next_path, &self.path) {
            undo(self, true);
            return Err(io(&self.path)(e));
        }
        if let Err(e) = fsutil::sync_dir(&self.dir) {
            // Done in memory; a crash before the directory reaches the
            // disk leaves a state the next start finishes.
            tracing::warn!(path = %self.dir.display(), error = %e, "state dir not synced after a rotation");
        }
        self.file = next;
        self.committed = 0;
        self.reserved_to = 0;
        self.dirty = false;
        self.index = index;
        self.write_head();
        self.reserve(0);
        let before = self.seq;
        metrics::counter!("vaultgate_vault_audit_rotations_total").increment(1);
        self.append(
            buf,
            Event {
                segment: Some(closed.name.clone()),
                sha256: Some(closed.sha256.clone()),
                count: Some(closed.last - closed.first + 1),
                ..Event::system("audit-segment-closed", None)
            },
            clock,
        );
        let deleted = self.retain(buf, clock);
        self.own_records = self.seq - before;
        self.publish_size();
        Ok(Closed {
            segment: closed.name,
            first: closed.first,
            last: closed.last,
            deleted,
        })
    }

    /// Deletes the oldest closed segments past `keep_segments`, each
    /// deletion recorded (and synced) before the index and the files
    /// change. Failures are logged and recorded; the next rotation tries
    /// again.
    fn retain(&mut self, buf: &mut Vec<u8>, clock: &mut Clock) -> Vec<String> {
        let keep = self.health.keep_segments.load(Ordering::Acquire);
        let n = self.index.segments.len();
        if keep == 0 || n <= keep {
            return Vec::new();
        }
        let victims: Vec<Segment> = self.index.segments[..n - keep].to_vec();
        for v in &victims {
            self.append(
                buf,
                Event {
                    segment: Some(v.name.clone()),
                    sha256: Some(v.sha256.clone()),
                    count: Some(v.last - v.first + 1),
                    ..Event::system("audit-segment-deleted", None)
                },
                clock,
            );
        }
        if let Err(e) = self.commit(buf) {
            // Written by the next round, when the log can be; nothing is
            // deleted until they are.
            tracing::error!(error = %e, "audit retention postponed: its records cannot be written");
            return Vec::new();
        }
        buf.clear();
        self.sync();
        if self.unsynced {
            return Vec::new();
        }
        let kept = self.index.segments[n - keep..].to_vec();
        let next = Index {
            start: kept[0].first,
            start_prev: kept[0].prev.clone(),
            segments: kept,
        };
        let index_path = self.dir.join(INDEX_FILE);
        if let Err(e) = fsutil::write_atomic(&index_path, &index::encode(&self.key, &next), 0o600) {
            tracing::error!(path = %index_path.display(), error = %e, "audit retention failed");
            self.append(
                buf,
                Event::system(
                    "audit-segment-deleted",
                    Some(format!(
                        "{}: {e}; the segments were kept",
                        index_path.display()
                    )),
                ),
                clock,
            );
            return Vec::new();
        }
        self.index = next;
        let mut deleted = Vec::new();
        for v in victims {
            let path = self.dir.join(&v.name);
            match fsutil::remove_durable(&path) {
                Ok(()) => deleted.push(v.name),
                // Out of the index already: the next start removes it.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a retired audit segment")
                }
            }
        }
        deleted
    }

    /// Sets the segment and size gauges.
    pub(super) fn publish_size(&self) {
        let closed: u64 = self.index.segments.iter().map(|s| s.bytes).sum();
        metrics::gauge!("vaultgate_vault_audit_segments").set(self.index.segments.len() as f64);
        metrics::gauge!("vaultgate_vault_audit_bytes").set((closed + self.committed) as f64);
    }
}
