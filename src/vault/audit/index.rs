//! `audit.index`: the authenticated list of closed segments, as
//! CloudTrail's digest files list its log files. For each segment: the
//! records it holds, the MAC its first record chains to and its last
//! record's MAC, its length and the SHA-256 of its bytes; and where the
//! retained chain starts (record 1, or the first record of the oldest
//! segment retention kept). HMAC'd under the audit key: someone who can
//! write the state dir but lacks the master key cannot remove a segment
//! from it, add one, or move the start, so a deleted middle segment is
//! told from retention's deletion of the oldest.
//!
//! Written crash-safely (temp file, fsync, rename) at each rotation and
//! each retention deletion, before the files change: a crash leaves an
//! index one step ahead of the files, which the next start completes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::head::Anchor;
use super::{segment, GENESIS};

pub const INDEX_FILE: &str = "audit.index";
const LABEL: &[u8] = b"vaultgate audit index v1\0";

/// One closed segment, as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub name: String,
    pub first: u64,
    pub last: u64,
    /// The MAC record `first` chains to (`prev`).
    pub prev: String,
    /// Record `last`'s MAC.
    pub mac: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Segment {
    /// Where the segment ends: its last record, at the end of its file.
    pub fn end(&self) -> Anchor {
        Anchor {
            seq: self.last,
            mac: self.mac.clone(),
            offset: self.bytes,
        }
    }
}

/// The closed segments, oldest first, and where the retained chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The first retained record's sequence number.
    pub start: u64,
    /// The MAC the first retained record chains to.
    pub start_prev: String,
    pub segments: Vec<Segment>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            start: 1,
            start_prev: GENESIS.to_owned(),
            segments: Vec::new(),
        }
    }
}

impl Index {
    /// Where the live log's chain goes on from: the end of the newest
    /// closed segment (offset: its length), or the retained start.
    pub fn base(&self) -> Anchor {
        match self.segments.last() {
            Some(s) => s.end(),
            None => Anchor {
                seq: self.start - 1,
                mac: self.start_prev.clone(),
                offset: 0,
            },
        }
    }

    /// Whether the listed segments join up: each named for its records,
    /// the first at the start, each chaining on to the one before.
    fn consistent(&self) -> Result<(), String> {
        let (mut next, mut prev) = (self.start, self.start_prev.as_str());
        if next == 0 {
            return Err("starts at record 0".into());
        }
        for s in &self.segments {
            if s.name != segment::name(s.first, s.last) {
                return Err(format!(
                    "lists {} as records {}..={}",
                    s.name, s.first, s.last
                ));
            }
            if s.first != next || s.prev != prev {
                return Err(format!(
                    "{} does not follow on from record {}",
                    s.name,
                    next - 1
                ));
            }
            next = s.last + 1;
            prev = &s.mac;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(flatten)]
    index: Index,
    hmac: String,
}

/// What `audit.index` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// No rotation has happened: the live log is the whole chain.
    Missing,
    Authentic(Index),
    /// Does not parse, fails its HMAC, or does not join up: edited.
    Forged(String),
}

/// What the HMAC covers: the label and the index as serde writes it
/// (so an index that was re-spaced but not changed still verifies).
fn tag_input(index: &Index) -> Vec<u8> {
    // Plain fields only: serialising cannot fail.
    [LABEL, &serde_json::to_vec(index).unwrap_or_default()].concat()
}

/// The bytes of an authenticated index.
pub fn encode(key: &ring::hmac::Key, index: &Index) -> Vec<u8> {
    let file = File {
        index: index.clone(),
        hmac: hex::encode(ring::hmac::sign(key, &tag_input(index))),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Reads and authenticates the index at `path`. An unreadable file
/// (other than a missing one) is an error.
pub fn read(path: &Path, key: &ring::hmac::Key) -> std::io::Result<Read> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(e),
    };
    let Ok(file) = serde_json::from_slice::<File>(&bytes) else {
        return Ok(Read::Forged(format!("{} does not parse", path.display())));
    };
    let ok = hex::decode(&file.hmac)
        .is_ok_and(|t| ring::hmac::verify(key, &tag_input(&file.index), &t).is_ok());
    if !ok {
        return Ok(Read::Forged(format!(
            "{} fails its integrity check (edited, or another vault's)",
            path.display()
        )));
    }
    if let Err(why) = file.index.consistent() {
        return Ok(Read::Forged(format!("{} {why}", path.display())));
    }
    Ok(Read::Authentic(file.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[b; 32])
    }

    fn seg(first: u64, last: u64, prev: &str, mac: &str) -> Segment {
        Segment {
            name: segment::name(first, last),
            first,
            last,
            prev: prev.into(),
            mac: mac.into(),
            bytes: 100,
            sha256: "ab".repeat(32),
        }
    }

    fn two() -> Index {
        Index {
            segments: vec![seg(1, 10, GENESIS, "m10"), seg(11, 25, "m10", "m25")],
            ..Index::default()
        }
    }

    #[test]
    fn an_index_round_trips_and_names_the_live_logs_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        assert_eq!(read(&path, &key(1)).unwrap(), Read::Missing);
        assert_eq!(Index::default().base(), Anchor::genesis());
        std::fs::write(&path, encode(&key(1), &two())).unwrap();
        let Read::Authentic(back) = read(&path, &key(1)).unwrap() else {
            panic!("not authentic")
        };
        assert_eq!(back, two());
        assert_eq!(
            back.base(),
            Anchor {
                seq: 25,
                mac: "m25".into(),
                offset: 100
            }
        );
        // Retention moved the start past every listed segment's end.
        let moved = Index {
            start: 26,
            start_prev: "m25".into(),
            segments: vec![],
        };
        assert_eq!(moved.base().seq, 25);
    }

    #[test]
    fn edits_other_keys_and_gaps_are_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let good = String::from_utf8(encode(&key(1), &two())).unwrap();
        for edited in [
            good.replacen("\"bytes\": 100", "\"bytes\": 99", 1),
            good.replacen("\"start\": 1", "\"start\": 11", 1),
            good.replace("m10", "m11"),
            "{\"start\":1}".to_owned(),
            "not json".to_owned(),
        ] {
            std::fs::write(&path, &edited).unwrap();
            assert!(
                matches!(read(&path, &key(1)).unwrap(), Read::Forged(_)),
                "{edited}"
            );
        }
        std::fs::write(&path, encode(&key(2), &two())).unwrap();
        assert!(matches!(read(&path, &key(1)).unwrap(), Read::Forged(_)));
        // Authentic but not joined up: a middle segment left out.
        let mut gap = two();
        gap.segments.remove(0);
        std::fs::write(&path, encode(&key(1), &gap)).unwrap();
        let Read::Forged(why) = read(&path, &key(1)).unwrap() else {
            panic!("a gap was taken")
        };
        assert!(why.contains("does not follow on from record 0"), "{why}");
    }
}
