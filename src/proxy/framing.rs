//! HTTP/1.1 message framing, shared by the server driver ([`super::h1`])
//! and the backend client ([`super::origin`]): how a body is delimited,
//! what `Connection` asks for, and taking a body's data out of the bytes
//! read from the connection, by `Content-Length` or by strict chunked
//! decoding (RFC 9112 §6, §7.1, §9.6). Pure: bytes in, data or "need more"
//! or an error out.

use bytes::{Buf, Bytes, BytesMut};

use http::header::CONNECTION;
use http::HeaderMap;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Whether `Connection` lists `close`, and whether it lists `keep-alive`.
pub fn connection_options(headers: &HeaderMap) -> (bool, bool) {
    let mut close = false;
    let mut keep_alive = false;
    for v in headers.get_all(CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    (close, keep_alive)
}

/// The longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// The most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("invalid chunk size line {0:?}")]
    ChunkSize(String),
    #[error("chunk size {0:?} is too large")]
    ChunkTooLarge(String),
    #[error("chunk data not followed by CRLF (got {0:?})")]
    ChunkEnd(Vec<u8>),
    #[error("chunk line or trailers longer than {0} bytes")]
    LineTooLong(usize),
    #[error("invalid trailer line {0:?}")]
    Trailer(String),
    #[error("the connection ended {0} bytes before the body's end")]
    Truncated(u64),
    #[error("the connection ended inside a chunked body")]
    TruncatedChunked,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Read more from the connection.
    NeedMore,
    /// The body is complete; what is left in the buffer is the next request.
    End,
}

/// Decodes one request body.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Before a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: CRLF expected.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line. Counts
    /// the trailer bytes seen.
    Trailers(usize),
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next piece of body data from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) | State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::DataEnd,
                        _ => State::Data(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(FramingError::ChunkEnd(buf.to_vec()));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd(buf[..2].to_vec()));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(FramingError::LineTooLong(MAX_TRAILERS));
                    }
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    // A trailer is a field line; folded or nameless ones
                    // are as invalid here as in the head.
                    let valid = line.iter().position(|&b| b == b':').is_some_and(|c| {
                        c > 0 && line[..c].iter().all(|&b| b.is_ascii_graphic() && b != b':')
                    });
                    if !valid {
                        return Err(FramingError::Trailer(
                            String::from_utf8_lossy(&line).into_owned(),
                        ));
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }

    /// The connection ended: an error unless the body was complete.
    pub fn eof(&self) -> Result<(), FramingError> {
        match self.state {
            State::Done => Ok(()),
            State::Length(left) => Err(FramingError::Truncated(left)),
            _ => Err(FramingError::TruncatedChunked),
        }
    }

    /// How many body bytes are still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }
}

/// A CRLF-terminated line from the front of `buf`, without its CRLF;
/// `None` if it is not all there yet. A bare LF or CR is refused.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(FramingError::LineTooLong(MAX_LINE));
        }
        return Ok(None);
    };
    if lf > MAX_LINE {
        return Err(FramingError::LineTooLong(MAX_LINE));
    }
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        let text = String::from_utf8_lossy(&buf[..lf]).into_owned();
        return Err(FramingError::ChunkSize(text));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// The size of a chunk-size line: hex digits, then optional extensions
/// after `;` (ignored). No sign, no `0x`, no spaces before the digits.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let text = || String::from_utf8_lossy(line).into_owned();
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(FramingError::ChunkSize(text()));
    }
    // Whitespace before the extensions is tolerated (RFC 9112 §7.1.1 BWS);
    // anything else after the digits must be an extension.
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|b| b.is_ascii_control()) {
        return Err(FramingError::ChunkSize(text()));
    }
    if digits.len() > 16 {
        return Err(FramingError::ChunkTooLarge(text()));
    }
    let digits = std::str::from_utf8(digits).map_err(|_| FramingError::ChunkSize(text()))?;
    u64::from_str_radix(digits, 16).map_err(|_| FramingError::ChunkTooLarge(text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body and what
    /// was left after it.
    fn decode_in_steps(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::End => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        d.eof()?;
                        unreachable!("eof before the end must fail");
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn content_length_takes_exactly_its_bytes() {
        for step in [1, 3, 100] {
            let (body, rest) = decode_in_steps(Framing::Length(5), b"helloGET /", step).unwrap();
            assert_eq!(body, b"hello");
            // Fed in steps, only the step's overshoot is left.
            assert!(b"GET /".starts_with(&rest), "{rest:?}");
        }
        assert_eq!(
            decode_in_steps(Framing::Length(5), b"hel", 2),
            Err(FramingError::Truncated(2))
        );
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..=input.len() {
            let (body, rest) = decode_in_steps(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn broken_chunks_are_errors_not_guesses() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r",
        ] {
            for step in [1, bad.len()] {
                assert!(
                    decode_in_steps(Framing::Chunked, bad, step).is_err(),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn chunk_sizes_up_to_64_bits_parse() {
        assert_eq!(chunk_size(b"ffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(chunk_size(b"A ; name=\"v\""), Ok(10));
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"5 x").is_err());
    }

    #[test]
    fn endless_lines_are_cut_off() {
        let long = vec![b'1'; MAX_LINE + 10];
        assert_eq!(
            decode_in_steps(Framing::Chunked, &long, 64),
            Err(FramingError::LineTooLong(MAX_LINE))
        );
    }
}
