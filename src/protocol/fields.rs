//! Body layer: a frame body is a sequence of typed fields,
//! `tag:u8 length:u32be value[length]`, each tag at most once.

use bytes::{BufMut, BytesMut};

use super::wire_enum::wire_enum;
use super::ProtocolError;

wire_enum! {
    /// Field tags. Values and names are those of docs/PROTOCOL.md's field
    /// table; values run from 1 without gaps: a tag's value less one is its
    /// slot in [`Fields`].
    pub enum Tag: u8 {
        KeyName = 0x01 => "key name",
        KeyVersion = 0x02 => "key version",
        Scheme = 0x03 => "scheme",
        Payload = 0x04 => "payload",
        Signature = 0x05 => "signature",
        KeyType = 0x06 => "key type",
        Pem = 0x07 => "PEM",
        Context = 0x08 => "context",
        Length = 0x09 => "length",
        Passphrase = 0x0a => "passphrase",
        Salt = 0x0b => "salt",
        Json = 0x0c => "JSON",
        ErrorCode = 0x0d => "error code",
        Message = 0x0e => "message",
        Seconds = 0x0f => "seconds",
        Plaintext = 0x10 => "plaintext",
        Ciphertext = 0x11 => "ciphertext",
        Spki = 0x12 => "SPKI",
        Blob = 0x13 => "blob",
        Flag = 0x14 => "flag",
        Subject = 0x15 => "subject",
    }
}

impl Tag {
    fn slot(self) -> usize {
        self as usize - 1
    }
}

/// Writes fields into a body.
pub struct Writer {
    buf: BytesMut,
}

/// What a body starts with room for: a sign request (~150 bytes) or its
/// answer (~90) without regrowing, which took three reallocations per
/// answer from an empty buffer.
const INITIAL_CAPACITY: usize = 256;

impl Default for Writer {
    fn default() -> Self {
        Writer {
            buf: BytesMut::with_capacity(INITIAL_CAPACITY),
        }
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn bytes(&mut self, tag: Tag, value: &[u8]) -> &mut Self {
        self.buf.reserve(5 + value.len());
        self.buf.put_u8(tag as u8);
        self.buf.put_u32(value.len() as u32);
        self.buf.put_slice(value);
        self
    }

    pub fn str(&mut self, tag: Tag, value: &str) -> &mut Self {
        self.bytes(tag, value.as_bytes())
    }

    pub fn u16(&mut self, tag: Tag, value: u16) -> &mut Self {
        self.bytes(tag, &value.to_be_bytes())
    }

    pub fn u32(&mut self, tag: Tag, value: u32) -> &mut Self {
        self.bytes(tag, &value.to_be_bytes())
    }

    pub fn u64(&mut self, tag: Tag, value: u64) -> &mut Self {
        self.bytes(tag, &value.to_be_bytes())
    }

    pub fn opt_u32(&mut self, tag: Tag, value: Option<u32>) -> &mut Self {
        if let Some(v) = value {
            self.u32(tag, v);
        }
        self
    }

    pub fn opt_u64(&mut self, tag: Tag, value: Option<u64>) -> &mut Self {
        if let Some(v) = value {
            self.u64(tag, v);
        }
        self
    }

    pub fn finish(self) -> BytesMut {
        self.buf
    }
}

/// The fields of one body, indexed by tag. Borrowed from the body.
pub struct Fields<'a> {
    slots: [Option<&'a [u8]>; Tag::ALL.len()],
}

impl<'a> Fields<'a> {
    /// Splits a body into fields. Unknown tags, repeated tags and fields
    /// running past the end are invalid.
    pub fn parse(mut body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut slots = [None; Tag::ALL.len()];
        while !body.is_empty() {
            if body.len() < 5 {
                return Err(ProtocolError::TruncatedField);
            }
            let tag = Tag::from_value(body[0]).ok_or(ProtocolError::UnknownTag(body[0]))?;
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            let rest = &body[5..];
            if rest.len() < len {
                return Err(ProtocolError::TruncatedField);
            }
            let slot = &mut slots[tag.slot()];
            if slot.is_some() {
                return Err(ProtocolError::DuplicateTag(tag as u8));
            }
            *slot = Some(&rest[..len]);
            body = &rest[len..];
        }
        Ok(Fields { slots })
    }

    pub fn opt_bytes(&self, tag: Tag) -> Option<&'a [u8]> {
        self.slots[tag.slot()]
    }

    pub fn bytes(&self, tag: Tag) -> Result<&'a [u8], ProtocolError> {
        self.opt_bytes(tag)
            .ok_or(ProtocolError::MissingField(tag as u8))
    }

    pub fn str(&self, tag: Tag) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.bytes(tag)?).map_err(|_| ProtocolError::BadField(tag as u8))
    }

    pub fn opt_str(&self, tag: Tag) -> Result<Option<&'a str>, ProtocolError> {
        match self.opt_bytes(tag) {
            None => Ok(None),
            Some(_) => self.str(tag).map(Some),
        }
    }

    fn fixed<const N: usize>(&self, tag: Tag) -> Result<Option<[u8; N]>, ProtocolError> {
        match self.opt_bytes(tag) {
            None => Ok(None),
            Some(v) => v
                .try_into()
                .map(Some)
                .map_err(|_| ProtocolError::BadField(tag as u8)),
        }
    }

    pub fn opt_u16(&self, tag: Tag) -> Result<Option<u16>, ProtocolError> {
        Ok(self.fixed::<2>(tag)?.map(u16::from_be_bytes))
    }

    pub fn u16(&self, tag: Tag) -> Result<u16, ProtocolError> {
        self.opt_u16(tag)?
            .ok_or(ProtocolError::MissingField(tag as u8))
    }

    pub fn opt_u32(&self, tag: Tag) -> Result<Option<u32>, ProtocolError> {
        Ok(self.fixed::<4>(tag)?.map(u32::from_be_bytes))
    }

    pub fn u32(&self, tag: Tag) -> Result<u32, ProtocolError> {
        self.opt_u32(tag)?
            .ok_or(ProtocolError::MissingField(tag as u8))
    }

    pub fn opt_u64(&self, tag: Tag) -> Result<Option<u64>, ProtocolError> {
        Ok(self.fixed::<8>(tag)?.map(u64::from_be_bytes))
    }

    /// Fails if any field outside `allowed` is present: a message carries
    /// exactly the fields its opcode defines.
    pub fn only(&self, allowed: &[Tag]) -> Result<(), ProtocolError> {
        for &tag in Tag::ALL {
            if self.slots[tag.slot()].is_some() && !allowed.contains(&tag) {
                return Err(ProtocolError::UnexpectedField(tag as u8));
            }
        }
        Ok(())
    }
}
