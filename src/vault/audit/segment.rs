//! Closed segments: the files a rotation leaves, `audit-<first>-<last>.log`
//! with both sequence numbers zero-padded to 20 digits, so that the names
//! sort in chain order and say which records each holds.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".log";
/// Digits of a `u64`: every sequence number pads to the same width.
const WIDTH: usize = 20;

/// The file name of the closed segment holding records `first..=last`.
pub fn name(first: u64, last: u64) -> String {
    format!("{PREFIX}{first:0WIDTH$}-{last:0WIDTH$}{SUFFIX}")
}

/// The records a closed segment's file name says it holds; `None` for
/// any other name (the live log, the head, the index, a fragment).
pub fn parse(name: &str) -> Option<(u64, u64)> {
    let range = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| {
        (s.len() == WIDTH && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (first, last) = (number(first)?, number(last)?);
    (first >= 1 && first <= last).then_some((first, last))
}

/// A closed segment found in the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub first: u64,
    pub last: u64,
}

/// The closed segments in `dir`, in chain order.
pub fn list(dir: &Path) -> std::io::Result<Vec<Found>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((first, last)) = parse(&name) {
            found.push(Found { name, first, last });
        }
    }
    found.sort_by_key(|f| (f.first, f.last));
    Ok(found)
}

/// The SHA-256 of the first `len` bytes of the file at `path` (hex), or
/// an error if it is shorter.
pub fn sha256(path: &Path, len: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?.take(len);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        read += n as u64;
    }
    if read != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} holds {read} bytes, not {len}", path.display()),
        ));
    }
    Ok(hex::encode(ctx.finish()))
}

/// The first complete line of the file at `path`, if it has one.
pub fn first_line(path: &Path) -> std::io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // A record is short; a first "line" longer than this is not one.
    let mut line = Vec::new();
    BufReader::new(file.take(1 << 20)).read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_parse_back() {
        let a = name(1, 999);
        let b = name(1000, 1_000_000);
        let c = name(1_000_001, u64::MAX);
        assert_eq!(a, "audit-00000000000000000001-00000000000000000999.log");
        assert!(a < b && b < c);
        assert_eq!(parse(&a), Some((1, 999)));
        assert_eq!(parse(&c), Some((1_000_001, u64::MAX)));
    }

    #[test]
    fn only_closed_segment_names_parse() {
        for other in [
            "audit.log",
            "audit.head",
            "audit.index",
            "audit.fragment-1700000000",
            "audit-1-9.log",
            "audit-00000000000000000009-00000000000000000001.log",
            "audit-00000000000000000000-00000000000000000001.log",
            "audit-0000000000000000000a-00000000000000000001.log",
            "audit-00000000000000000001-00000000000000000002.log.gz",
            "audit-99999999999999999999-99999999999999999999.log",
            "audit-+0000000000000000001-00000000000000000002.log",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn listing_finds_segments_in_order_and_hashes_exact_lengths() {
        let dir = tempfile::tempdir().unwrap();
        for (f, l) in [(11, 20), (1, 10), (21, 21)] {
            std::fs::write(dir.path().join(name(f, l)), b"x\n").unwrap();
        }
        std::fs::write(dir.path().join("audit.log"), b"").unwrap();
        let firsts: Vec<u64> = list(dir.path()).unwrap().iter().map(|f| f.first).collect();
        assert_eq!(firsts, [1, 11, 21]);
        let p = dir.path().join(name(1, 10));
        assert_eq!(
            sha256(&p, 2).unwrap(),
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"x\n"))
        );
        assert!(sha256(&p, 3).is_err());
        assert_eq!(first_line(&p).unwrap().as_deref(), Some("x"));
    }
}
