//! The ciphertext blob of `encrypt` and `generate-data-key`: it names the
//! key and version that sealed it, so `decrypt` needs only the blob (and
//! the context) and picks the right version after any number of rotations.
//!
//! ```text
//! "VGC1" | name_len:u8 | name | version:u32be | nonce[12] | ciphertext | tag[16]
//! ```
//! The header and the caller's encryption context are the associated data.

pub const MAGIC: &[u8; 4] = b"VGC1";

/// A parsed blob, borrowing from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Blob<'a> {
    pub key: &'a str,
    pub version: u32,
    /// The header bytes, bound in as associated data.
    pub header: &'a [u8],
    /// `nonce || ciphertext || tag`.
    pub sealed: &'a [u8],
}

pub fn header(key: &str, version: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(9 + key.len());
    h.extend_from_slice(MAGIC);
    h.push(key.len() as u8);
    h.extend_from_slice(key.as_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h
}

/// The associated data: header, then the caller's context.
pub fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 4 + context.len());
    a.extend_from_slice(header);
    a.extend_from_slice(&(context.len() as u32).to_be_bytes());
    a.extend_from_slice(context);
    a
}

/// Parses a blob; `None` if it is not one.
pub fn parse(blob: &[u8]) -> Option<Blob<'_>> {
    let rest = blob.strip_prefix(MAGIC)?;
    let (&n, rest) = rest.split_first()?;
    let n = n as usize;
    if rest.len() < n + 4 + 12 + 16 {
        return None;
    }
    let key = std::str::from_utf8(&rest[..n]).ok()?;
    let version = u32::from_be_bytes(rest[n..n + 4].try_into().ok()?);
    let header_len = 4 + 1 + n + 4;
    Some(Blob {
        key,
        version,
        header: &blob[..header_len],
        sealed: &blob[header_len..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_junk_is_refused() {
        let mut blob = header("data", 7);
        blob.extend_from_slice(&[0u8; 40]);
        let b = parse(&blob).unwrap();
        assert_eq!((b.key, b.version, b.sealed.len()), ("data", 7, 40));
        assert_eq!(parse(b"VGC1"), None);
        assert_eq!(parse(&blob[..20]), None);
        assert_eq!(parse(b"nope nope nope nope nope nope nope nope"), None);
    }
}
