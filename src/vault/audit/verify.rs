//! Checking the whole chain: every record's MAC, sequence and link to the
//! one before, across the closed segments in the index's order and on
//! into the live log; each segment's length and SHA-256 against the
//! index; the head against the end; and the alarms the chain holds.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::head::{self, Head};
use super::index::{self, Index, INDEX_FILE};
use super::{segment, split, AuditError, HEAD_FILE, LOG_FILE};

/// The fields of a record that checks and scans read (the MAC covers all).
#[derive(Debug, Deserialize)]
#[expect(dead_code, reason = "the keystore manifest's check reads these")]
pub struct Record {
    pub seq: u64,
    prev: String,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub result: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
    /// The key's generation after a keystore change.
    #[serde(default)]
    pub gen: Option<u64>,
    /// The keystore manifest's generation after a change.
    #[serde(default)]
    pub manifest: Option<u64>,
}

/// What a whole check found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    /// The first and last record checked (the first is 1 unless retention
    /// deleted older segments).
    pub first: u64,
    pub last: u64,
    /// The last record's MAC: with `last`, what to ship elsewhere, so a
    /// log replaced wholesale by an older one is found there.
    pub last_mac: String,
    /// Closed segments checked (the live log not counted).
    pub segments: usize,
    /// Records with result `alarm`: (sequence number, message).
    pub alarms: Vec<(u64, String)>,
    /// Records the vault could not write while the log was failing,
    /// counted by its `audit-dropped` records.
    pub dropped: u64,
    /// What the records stand for: a record with a `count` (folded uses,
    /// folded refusals) is that many operations or refusals, any other
    /// one. The log's own records (`audit-*`, whose `count` is about
    /// records or segments) are not counted.
    pub events: u64,
}

/// Where the chain has got to while checking.
struct Chain {
    /// The sequence number the next record must have.
    next: u64,
    /// The MAC the next record must chain to.
    prev: String,
    report: Report,
}

/// One file's bytes as read: its length and SHA-256.
struct Read {
    bytes: u64,
    sha256: String,
}

impl Chain {
    /// Checks every line of the file at `path` (missing: `Ok(None)`),
    /// calling `each` for those that verify.
    fn read(
        &mut self,
        path: &Path,
        name: &str,
        key: &ring::hmac::Key,
        each: &mut impl FnMut(&Record),
    ) -> Result<Option<Read>, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut reader = BufReader::new(file);
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut bytes = 0u64;
        let mut raw = Vec::new();
        loop {
            raw.clear();
            if reader.read_until(b'\n', &mut raw).map_err(io)? == 0 {
                break;
            }
            sha.update(&raw);
            bytes += raw.len() as u64;
            let at = self.next;
            let bad = |reason: &str| AuditError::Bad {
                file: name.to_owned(),
                line: at,
                reason: reason.to_owned(),
            };
            let line = std::str::from_utf8(raw.strip_suffix(b"\n").unwrap_or(&raw))
                .map_err(|_| bad("is not UTF-8"))?;
            let (seq, body, mac) = split(line).ok_or_else(|| bad("does not parse"))?;
            let record: Record =
                serde_json::from_str(&format!("{body}}}")).map_err(|_| bad("does not parse"))?;
            if seq != at {
                return Err(bad(&format!(
                    "sequence {seq} where {at} was expected (deleted or reordered)"
                )));
            }
            if record.prev != self.prev {
                return Err(bad(
                    "does not chain to the previous record (deleted or reordered)",
                ));
            }
            let tag = hex::decode(mac).map_err(|_| bad("MAC is not hex"))?;
            ring::hmac::verify(key, body.as_bytes(), &tag)
                .map_err(|_| bad("MAC mismatch (edited)"))?;
            if record.result == "alarm" {
                self.report
                    .alarms
                    .push((seq, record.error.clone().unwrap_or_default()));
            }
            if record.op == "audit-dropped" {
                self.report.dropped += record.count.unwrap_or(0);
            }
            if !record.op.starts_with("audit-") {
                self.report.events += record.count.unwrap_or(1);
            }
            each(&record);
            mac.clone_into(&mut self.prev);
            self.next = at + 1;
            self.report.records += 1;
        }
        Ok(Some(Read {
            bytes,
            sha256: hex::encode(sha.finish()),
        }))
    }
}

/// Checks the chain in `state_dir`, calling `each` for every record that
/// verified, in order: each closed segment the index lists, then the live
/// log. An edited, missing or reordered record, a missing, altered or
/// unlisted segment, or a log shorter than its head, is an error; alarms
/// are in the report.
pub fn check(
    state_dir: &Path,
    key: &ring::hmac::Key,
    mut each: impl FnMut(&Record),
) -> Result<Report, AuditError> {
    let index_path = state_dir.join(INDEX_FILE);
    let dir_io = |path: &Path| {
        let path = path.to_owned();
        move |source| AuditError::Io { path, source }
    };
    let found = segment::list(state_dir).map_err(dir_io(state_dir))?;
    let index = match index::read(&index_path, key).map_err(dir_io(&index_path))? {
        index::Read::Missing => match found.first() {
            None => Index::default(),
            Some(f) => {
                return Err(AuditError::IndexMissing {
                    file: f.name.clone(),
                })
            }
        },
        index::Read::Forged(why) => return Err(AuditError::IndexForged(why)),
        index::Read::Authentic(index) => index,
    };
    // Older than the start: retired by retention, not yet deleted.
    if let Some(f) = found
        .iter()
        .find(|f| f.last >= index.start && !index.segments.iter().any(|s| s.name == f.name))
    {
        return Err(AuditError::SegmentUnknown {
            file: f.name.clone(),
        });
    }
    let mut chain = Chain {
        next: index.start,
        prev: index.start_prev.clone(),
        report: Report {
            first: index.start,
            ..Report::default()
        },
    };
    for s in &index.segments {
        let read = chain
            .read(&state_dir.join(&s.name), &s.name, key, &mut each)?
            .ok_or_else(|| AuditError::SegmentMissing {
                file: s.name.clone(),
                first: s.first,
                last: s.last,
            })?;
        let altered = |reason: String| AuditError::SegmentAltered {
            file: s.name.clone(),
            reason,
        };
        if chain.next != s.last + 1 || chain.prev != s.mac {
            return Err(altered(format!(
                "it ends at record {} where the index lists {}",
                chain.next - 1,
                s.last
            )));
        }
        if read.bytes != s.bytes || read.sha256 != s.sha256 {
            return Err(altered(format!(
                "its {} bytes have SHA-256 {}, the index lists {} bytes with {}",
                read.bytes, read.sha256, s.bytes, s.sha256
            )));
        }
        chain.report.segments += 1;
    }
    // A missing live log: a crash between a rotation's steps, or a state
    // dir read before the vault first started; the head tells a cut.
    chain.read(&state_dir.join(LOG_FILE), LOG_FILE, key, &mut each)?;
    chain.report.last = chain.next - 1;
    chain.report.last_mac = chain.prev.clone();
    check_head(state_dir, key, chain.report.last, &chain.prev)?;
    Ok(chain.report)
}

/// [`check`] without a callback, run again if a rotation or retention
/// changed the segments while it read them (an online check races the
/// writer; an offline one does not).
pub fn check_settled(state_dir: &Path, key: &ring::hmac::Key) -> Result<Report, AuditError> {
    let index_path = state_dir.join(INDEX_FILE);
    let mut tries = 0;
    loop {
        let before = std::fs::read(&index_path).ok();
        let result = check(state_dir, key, |_| {});
        tries += 1;
        if result.is_ok() || tries == 3 || std::fs::read(&index_path).ok() == before {
            return result;
        }
    }
}

/// The head must be authentic (or of the old format) and not claim more
/// than the log holds; a log with records has one.
fn check_head(
    state_dir: &Path,
    key: &ring::hmac::Key,
    n: u64,
    last_mac: &str,
) -> Result<(), AuditError> {
    let head_path = state_dir.join(HEAD_FILE);
    let head = head::read(&head_path, key).map_err(|source| AuditError::Io {
        path: head_path.clone(),
        source,
    })?;
    match head {
        Head::Missing if n > 0 => Err(AuditError::HeadMissing { records: n }),
        Head::Missing => Ok(()),
        Head::Forged(why) => Err(AuditError::HeadForged(why)),
        // A crash between appending and replacing the head leaves the log
        // ahead of the head, which is fine; behind it means lines were cut.
        Head::Legacy { seq, .. }
        | Head::Authentic {
            anchor: head::Anchor { seq, .. },
            ..
        } if seq > n => Err(AuditError::Truncated {
            head: seq,
            found: n,
        }),
        Head::Authentic { anchor, .. } if anchor.seq == n && anchor.mac != last_mac => {
            Err(AuditError::Bad {
                file: HEAD_FILE.to_owned(),
                line: n,
                reason: "is not the record audit.head names (the log was replaced)".into(),
            })
        }
        Head::Legacy { .. } | Head::Authentic { .. } => Ok(()),
    }
}
