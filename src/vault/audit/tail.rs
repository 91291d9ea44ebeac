//! The check made when the log is opened: does it end where `audit.head`
//! says it ended? A log cut while the vault was stopped, a head that is
//! missing or forged, and a partial last line that no crash explains are
//! not repaired quietly: each becomes an *alarm*, a record of its own in
//! the chain (which `verify` then reports, and fails on), an error in the
//! log and a count in `vaultgate_vault_integrity_alarms_total`.
//!
//! The one thing repaired quietly is a real torn write: a partial last
//! line beyond what the head claims, shaped as the start of the next
//! record. Only a crash in the middle of an append leaves that.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::head::{self, Anchor, Head};
use super::{split, AuditError};

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
}

/// Reads the last complete line (for the chain state) and what follows it.
fn read_tail(file: &mut File) -> std::io::Result<Tail> {
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
                last: Anchor::genesis(),
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
    let tail = read_tail(file).map_err(io)?;
    let mut alarms = Vec::new();
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
