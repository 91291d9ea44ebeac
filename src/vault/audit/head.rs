//! `audit.head`: where the log ended when it was last synced, so a log
//! cut while the vault was stopped is told from one that is whole.
//!
//! The head names the last synced record (sequence number and MAC), the
//! byte offset where that record ends, and the keystore manifest's
//! generation at the time, and carries its own HMAC under the audit key:
//! someone who can write the state dir but lacks the master key can put
//! back an older head, never write one that fits a log they cut.
//!
//! Heads written before the HMAC existed (`{"seq","mac"}` only) are read
//! as [`Head::Legacy`]: trusted once, on the first start after the
//! upgrade, and replaced at once by an authenticated one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::GENESIS;

const LABEL: &[u8] = b"vaultgate audit head v2";

/// A position in the log: the record numbered `seq`, whose MAC is `mac`,
/// ends at byte `offset`. Written into the head and into the keystore
/// manifest (which anchors the log it last saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub mac: String,
    pub offset: u64,
}

impl Anchor {
    /// The position of an empty log.
    pub fn genesis() -> Anchor {
        Anchor {
            seq: 0,
            mac: GENESIS.to_owned(),
            offset: 0,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    seq: u64,
    mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hmac: Option<String>,
}

/// What `audit.head` holds, as read at start or by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Missing,
    /// Written before heads were authenticated: sequence and MAC only.
    Legacy {
        seq: u64,
        mac: String,
    },
    Authentic {
        anchor: Anchor,
        /// The keystore manifest's generation when the head was written.
        manifest: u64,
    },
    /// Does not parse, or its HMAC does not verify: edited.
    Forged(String),
}

impl Head {
    /// The sequence number the head claims, if it is one to believe.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Head::Legacy { seq, .. } => Some(*seq),
            Head::Authentic { anchor, .. } => Some(anchor.seq),
            Head::Missing | Head::Forged(_) => None,
        }
    }

    pub fn mac(&self) -> Option<&str> {
        match self {
            Head::Legacy { mac, .. } => Some(mac),
            Head::Authentic { anchor, .. } => Some(&anchor.mac),
            Head::Missing | Head::Forged(_) => None,
        }
    }
}

fn tag_input(anchor: &Anchor, manifest: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(LABEL.len() + anchor.mac.len() + 48);
    input.extend_from_slice(LABEL);
    for part in [
        anchor.seq.to_string().as_bytes(),
        anchor.mac.as_bytes(),
        anchor.offset.to_string().as_bytes(),
        manifest.to_string().as_bytes(),
    ] {
        input.push(0);
        input.extend_from_slice(part);
    }
    input
}

fn tag(key: &ring::hmac::Key, anchor: &Anchor, manifest: u64) -> String {
    hex::encode(ring::hmac::sign(key, &tag_input(anchor, manifest)))
}

/// The bytes of an authenticated head.
pub fn encode(key: &ring::hmac::Key, anchor: &Anchor, manifest: u64) -> Vec<u8> {
    let file = File {
        seq: anchor.seq,
        mac: anchor.mac.clone(),
        offset: Some(anchor.offset),
        manifest: Some(manifest),
        hmac: Some(tag(key, anchor, manifest)),
    };
    // Plain fields only: serialising cannot fail.
    serde_json::to_vec(&file).unwrap_or_default()
}

/// Reads and authenticates the head at `path`. An unreadable file (other
/// than a missing one) is an error; one that does not parse or verify is
/// [`Head::Forged`].
pub fn read(path: &Path, key: &ring::hmac::Key) -> std::io::Result<Head> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Head::Missing),
        Err(e) => return Err(e),
    };
    let Ok(file) = serde_json::from_slice::<File>(&bytes) else {
        return Ok(Head::Forged(format!("{} does not parse", path.display())));
    };
    let Some(hmac) = &file.hmac else {
        return Ok(Head::Legacy {
            seq: file.seq,
            mac: file.mac,
        });
    };
    let (Some(offset), Some(manifest)) = (file.offset, file.manifest) else {
        return Ok(Head::Forged(format!(
            "{} lacks its offset or manifest generation",
            path.display()
        )));
    };
    let anchor = Anchor {
        seq: file.seq,
        mac: file.mac,
        offset,
    };
    let ok = hex::decode(hmac)
        .is_ok_and(|t| ring::hmac::verify(key, &tag_input(&anchor, manifest), &t).is_ok());
    if !ok {
        return Ok(Head::Forged(format!(
            "{} fails its integrity check (edited, or another vault's)",
            path.display()
        )));
    }
    Ok(Head::Authentic { anchor, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_edits_are_forgeries() {
        let dir = tempfile::tempdir().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1u8; 32]);
        let path = dir.path().join("audit.head");
        assert_eq!(read(&path, &key).unwrap(), Head::Missing);
        let anchor = Anchor {
            seq: 7,
            mac: "ab".repeat(32),
            offset: 900,
        };
        std::fs::write(&path, encode(&key, &anchor, 3)).unwrap();
        assert_eq!(
            read(&path, &key).unwrap(),
            Head::Authentic {
                anchor: anchor.clone(),
                manifest: 3
            }
        );
        let text = String::from_utf8(encode(&key, &anchor, 3)).unwrap();
        std::fs::write(&path, text.replace("\"seq\":7", "\"seq\":5")).unwrap();
        assert!(matches!(read(&path, &key).unwrap(), Head::Forged(_)));
        std::fs::write(&path, br#"{"seq":5,"mac":"00"}"#).unwrap();
        assert_eq!(
            read(&path, &key).unwrap(),
            Head::Legacy {
                seq: 5,
                mac: "00".into()
            }
        );
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[2u8; 32]);
        std::fs::write(&path, encode(&other, &anchor, 3)).unwrap();
        assert!(matches!(read(&path, &key).unwrap(), Head::Forged(_)));
    }
}
