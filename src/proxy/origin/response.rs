//! Reading a backend's answer head (httparse), and deciding from it and
//! the request how the body is delimited (RFC 9112 §6.3) and whether the
//! connection can carry another request.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Response, StatusCode, Version};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use super::body::OriginBody;
use super::pool::{OriginConn, Pool};
use super::request::Outgoing;
use super::OriginError;
use crate::proxy::framing::{connection_options, Framing};
use crate::sync::Locked;

/// The largest answer head accepted (nginx's `proxy_buffer_size` is 4 or
/// 8 KiB by default; this is generous).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in an answer head.
const MAX_FIELDS: usize = 128;
/// How much to read at a time.
pub(super) const READ_SIZE: usize = 16 * 1024;

/// An answer head, and how its body comes.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The answer came before the request body was sent whole.
    pub cut_short: bool,
}

impl ResponseHead {
    pub(super) fn cut_short(mut self) -> ResponseHead {
        self.cut_short = true;
        self
    }
}

/// The backend's connection after a 101, with what it sent after the
/// head: taken from the response's extensions by whoever splices it to
/// the client. (Extensions must be `Clone`, hence the shared cell.)
#[derive(Clone, Debug)]
pub struct OriginUpgrade(Arc<Mutex<Option<(TcpStream, BytesMut)>>>);

impl OriginUpgrade {
    pub fn take(&self) -> Option<(TcpStream, BytesMut)> {
        self.0.locked().take()
    }
}

/// Reads until a final answer head (or a 101) is complete, dropping 1xx
/// interim answers. What follows the head stays in `buf`.
pub(super) async fn read_head<R>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<ResponseHead, OriginError>
where
    R: AsyncRead + Unpin,
{
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse(buf)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD {
                return Err(OriginError::HeadTooLarge(MAX_HEAD));
            }
        }
        super::reserve(buf, READ_SIZE);
        if rd.read_buf(buf).await.map_err(OriginError::Read)? == 0 {
            return Err(if got_any {
                OriginError::Truncated
            } else {
                OriginError::Closed
            });
        }
        got_any = true;
    }
}

/// Parses one head from the front of `buf`, taking it off; `None` when
/// it is not complete yet.
pub fn parse(buf: &mut BytesMut) -> Result<Option<ResponseHead>, OriginError> {
    // Uninitialised: filling 128 empty fields per answer cost more than
    // parsing the handful an answer has.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(OriginError::InvalidHead(e.to_string())),
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| OriginError::InvalidHead(format!("status code {code}")))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Values are slices of the head's bytes (no copy per field); the
    // offsets are taken before the head leaves the buffer.
    let base = buf.as_ptr() as usize;
    let mut named: SmallVec<[(HeaderName, std::ops::Range<usize>); 16]> = SmallVec::new();
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| OriginError::InvalidHead(format!("field name {:?}", f.name)))?;
        let at = f.value.as_ptr() as usize - base;
        named.push((name, at..at + f.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, at) in named {
        let value = HeaderValue::from_maybe_shared(head.slice(at))
            .map_err(|_| OriginError::InvalidHead(format!("value of {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        cut_short: false,
    }))
}

/// How an answer's body is delimited, and whether the connection is
/// reusable after it.
fn delimit(head: &ResponseHead, req: &Outgoing) -> Result<(Option<Framing>, bool), OriginError> {
    let h = &head.headers;
    let mut reusable = !head.cut_short && keeps_alive(head);
    let status = head.status;
    if req.method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Some(Framing::Empty), reusable));
    }
    if h.contains_key(TRANSFER_ENCODING) {
        let chunked_last = h
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        // Both framings at once is how responses get smuggled: read it as
        // chunked, and never reuse the connection (RFC 9112 §6.3).
        if h.contains_key(CONTENT_LENGTH) {
            reusable = false;
        }
        return Ok(if chunked_last {
            (Some(Framing::Chunked), reusable)
        } else {
            (None, false)
        });
    }
    match content_length(h)? {
        Some(n) => Ok((
            Some(if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            }),
            reusable,
        )),
        None => Ok((None, false)),
    }
}

/// The one length every `Content-Length` value agrees on.
fn content_length(h: &HeaderMap) -> Result<Option<u64>, OriginError> {
    let mut length = None;
    for v in h.get_all(CONTENT_LENGTH) {
        let text = v.to_str().unwrap_or("");
        for part in text.split(',') {
            let part = part.trim();
            let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| OriginError::InvalidHead(format!("Content-Length {text:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(OriginError::InvalidHead(format!(
                    "Content-Length {text:?} disagrees"
                )));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn keeps_alive(head: &ResponseHead) -> bool {
    let (close, keep_alive) = connection_options(&head.headers);
    match head.version {
        Version::HTTP_11 => !close,
        _ => keep_alive && !close,
    }
}

/// The response handed to the forwarder: the head, and a body that owns
/// the connection (or, after a 101, the connection in the extensions).
pub(super) fn finish(
    conn: OriginConn,
    head: ResponseHead,
    pool: &Arc<Pool>,
    req: &Outgoing,
) -> Result<Response<OriginBody>, OriginError> {
    let upgraded = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let (framing, reusable) = if upgraded {
        (Some(Framing::Empty), false)
    } else {
        delimit(&head, req)?
    };
    let mut resp = Response::new(OriginBody::empty());
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    if upgraded {
        if req.upgrade {
            let OriginConn { tcp, buf } = conn;
            resp.extensions_mut()
                .insert(OriginUpgrade(Arc::new(Mutex::new(Some((tcp, buf))))));
        }
    } else {
        *resp.body_mut() = OriginBody::new(conn, framing, reusable.then(|| pool.clone()));
    }
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::origin::request::Sending;

    fn head(text: &str) -> ResponseHead {
        let mut buf = BytesMut::from(text);
        parse(&mut buf).expect("valid").expect("complete")
    }

    fn get() -> Outgoing {
        Outgoing {
            head: Vec::new(),
            sending: Sending::Nothing,
            body: None,
            method_is_head: false,
            upgrade: false,
        }
    }

    #[test]
    fn delimiting_follows_rfc_9112() {
        let cases: &[(&str, Option<Framing>, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Some(Framing::Length(5)),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Some(Framing::Length(5)),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Some(Framing::Empty),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(Framing::Chunked),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Some(Framing::Chunked),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Some(Framing::Chunked),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                None,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", None, false),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Some(Framing::Empty),
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Some(Framing::Empty),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Some(Framing::Length(1)),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Some(Framing::Length(1)),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Some(Framing::Length(1)),
                true,
            ),
        ];
        for (text, framing, reusable) in cases {
            let got = delimit(&head(text), &get()).expect(text);
            assert_eq!(got, (*framing, *reusable), "{text:?}");
        }
        let mut head_req = get();
        head_req.method_is_head = true;
        let got = delimit(
            &head("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
            &head_req,
        )
        .unwrap();
        assert_eq!(got, (Some(Framing::Empty), true));
    }

    #[test]
    fn conflicting_or_malformed_lengths_are_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        ] {
            assert!(delimit(&head(text), &get()).is_err(), "{text:?}");
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_the_rest_stays_buffered() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        // Every split of the bytes across reads gives the same head.
        for cut in 1..wire.len() {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let first = wire[..cut].to_vec();
            let rest = wire[cut..].to_vec();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                b.write_all(&first).await.unwrap();
                tokio::task::yield_now().await;
                b.write_all(&rest).await.unwrap();
                b
            });
            let mut buf = BytesMut::new();
            let head = read_head(&mut a, &mut buf).await.expect("head");
            assert_eq!(head.status, StatusCode::OK);
            let _b = writer.await.unwrap();
            while buf.len() < 2 {
                a.read_buf(&mut buf).await.unwrap();
            }
            assert_eq!(&buf[..], b"hi");
        }
    }

    #[tokio::test]
    async fn an_empty_close_is_closed_and_a_partial_one_truncated() {
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut a, &mut buf).await,
            Err(OriginError::Closed)
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        {
            use tokio::io::AsyncWriteExt;
            b.write_all(b"HTTP/1.1 200").await.unwrap();
        }
        drop(b);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut a, &mut buf).await,
            Err(OriginError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_head_too_large_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(MAX_HEAD * 2);
        let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
        while text.len() < MAX_HEAD + 10 {
            text.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        {
            use tokio::io::AsyncWriteExt;
            b.write_all(&text).await.unwrap();
        }
        let mut buf = BytesMut::new();
        let e = read_head(&mut a, &mut buf).await.expect_err("too large");
        // With more than MAX_FIELDS fields httparse stops first; either way
        // the head is refused.
        assert!(
            matches!(
                e,
                OriginError::HeadTooLarge(_) | OriginError::InvalidHead(_)
            ),
            "{e}"
        );
    }
}
