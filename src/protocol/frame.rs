//! Frame layer: the fixed 12-byte header and the length-delimited body.
//!
//! Pure functions; [`decode`] tells "need more bytes" (`Ok(None)`) from
//! "invalid" (`Err`), so a caller can read more or drop the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest body accepted. Bounds the memory one connection can make the
/// vault hold before it has proved anything.
pub const MAX_BODY: usize = 1 << 20;

/// One decoded frame: an opcode, the caller's request id and an opaque body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub request_id: u32,
    pub body: Bytes,
}

impl Frame {
    pub fn new(opcode: u8, request_id: u32, body: impl Into<Bytes>) -> Self {
        Frame {
            opcode,
            request_id,
            body: body.into(),
        }
    }

    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the wire form of this frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), ProtocolError> {
        if self.body.len() > MAX_BODY {
            return Err(ProtocolError::FrameTooLarge(self.body.len()));
        }
        out.reserve(self.wire_len());
        out.put_u8(VERSION);
        out.put_u8(self.opcode);
        out.put_u16(0);
        out.put_u32(self.request_id);
        out.put_u32(self.body.len() as u32);
        out.put_slice(&self.body);
        Ok(())
    }

    /// Parses exactly one frame; trailing bytes are an error.
    pub fn parse_exact(buf: &[u8]) -> Result<Frame, ProtocolError> {
        let mut b = BytesMut::from(buf);
        match decode(&mut b)? {
            Some(frame) if b.is_empty() => Ok(frame),
            Some(_) => Err(ProtocolError::TrailingBytes(b.len())),
            None => Err(ProtocolError::Truncated),
        }
    }
}

/// Validates the header at the front of `buf` and returns the body length,
/// or `Ok(None)` if fewer than [`HEADER_LEN`] bytes are there.
pub fn peek_header(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        // Reject a wrong version as soon as its byte is here: a client
        // speaking something else gets closed without waiting for 12 bytes.
        if let Some(&v) = buf.first() {
            if v != VERSION {
                return Err(ProtocolError::BadVersion(v));
            }
        }
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(ProtocolError::BadVersion(buf[0]));
    }
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    if flags != 0 {
        return Err(ProtocolError::BadFlags(flags));
    }
    let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len > MAX_BODY {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok(Some(len))
}

/// Takes one whole frame off the front of `buf`, if one is there.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = peek_header(buf)? else {
        return Ok(None);
    };
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    let mut head = buf.split_to(HEADER_LEN);
    head.advance(1);
    let opcode = head.get_u8();
    head.advance(2);
    let request_id = head.get_u32();
    let body = buf.split_to(len).freeze();
    Ok(Some(Frame {
        opcode,
        request_id,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = BytesMut::new();
        Frame::new(0x02, 7, Bytes::from_static(b"hello"))
            .encode(&mut out)
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn every_strict_prefix_is_incomplete_not_invalid() {
        let wire = sample();
        for n in 0..wire.len() {
            let mut b = BytesMut::from(&wire[..n]);
            assert_eq!(decode(&mut b).unwrap(), None, "prefix {n}");
        }
        let mut b = BytesMut::from(&wire[..]);
        let f = decode(&mut b).unwrap().unwrap();
        assert_eq!((f.opcode, f.request_id, &f.body[..]), (2, 7, &b"hello"[..]));
        assert!(b.is_empty());
    }

    #[test]
    fn rejects_bad_version_flags_size_and_trailing() {
        let mut wire = sample();
        wire[0] = 9;
        assert_eq!(Frame::parse_exact(&wire), Err(ProtocolError::BadVersion(9)));
        let mut wire = sample();
        wire[3] = 1;
        assert_eq!(Frame::parse_exact(&wire), Err(ProtocolError::BadFlags(1)));
        let mut wire = sample();
        wire[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        assert_eq!(
            Frame::parse_exact(&wire),
            Err(ProtocolError::FrameTooLarge(MAX_BODY + 1))
        );
        let mut wire = sample();
        wire.push(0);
        assert_eq!(
            Frame::parse_exact(&wire),
            Err(ProtocolError::TrailingBytes(1))
        );
    }
}
