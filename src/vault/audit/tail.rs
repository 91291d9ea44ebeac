//! The check made when the log is opened: does it end where `audit.head`
//! says it ended? A log cut while the vault was stopped, a head that is
//! missing or forged, and a partial last line that no crash explains are
//! not repaired quietly: each becomes an *alarm*, a record of its own in
//! the chain (which `verify` then reports, and fails on), an error in the
//! log and a count in `vaultgate_vault_integrity_alarms_total`.
//!
//! The one thing repaired quietly is a real torn write: a partial last
//! line beyond what the head claims, shaped as the start of the next
//! record. Only a crash in the middle of an append leaves that; and so is
//! a rotation a crash cut short (see [`super::rotate`]), finished here.
//!
//! With closed segments, the live log must chain on to the last one the
//! index lists; every listed segment must be there, at its length (its
//! digest is `verify`'s to check: reading every segment at each start
//! would make a start cost as much as the log is long); and no segment
//! the index does not list may be there, except ones retention had taken
//! out of it and not yet deleted.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::head::{self, Anchor, Head};
use super::index::{self, Index, INDEX_FILE};
use super::{segment, split, AuditError, GENESIS};

/// Something found at start that the vault did not do: recorded, logged,
/// counted; the vault serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// For the metric's `kind` label.
    pub kind: &'static str,
    pub message: String,
}

/// The log's end as found on disk.
#[derive(Debug)]
struct Tail {
    /// The last complete record, and where it ends.
    last: Anchor,
    /// Bytes after the last newline.
    fragment: Vec<u8>,
}

/// What opening found: where the chain goes on, and what to record.
#[derive(Debug)]
pub struct Opened {
    pub anchor: Anchor,
    pub alarms: Vec<Alarm>,
    /// Bytes of a torn last line that were cut off.
    pub repaired: u64,
    /// The manifest generation the head recorded, if it is authentic.
    pub head_manifest: Option<u64>,
    /// The head was of the unauthenticated format and is trusted once.
    pub legacy_head: bool,
    /// The closed segments the live log chains on from.
    pub index: Index,
}

/// The closed segments as found at start.
#[derive(Debug)]
pub struct Layout {
    /// `None`: missing where segments exist, or forged (an alarm says so).
    index: Option<Index>,
    alarms: Vec<Alarm>,
}

fn dir_io(dir: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: dir.to_owned(),
        source,
    }
}

/// Reads the index, finishes a rotation or a retention a crash cut short,
/// and checks the closed segments against it (cheaply: presence and
/// length). Runs before the live log is opened.
pub fn segments(state_dir: &Path, log: &Path, key: &ring::hmac::Key) -> Result<Layout, AuditError> {
    let index_path = state_dir.join(INDEX_FILE);
    let found = segment::list(state_dir).map_err(dir_io(state_dir))?;
    let mut alarms = Vec::new();
    let index = match index::read(&index_path, key).map_err(dir_io(&index_path))? {
        index::Read::Missing if found.is_empty() => Index::default(),
        index::Read::Missing => {
            alarms.push(Alarm {
                kind: "audit-index-missing",
                message: format!(
                    "audit.index is missing but closed segment {} is here: which segments make \
                     up the chain cannot be told",
                    found[0].name
                ),
            });
            return Ok(Layout {
                index: None,
                alarms,
            });
        }
        index::Read::Forged(why) => {
            alarms.push(Alarm {
                kind: "audit-index-forged",
                message: format!("{why}; whether closed segments were removed cannot be told"),
            });
            return Ok(Layout {
                index: None,
                alarms,
            });
        }
        index::Read::Authentic(index) => index,
    };
    if let Some(last) = index.segments.last() {
        finish_rotation(state_dir, log, last)?;
    }
    for f in segment::list(state_dir).map_err(dir_io(state_dir))? {
        if index.segments.iter().any(|s| s.name == f.name) {
            continue;
        }
        let path = state_dir.join(&f.name);
        if f.last < index.start {
            // Retention took it out of the index and a crash came before
            // the file went.
            tracing::info!(path = %path.display(), "removing an audit segment retention had retired");
            crate::fsutil::remove_durable(&path).map_err(dir_io(&path))?;
        } else {
            alarms.push(Alarm {
                kind: "audit-segment-unknown",
                message: format!(
                    "{} is not in audit.index: a segment of another chain, or an older index \
                     was put back",
                    f.name
                ),
            });
        }
    }
    for s in &index.segments {
        let path = state_dir.join(&s.name);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == s.bytes => {}
            Ok(m) => alarms.push(Alarm {
                kind: "audit-segment-altered",
                message: format!(
                    "closed segment {} holds {} bytes where audit.index lists {}",
                    s.name,
                    m.len(),
                    s.bytes
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => alarms.push(Alarm {
                kind: "audit-segment-missing",
                message: format!(
                    "closed segment {} (records {}..={}) is missing",
                    s.name, s.first, s.last
                ),
            }),
            Err(e) => return Err(dir_io(&path)(e)),
        }
    }
    Ok(Layout {
        index: Some(index),
        alarms,
    })
}

/// Finishes a rotation a crash interrupted after the index named
/// `last`: the live log is still that segment, under its own name
/// already (a link to the same file) or not yet.
fn finish_rotation(state_dir: &Path, log: &Path, last: &index::Segment) -> Result<(), AuditError> {
    use std::os::unix::fs::MetadataExt;
    let closed = state_dir.join(&last.name);
    let (Ok(live), closed_meta) = (std::fs::metadata(log), std::fs::metadata(&closed)) else {
        return Ok(());
    };
    let same = match closed_meta {
        Ok(c) => c.dev() == live.dev() && c.ino() == live.ino(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let is_it = live.len() == last.bytes
                && segment::first_line(log)
                    .map_err(dir_io(log))?
                    .and_then(|l| split(&l).map(|(seq, _, _)| seq))
                    == Some(last.first)
                && holds(log, &last.end()).map_err(dir_io(log))?;
            if is_it {
                std::fs::rename(log, &closed).map_err(dir_io(&closed))?;
                crate::fsutil::sync_dir(state_dir).map_err(dir_io(state_dir))?;
                tracing::info!(segment = %last.name, "finished an audit rotation a crash interrupted");
            }
            return Ok(());
        }
        Err(e) => return Err(dir_io(&closed)(e)),
    };
    if same {
        crate::fsutil::remove_durable(log).map_err(dir_io(log))?;
        tracing::info!(segment = %last.name, "finished an audit rotation a crash interrupted");
    }
    Ok(())
}

/// The closed segment in `state_dir` that holds record `seq`, if any.
pub fn holder(state_dir: &Path, seq: u64) -> Option<std::path::PathBuf> {
    segment::list(state_dir)
        .ok()?
        .into_iter()
        .find(|f| f.first <= seq && seq <= f.last)
        .map(|f| state_dir.join(f.name))
}

/// Reads the last complete line (for the chain state) and what follows
/// it; a log with no complete line ends at `base`.
fn read_tail(file: &mut File, base: &Anchor) -> std::io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window = len.min(64 * 1024);
    loop {
        file.seek(SeekFrom::Start(len - window))?;
        let mut buf = Vec::with_capacity(window as usize);
        file.by_ref().take(window).read_to_end(&mut buf)?;
        let end = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
        // The last complete line starts after the newline before `end`.
        let start = end.and_then(|e| buf[..e - 1].iter().rposition(|b| *b == b'\n'));
        let whole_file = window == len;
        if start.is_none() && !whole_file {
            // A line longer than the window: look further back.
            window = (window * 4).min(len);
            continue;
        }
        let Some(end) = end else {
            return Ok(Tail {
                last: Anchor {
                    offset: 0,
                    ..base.clone()
                },
                fragment: buf,
            });
        };
        let line = &buf[start.map_or(0, |s| s + 1)..end - 1];
        let text = String::from_utf8_lossy(line);
        let (seq, _, mac) = split(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the last audit record does not parse",
            )
        })?;
        return Ok(Tail {
            last: Anchor {
                seq,
                mac: mac.to_owned(),
                offset: len - window + end as u64,
            },
            fragment: buf[end..].to_vec(),
        });
    }
}

/// Whether `fragment` can be what a crash leaves of record `seq`: a
/// prefix of its first bytes, `{"seq":N,`.
fn looks_torn(fragment: &[u8], seq: u64) -> bool {
    let start = format!("{{\"seq\":{seq},");
    let n = fragment.len().min(start.len());
    fragment[..n] == start.as_bytes()[..n]
}

/// Whether any line of the log was written by a vault that authenticates
/// its head (such lines leave out empty fields; older ones never did).
fn has_current_records(path: &Path) -> std::io::Result<bool> {
    let file = File::open(path)?;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if !line.is_empty() && !line.windows(9).any(|w| w == b",\"error\":") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks the log in `file` (at `path`) against the head in `state_dir`,
/// cuts a torn last line, moves an unexplained fragment aside, and says
/// where the chain continues and what to record.
pub fn open(
    state_dir: &Path,
    path: &Path,
    file: &mut File,
    key: &ring::hmac::Key,
    layout: Layout,
) -> Result<Opened, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let head_path = state_dir.join(super::HEAD_FILE);
    let head = head::read(&head_path, key).map_err(|source| AuditError::Io {
        path: head_path.clone(),
        source,
    })?;
    let first = segment::first_line(path)
        .map_err(io)?
        .and_then(|l| first_link(&l));
    let Layout { index, mut alarms } = layout;
    let index = match index {
        Some(index) => {
            alarms.extend(check_first(&index, first.as_ref()));
            index
        }
        // No index to trust: the chain goes on from the live log's first
        // record (or, in an empty log, from the head), alarmed already.
        None => {
            let (start, start_prev) = match (&first, head.seq(), head.mac()) {
                (Some((seq, prev)), _, _) => (*seq, prev.clone()),
                (None, Some(seq), Some(mac)) => (seq + 1, mac.to_owned()),
                _ => (1, GENESIS.to_owned()),
            };
            Index {
                start: start.max(1),
                start_prev,
                segments: Vec::new(),
            }
        }
    };
    let tail = read_tail(file, &index.base()).map_err(io)?;
    let mut repaired = 0;
    let claimed = head.seq().unwrap_or(0);
    if !tail.fragment.is_empty() {
        let n = tail.fragment.len() as u64;
        if claimed <= tail.last.seq && looks_torn(&tail.fragment, tail.last.seq + 1) {
            repaired = n;
        } else {
            let aside = keep_aside(state_dir, &tail.fragment).map_err(|source| AuditError::Io {
                path: state_dir.to_owned(),
                source,
            })?;
            alarms.push(Alarm {
                kind: "audit-fragment",
                message: format!(
                    "the log ended in {n} bytes of an incomplete line after record {} that no \
                     crash explains (audit.head records {claimed}); they were moved to {}",
                    tail.last.seq,
                    aside.display()
                ),
            });
        }
        file.set_len(tail.last.offset).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    let last = &tail.last;
    match &head {
        Head::Missing if last.seq > 0 => alarms.push(Alarm {
            kind: "audit-head-missing",
            message: format!(
                "audit.head is missing: nothing shows whether the log's {} records are all \
                 it held (records after them may have been cut)",
                last.seq
            ),
        }),
        Head::Missing => {}
        Head::Forged(why) => alarms.push(Alarm {
            kind: "audit-head-forged",
            message: format!("{why}; whether the log was cut cannot be told"),
        }),
        Head::Legacy { .. } | Head::Authentic { .. } => {
            if let Some(alarm) = compare(&head, last) {
                alarms.push(alarm);
            }
        }
    }
    let legacy_head = matches!(head, Head::Legacy { .. });
    if legacy_head && has_current_records(path).map_err(io)? {
        alarms.push(Alarm {
            kind: "audit-head-forged",
            message: "audit.head is of the old unauthenticated format, but this vault's own \
                      records are in the log: the head was replaced"
                .into(),
        });
    }
    let head_manifest = match &head {
        Head::Authentic { manifest, .. } => Some(*manifest),
        _ => None,
    };
    Ok(Opened {
        anchor: tail.last,
        alarms,
        repaired,
        head_manifest,
        legacy_head: legacy_head && repaired == 0,
        index,
    })
}

/// A record's sequence number and the MAC it chains to.
fn first_link(line: &str) -> Option<(u64, String)> {
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
        prev: String,
    }
    let (_, body, _) = split(line)?;
    let link: Link = serde_json::from_str(&format!("{body}}}")).ok()?;
    Some((link.seq, link.prev))
}

/// An alarm if the live log does not begin where the closed segments (or
/// the retained start) end.
fn check_first(index: &Index, first: Option<&(u64, String)>) -> Option<Alarm> {
    let (seq, prev) = first?;
    let base = index.base();
    let after = match index.segments.last() {
        Some(s) => format!("closed segment {}", s.name),
        None if base.seq == 0 => "the start of the chain".to_owned(),
        None => format!("record {} (where retention left the chain)", base.seq),
    };
    if *seq > base.seq + 1 {
        return Some(Alarm {
            kind: "audit-cut",
            message: format!(
                "the log begins at record {seq} but {after} ends at record {}: records {}..={} \
                 are missing",
                base.seq,
                base.seq + 1,
                seq - 1
            ),
        });
    }
    (*seq != base.seq + 1 || *prev != base.mac).then(|| Alarm {
        kind: "audit-replaced",
        message: format!(
            "the log's first record ({seq}) does not chain on to {after}: the log was replaced"
        ),
    })
}

/// An alarm if the log's last record is not where the head says the log
/// ended (a log ahead of its head is a crash between an append and the
/// head's update: fine).
fn compare(head: &Head, last: &Anchor) -> Option<Alarm> {
    let (seq, mac) = (head.seq()?, head.mac()?);
    if seq > last.seq {
        return Some(Alarm {
            kind: "audit-cut",
            message: format!(
                "the log ends at record {} but audit.head records {seq}: records {}..={seq} \
                 are missing (cut while the vault was stopped)",
                last.seq,
                last.seq + 1
            ),
        });
    }
    if seq == last.seq && mac != last.mac {
        return Some(Alarm {
            kind: "audit-replaced",
            message: format!(
                "the log's record {seq} is not the one audit.head records: the log was replaced"
            ),
        });
    }
    None
}

/// Writes an unexplained fragment to its own file beside the log, for
/// whoever looks into it.
fn keep_aside(state_dir: &Path, fragment: &[u8]) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = state_dir.join(format!("audit.fragment-{secs}"));
    crate::fsutil::write_atomic(&path, fragment, 0o600)?;
    Ok(path)
}

/// Whether the log holds record `anchor.seq` with `anchor.mac`, ending at
/// `anchor.offset` (the keystore manifest's anchor: a log rolled back to
/// before it, or replaced, does not).
pub fn holds(path: &Path, anchor: &Anchor) -> std::io::Result<bool> {
    if anchor.seq == 0 {
        return Ok(true);
    }
    let mut file = File::open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    if anchor.offset > len || anchor.offset == 0 {
        return Ok(false);
    }
    // A record is short; its line starts within this much of its end.
    let window = anchor.offset.min(64 * 1024);
    file.seek(SeekFrom::Start(anchor.offset - window))?;
    let mut buf = vec![0u8; window as usize];
    file.read_exact(&mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Ok(false);
    }
    let body = &buf[..buf.len() - 1];
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&body[start..]);
    Ok(split(&text).is_some_and(|(seq, _, mac)| seq == anchor.seq && mac == anchor.mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_start_of_the_next_record_is_a_torn_write() {
        assert!(looks_torn(b"{\"seq\":4,\"ti", 4));
        assert!(looks_torn(b"{\"se", 4));
        assert!(!looks_torn(b"{\"seq\":3,\"ti", 4));
        assert!(!looks_torn(b"{\"seq\":40,", 4));
        assert!(!looks_torn(b"garbage", 4));
    }
}
