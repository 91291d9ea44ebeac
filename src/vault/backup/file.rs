//! The backup file, format 2 (JSON, so an operator can see what it is):
//!
//! ```json
//! {"format":2,"salt":"<base64>","created":1700000000,"count":2,
//!  "check":"<base64>","keys":["<base64 entry>","<base64 entry>"],"tag":"<base64>"}
//! ```
//!
//! Each entry is AES-256-GCM sealed with the header (salt, creation time,
//! count) and its own place as associated data; `check` is an HMAC of a
//! fixed label, so a wrong passphrase is told apart from a tampered file;
//! `tag` is an HMAC over the header, `check` and every sealed entry in
//! order. The tag alone refuses any change; the per-entry binding is what
//! lets the refusal say which entry moved or changed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{BackupError, Wrapping};
use crate::vault::keys;

/// The format this vault writes and reads.
pub const FORMAT: u32 = 2;

const LABEL: &[u8] = b"vaultgate backup v2\0";
const CHECK_LABEL: &[u8] = b"vaultgate backup v2 passphrase check";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV2 {
    format: u32,
    salt: String,
    created: u64,
    count: u32,
    check: String,
    keys: Vec<String>,
    tag: String,
}

/// Only the format, read first: what a file of another format holds
/// is not parsed as this one's.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// A backup file decoded but not yet opened: everything before the
/// passphrase is stretched is cheap, so junk costs no argon2 run.
pub struct Parsed {
    pub salt: Vec<u8>,
    pub created: u64,
    count: u32,
    check: Vec<u8>,
    entries: Vec<Vec<u8>>,
    tag: Vec<u8>,
}

impl Parsed {
    /// How many keys the header says the backup holds.
    pub fn count(&self) -> u32 {
        self.count
    }
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, BackupError> {
    let not = |e: serde_json::Error| BackupError::NotABackup(e.to_string());
    let FormatOnly { format } = serde_json::from_slice(bytes).map_err(not)?;
    match format {
        FORMAT => {}
        1 => return Err(BackupError::FormatOne),
        other => return Err(BackupError::Format(other)),
    }
    let f: FileV2 = serde_json::from_slice(bytes).map_err(not)?;
    let b64 = |what: &str, s: &str| {
        B64.decode(s)
            .map_err(|_| BackupError::Base64(what.to_owned()))
    };
    let salt = b64("salt", &f.salt)?;
    if !(16..=64).contains(&salt.len()) {
        return Err(BackupError::Salt(salt.len()));
    }
    let entries = f
        .keys
        .iter()
        .enumerate()
        .map(|(i, e)| b64(&format!("entry {i}"), e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed {
        salt,
        created: f.created,
        count: f.count,
        check: b64("check", &f.check)?,
        entries,
        tag: b64("tag", &f.tag)?,
    })
}

/// What every entry's associated data and the tag begin with.
fn header(salt: &[u8], created: u64, count: u32) -> Vec<u8> {
    let mut h = LABEL.to_vec();
    // A salt is at most 64 bytes (checked before anything is sealed or opened).
    h.push(salt.len() as u8);
    h.extend_from_slice(salt);
    h.extend_from_slice(&created.to_be_bytes());
    h.extend_from_slice(&count.to_be_bytes());
    h
}

fn entry_aad(header: &[u8], at: usize) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(b"\0entry");
    aad.extend_from_slice(&(at as u64).to_be_bytes());
    aad
}

fn tag_input(header: &[u8], check: &[u8], entries: &[Vec<u8>]) -> Vec<u8> {
    let mut input = header.to_vec();
    input.extend_from_slice(check);
    for e in entries {
        input.extend_from_slice(&(e.len() as u64).to_be_bytes());
        input.extend_from_slice(e);
    }
    input
}

/// The file holding `plains` (each one key's entry JSON), in order.
pub fn seal(
    wrap: &Wrapping,
    salt: &[u8],
    created: u64,
    plains: &[Zeroizing<Vec<u8>>],
) -> Result<Vec<u8>, BackupError> {
    if !(16..=64).contains(&salt.len()) {
        return Err(BackupError::Salt(salt.len()));
    }
    let count = u32::try_from(plains.len()).map_err(|_| BackupError::TooLarge {
        bytes: usize::MAX,
        max: crate::protocol::MAX_BODY,
    })?;
    let head = header(salt, created, count);
    let entries = plains
        .iter()
        .enumerate()
        .map(|(at, p)| keys::seal_with(&wrap.seal, &entry_aad(&head, at), p))
        .collect::<Result<Vec<_>, _>>()?;
    let check = ring::hmac::sign(&wrap.mac, CHECK_LABEL);
    let tag = ring::hmac::sign(&wrap.mac, &tag_input(&head, check.as_ref(), &entries));
    let file = FileV2 {
        format: FORMAT,
        salt: B64.encode(salt),
        created,
        count,
        check: B64.encode(check.as_ref()),
        keys: entries.iter().map(|e| B64.encode(e)).collect(),
        tag: B64.encode(tag.as_ref()),
    };
    let mut out =
        serde_json::to_vec_pretty(&file).map_err(|e| BackupError::NotABackup(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Authenticates the whole file and opens every entry, or says what was
/// changed: the passphrase, the count, an entry moved or edited, the header.
pub fn open(p: &Parsed, wrap: &Wrapping) -> Result<Vec<Zeroizing<Vec<u8>>>, BackupError> {
    ring::hmac::verify(&wrap.mac, CHECK_LABEL, &p.check).map_err(|_| BackupError::Passphrase)?;
    if p.count as usize != p.entries.len() {
        return Err(BackupError::Count {
            header: p.count,
            entries: p.entries.len(),
        });
    }
    let head = header(&p.salt, p.created, p.count);
    let open_at = |e: &[u8], at: usize| keys::open_with(&wrap.seal, &entry_aad(&head, at), e).ok();
    let tag_ok =
        ring::hmac::verify(&wrap.mac, &tag_input(&head, &p.check, &p.entries), &p.tag).is_ok();
    let mut plains = Vec::with_capacity(p.entries.len());
    let mut any_opened = false;
    let mut first_fault = None;
    for (at, e) in p.entries.iter().enumerate() {
        if let Some(plain) = open_at(e, at) {
            any_opened = true;
            plains.push(plain);
            continue;
        }
        if first_fault.is_some() {
            continue;
        }
        first_fault = Some(
            match (0..p.entries.len()).find(|&j| j != at && open_at(e, j).is_some()) {
                Some(belongs) => BackupError::Moved { at, belongs },
                None => BackupError::Altered(at),
            },
        );
    }
    match first_fault {
        // Every entry failing, and at every place, is what an edited
        // header does; with one entry it cannot be told from that entry
        // edited, and is called that.
        Some(BackupError::Altered(_)) if !any_opened && p.entries.len() > 1 => {
            Err(BackupError::Header)
        }
        Some(fault) => Err(fault),
        None if !tag_ok => Err(BackupError::Tag),
        None => Ok(plains),
    }
}
