//! Writing a response: the head (status line, fields, `Date`, framing,
//! `Connection`), then the body streamed frame by frame, with chunked
//! encoding when its length is unknown and none at all where HTTP forbids
//! one (HEAD, 1xx, 204, 304). Small pieces are gathered into one buffer
//! and written together; the buffer is flushed whenever the body has
//! nothing ready, so nothing waits in it.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::proxy::body::BoxError;

/// Data frames at least this large are written as they are, not copied
/// into the gathering buffer.
const DIRECT: usize = 8 * 1024;
/// The gathering buffer is written out once it holds this much.
const GATHER: usize = 16 * 1024;

/// Why a response could not be written whole.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing to the client: {0}")]
    Io(#[from] std::io::Error),
    #[error("the response body failed: {0}")]
    Body(BoxError),
}

/// What the request decided about its response.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    pub method_is_head: bool,
    pub version: Version,
    /// Whether the connection may stay open after this response.
    pub keep_alive: bool,
}

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimit {
    /// No body is sent.
    Nothing,
    Length,
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Encodes the response head into `out`, writing the framing fields that
/// match how the body will be sent in place of the answer's own. Returns
/// that, and whether the connection stays open afterwards.
///
/// The fields it decides (`Content-Length`, `Transfer-Encoding`,
/// `Connection`, a missing `Date`) are written directly rather than set
/// in the map first: the map is read once, never changed.
pub fn encode_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    size: Option<u64>,
    req: Answering,
) -> (Delimit, bool) {
    let mut keep_alive = req.keep_alive;
    let status = parts.status;
    let delimit = if req.method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // A HEAD or 304 answer keeps the length the body would have had.
        Delimit::Nothing
    } else if size.is_some() {
        Delimit::Length
    } else if req.version == Version::HTTP_11 {
        Delimit::Chunked
    } else {
        keep_alive = false;
        Delimit::Close
    };
    let connection = if status == StatusCode::SWITCHING_PROTOCOLS {
        None
    } else if !keep_alive {
        Some("close")
    } else if req.version == Version::HTTP_10 {
        Some("keep-alive")
    } else {
        None
    };
    let own_framing = delimit != Delimit::Nothing;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in parts.headers.iter() {
        let replaced = (own_framing && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING))
            || (connection.is_some() && name == CONNECTION);
        if replaced {
            continue;
        }
        has_date |= name == DATE;
        field(out, name.as_str(), value.as_bytes());
    }
    match (delimit, size) {
        (Delimit::Length, Some(n)) => field(
            out,
            "content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        (Delimit::Chunked, _) => field(out, "transfer-encoding", b"chunked"),
        _ => {}
    }
    if let Some(c) = connection {
        field(out, "connection", c.as_bytes());
    }
    if !has_date {
        field(out, "date", http_date().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    (delimit, keep_alive)
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Room for a typical answer head.
const HEAD_ROOM: usize = 512;

/// The buffer a response is written through: room for its head, and for
/// its body when that is small enough to go out in the same write (as
/// [`write_body`] gathers it), so that it is allocated once.
pub fn out_buffer(size: Option<u64>) -> Vec<u8> {
    let body = size
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= GATHER)
        .unwrap_or(0);
    Vec::with_capacity(HEAD_ROOM + body)
}

/// Streams `body` after the head already in `out`, then flushes.
pub async fn write_body<W, B>(
    io: &mut W,
    out: &mut Vec<u8>,
    mut body: B,
    delimit: Delimit,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if delimit != Delimit::Nothing {
        loop {
            // What is ready now joins the buffer; before waiting for
            // more, what is buffered goes out, unless the rest is known to
            // be small: a short body comes right behind its head (hyper's
            // client hands them over separately), and one write, one TLS
            // record, is cheaper than two.
            let next = match body.frame().now_or_never() {
                Some(f) => f,
                None => {
                    let rest_fits = body.size_hint().exact().is_some_and(|n| {
                        usize::try_from(n).is_ok_and(|n| out.len().saturating_add(n) <= GATHER)
                    });
                    if !rest_fits {
                        flush(io, out).await?;
                    }
                    body.frame().await
                }
            };
            let data = match next {
                None => break,
                Some(Err(e)) => return Err(WriteError::Body(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    // Empty data, or trailers, which HTTP/1.1 clients
                    // rarely ask for and this proxy does not pass on.
                    _ => continue,
                },
            };
            if delimit == Delimit::Chunked {
                let _ = write!(out, "{:x}\r\n", data.len());
            }
            if data.len() >= DIRECT {
                io.write_all(out).await?;
                out.clear();
                io.write_all(&data).await?;
            } else {
                out.extend_from_slice(&data);
            }
            if delimit == Delimit::Chunked {
                out.extend_from_slice(b"\r\n");
            }
            if out.len() >= GATHER {
                io.write_all(out).await?;
                out.clear();
            }
        }
        if delimit == Delimit::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    flush(io, out).await?;
    Ok(())
}

async fn flush<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

/// `HTTP/1.1 100 Continue`, for a client that waits for it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete answer for a request that never reached the forwarder (a
/// head that could not be read); the connection closes after it.
pub fn refusal(status: StatusCode) -> Vec<u8> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut out = Vec::with_capacity(160 + text.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: ",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    out.extend_from_slice(http_date().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    out
}

/// The `Date` value, formatted once per second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        match &c.1 {
            Some(v) if c.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                *c = (secs, Some(v.clone()));
                v
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn answering(version: Version, keep_alive: bool) -> Answering {
        Answering {
            method_is_head: false,
            version,
            keep_alive,
        }
    }

    fn head_text(status: u16, size: Option<u64>, req: Answering) -> (String, Delimit, bool) {
        let (parts, ()) = http::Response::builder()
            .status(status)
            .header("x-a", "1")
            .header(DATE, "d")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        let (d, k) = encode_head(&mut out, &parts, size, req);
        (String::from_utf8(out).unwrap(), d, k)
    }

    #[test]
    fn known_lengths_get_content_length_unknown_ones_chunked() {
        let (t, d, k) = head_text(200, Some(5), answering(Version::HTTP_11, true));
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!((d, k), (Delimit::Length, true));
        let (t, d, _) = head_text(200, None, answering(Version::HTTP_11, false));
        assert!(t.contains("transfer-encoding: chunked\r\n"), "{t}");
        assert!(t.contains("connection: close\r\n"), "{t}");
        assert_eq!(d, Delimit::Chunked);
    }

    #[test]
    fn http10_clients_get_keep_alive_said_or_a_close_delimited_body() {
        let (t, d, k) = head_text(200, Some(1), answering(Version::HTTP_10, true));
        assert!(t.contains("connection: keep-alive\r\n"), "{t}");
        assert_eq!((d, k), (Delimit::Length, true));
        let (t, d, k) = head_text(200, None, answering(Version::HTTP_10, true));
        assert!(
            t.contains("connection: close\r\n") && !t.contains("chunked"),
            "{t}"
        );
        assert_eq!((d, k), (Delimit::Close, false));
    }

    #[test]
    fn head_204_and_304_answers_carry_no_body() {
        let mut req = answering(Version::HTTP_11, true);
        for status in [204, 304, 101] {
            assert_eq!(head_text(status, None, req).1, Delimit::Nothing, "{status}");
        }
        req.method_is_head = true;
        let (t, d, _) = head_text(200, Some(0), req);
        assert_eq!(d, Delimit::Nothing);
        assert!(!t.contains("content-length: 0"), "{t}");
    }

    #[tokio::test]
    async fn bodies_are_written_with_their_framing() {
        let chunks: Vec<Result<_, std::io::Error>> = vec![
            Ok(http_body::Frame::data(Bytes::from("hello"))),
            Ok(http_body::Frame::data(Bytes::new())),
            Ok(http_body::Frame::data(Bytes::from(vec![b'x'; DIRECT]))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let mut io = Vec::new();
        let mut out = b"HEAD\r\n".to_vec();
        write_body(&mut io, &mut out, body, Delimit::Chunked)
            .await
            .unwrap();
        let want = format!(
            "HEAD\r\n5\r\nhello\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            DIRECT,
            "x".repeat(DIRECT)
        );
        assert_eq!(String::from_utf8(io).unwrap(), want);

        let mut io = Vec::new();
        let mut out = Vec::new();
        let body = Full::new(Bytes::from("abc"));
        write_body(&mut io, &mut out, body, Delimit::Length)
            .await
            .unwrap();
        assert_eq!(io, b"abc");
        let mut io = Vec::new();
        let body = Full::new(Bytes::from("abc"));
        write_body(&mut io, &mut out, body, Delimit::Nothing)
            .await
            .unwrap();
        assert!(io.is_empty());
    }

    #[test]
    fn refusals_close_the_connection() {
        let r = String::from_utf8(refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        assert!(r.contains("connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n431 Request Header Fields Too Large\n"));
    }
}
