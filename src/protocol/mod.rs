//! The vault wire protocol (docs/PROTOCOL.md): frames, typed fields,
//! requests and responses.
//!
//! Three layers, each pure and separately tested: [`frame`] (header and
//! body length), [`fields`] (tag-length-value fields in a body) and
//! [`message`] (what each opcode carries); beside them [`scheme`] (TLS
//! signature scheme names) and `wire_enum` (the macro that declares each
//! wire enum once). `golden.txt` pins every opcode's bytes.

pub mod fields;
pub mod frame;
pub mod message;
pub mod scheme;
mod wire_enum;

pub use frame::{Frame, HEADER_LEN, MAX_BODY, VERSION};
pub use message::{
    ErrorCode, KeyEvent, KeyType, Op, Request, Response, Secret, OP_ERROR, OP_EVENT,
};

/// Connections one uid may hold at once at the vault, so that no caller
/// (idle, slow or hostile) can take every slot and starve the others
/// (docs/PROTOCOL.md, "Limits"). Here, not in the vault, because callers'
/// configs are checked against it too.
pub const MAX_CONNECTIONS_PER_UID: usize = 256;

/// Why bytes from a peer are not a valid message. Every variant means the
/// peer is broken or hostile: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("reserved header flags set: {0:#06x}")]
    BadFlags(u16),
    #[error("frame body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    FrameTooLarge(usize),
    #[error("frame is truncated")]
    Truncated,
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    #[error("field runs past the end of the body")]
    TruncatedField,
    #[error("unknown field tag {0:#04x}")]
    UnknownTag(u8),
    #[error("field tag {0:#04x} appears twice")]
    DuplicateTag(u8),
    #[error("required field tag {0:#04x} is missing")]
    MissingField(u8),
    #[error("field tag {0:#04x} is not allowed for this opcode")]
    UnexpectedField(u8),
    #[error("field tag {0:#04x} has a malformed value")]
    BadField(u8),
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("response opcode {0:#04x} does not answer the request")]
    UnexpectedOpcode(u8),
}

/// Fuzz entry point: decode arbitrary bytes as frames and requests, and
/// check that whatever decodes re-encodes to the same bytes.
pub fn fuzz_decode(data: &[u8]) {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = frame::decode(&mut buf) {
        if let Ok(req) = Request::from_frame(&frame) {
            let again = req.to_frame(frame.request_id);
            let back = Request::from_frame(&again).expect("re-encoded request must decode");
            assert_eq!(req, back, "request round trip");
        }
        if let Ok(event) = KeyEvent::from_frame(&frame) {
            let back = KeyEvent::from_frame(&event.to_frame(frame.request_id))
                .expect("re-encoded event must decode");
            assert_eq!(event, back, "event round trip");
        }
        if let Some(op) = Op::from_value(frame.opcode & !message::RESPONSE_BIT) {
            if let Ok(resp) = Response::from_frame(op, &frame) {
                let again = resp.to_frame(op, frame.request_id);
                let back =
                    Response::from_frame(op, &again).expect("re-encoded response must decode");
                assert_eq!(resp, back, "response round trip");
            }
        }
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
