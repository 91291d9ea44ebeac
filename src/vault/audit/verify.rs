//! Checking the whole chain: every record's MAC, sequence and link to the
//! one before, the head against the end, and the alarms the chain holds.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::head::{self, Head};
use super::{split, AuditError, GENESIS, HEAD_FILE, LOG_FILE};

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
    /// Records with result `alarm`: (sequence number, message).
    pub alarms: Vec<(u64, String)>,
    /// Records the vault could not write while the log was failing,
    /// counted by its `audit-dropped` records.
    pub dropped: u64,
}

/// Checks the chain in `state_dir`, calling `each` for every record that
/// verified, in order. An edited, missing or reordered record, or a log
/// shorter than its head, is an error; alarms are in the report.
pub fn check(
    state_dir: &Path,
    key: &ring::hmac::Key,
    mut each: impl FnMut(&Record),
) -> Result<Report, AuditError> {
    let path = state_dir.join(LOG_FILE);
    let io = |source| AuditError::Io {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(io)?;
    let mut prev = GENESIS.to_owned();
    let mut report = Report::default();
    let mut n = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io)?;
        let at = n + 1;
        let bad = |reason: &str| AuditError::Bad {
            line: at,
            reason: reason.to_owned(),
        };
        let (seq, body, mac) = split(&line).ok_or_else(|| bad("does not parse"))?;
        let record: Record =
            serde_json::from_str(&format!("{body}}}")).map_err(|_| bad("does not parse"))?;
        if seq != at {
            return Err(bad(&format!(
                "sequence {seq} where {at} was expected (deleted or reordered)"
            )));
        }
        if record.prev != prev {
            return Err(bad(
                "does not chain to the previous record (deleted or reordered)",
            ));
        }
        let tag = hex::decode(mac).map_err(|_| bad("MAC is not hex"))?;
        ring::hmac::verify(key, body.as_bytes(), &tag).map_err(|_| bad("MAC mismatch (edited)"))?;
        if record.result == "alarm" {
            report
                .alarms
                .push((seq, record.error.clone().unwrap_or_default()));
        }
        if record.op == "audit-dropped" {
            report.dropped += record.count.unwrap_or(0);
        }
        each(&record);
        prev = mac.to_owned();
        n = at;
    }
    report.records = n;
    check_head(state_dir, key, n, &prev)?;
    Ok(report)
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
                line: n,
                reason: "is not the record audit.head names (the log was replaced)".into(),
            })
        }
        Head::Legacy { .. } | Head::Authentic { .. } => Ok(()),
    }
}
