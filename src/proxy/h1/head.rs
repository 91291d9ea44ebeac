//! A request head: parsed with httparse from the bytes read so far, then
//! checked for what decides the body's framing and the connection's
//! future. Everything ambiguous is refused (RFC 9112 §6.3, §11.2): a
//! proxy that reads a message one way while its backend reads it another
//! is how requests are smuggled.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use smallvec::SmallVec;

use crate::proxy::framing::{connection_options, Framing};

/// The most header fields a request may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;
/// Fields the forwarder may add to a request.
const FORWARDING_ROOM: usize = 4;

/// A parsed, checked request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before
    /// sending its body.
    pub expect_continue: bool,
}

/// Why a request head was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid request target {0:?}")]
    Target(String),
    #[error("invalid header field {0:?}")]
    Field(String),
    #[error("Transfer-Encoding {0:?}: only a single \"chunked\" is accepted")]
    TransferEncoding(String),
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    #[error("Content-Length {0:?}: one decimal value is required")]
    ContentLength(String),
    #[error("both Content-Length and Transfer-Encoding")]
    BothFramings,
}

impl HeadError {
    /// The answer the client gets before the connection closes.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyFields => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. On success the head's bytes are split off `buf` (what follows is
/// body or the next request) and header values share them, uncopied.
pub fn parse(buf: &mut BytesMut, limit: usize) -> Result<Option<Head>, HeadError> {
    // Uninitialised: most heads have a handful of fields, and filling
    // 100 empty ones on every request costs more than parsing them.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limit => {
            return Err(HeadError::TooLarge { limit })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if len > limit {
        return Err(HeadError::TooLarge { limit });
    }
    let method = req.method.unwrap_or_default();
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Method(method.to_owned()))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each value lies in the head, so that, once the head is split
    // off as `Bytes`, values can be slices of it rather than copies.
    let base = buf.as_ptr() as usize;
    let target = req.path.unwrap_or_default();
    let target_at = target.as_ptr() as usize - base..target.as_ptr() as usize - base + target.len();
    let mut named: SmallVec<[(HeaderName, std::ops::Range<usize>); 16]> = SmallVec::new();
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| HeadError::Field(f.name.to_owned()))?;
        let at = f.value.as_ptr() as usize - base;
        named.push((name, at..at + f.value.len()));
    }
    let head: Bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_at.clone()))
        .map_err(|_| HeadError::Target(String::from_utf8_lossy(&head[target_at]).into_owned()))?;
    // Room for what forwarding adds (X-Forwarded-For, -Proto, -Host,
    // Forwarded), so that adding them does not grow the map.
    let mut headers = HeaderMap::with_capacity(named.len() + FORWARDING_ROOM);
    for (name, at) in named {
        let value = HeaderValue::from_maybe_shared(head.slice(at.clone()))
            .map_err(|_| HeadError::Field(String::from_utf8_lossy(&head[at]).into_owned()))?;
        headers.append(name, value);
    }
    let framing = framing(&headers, version)?;
    let (close, keep_alive_asked) = connection_options(&headers);
    let keep_alive = match version {
        Version::HTTP_10 => keep_alive_asked && !close,
        _ => !close,
    };
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// The body's framing: one `Transfer-Encoding: chunked` line, or one
/// `Content-Length` line of digits, or neither; anything else is refused.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, HeadError> {
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    let mut cl = headers.get_all(CONTENT_LENGTH).iter();
    match (te.next(), cl.next()) {
        (None, None) => Ok(Framing::Empty),
        (Some(_), Some(_)) => Err(HeadError::BothFramings),
        (Some(_), None) if version == Version::HTTP_10 => Err(HeadError::TransferEncodingHttp10),
        (Some(v), None) => {
            let chunked = v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
            match te.next() {
                Some(more) => Err(HeadError::TransferEncoding(format!(
                    "{}, {}",
                    text(v),
                    text(more)
                ))),
                None if chunked => Ok(Framing::Chunked),
                None => Err(HeadError::TransferEncoding(text(v))),
            }
        }
        (None, Some(v)) => {
            let digits = v.as_bytes();
            let n = (cl.next().is_none()
                && !digits.is_empty()
                && digits.len() <= 19
                && digits.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
            .flatten();
            match n {
                Some(0) => Ok(Framing::Empty),
                Some(n) => Ok(Framing::Length(n)),
                None => Err(HeadError::ContentLength(text(v))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(raw: &str) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(raw), 16 * 1024)
    }

    fn head(raw: &str) -> Head {
        parse_all(raw).expect("valid").expect("complete")
    }

    #[test]
    fn a_simple_get_keeps_the_connection_and_leaves_what_follows() {
        let mut buf = BytesMut::from("GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /next");
        let h = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=c");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["host"], "x");
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete_not_invalid() {
        let raw = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        for end in 0..raw.len() {
            assert!(parse_all(&raw[..end]).unwrap().is_none(), "{end}");
        }
        assert_eq!(head(raw).framing, Framing::Length(5));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.1\r\nConnection: te, keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_is_seen_in_http11_only() {
        let raw = "PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(head(raw).expect_continue);
        let raw = "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(!head(raw).expect_continue);
    }

    #[test]
    fn chunked_is_the_only_transfer_encoding() {
        let ok = "POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n";
        assert_eq!(head(ok).framing, Framing::Chunked);
        for te in [
            "chunked, identity",
            "identity",
            "xchunked",
            "gzip, chunked",
            "",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = parse_all(&raw).expect_err(te);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{te}: {e}");
        }
        let two =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_all(two).is_err());
        let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_all(http10),
            Err(HeadError::TransferEncodingHttp10)
        ));
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        for cl in [
            "+5",
            "5, 5",
            "5,60",
            "-1",
            "0x5",
            "5 5",
            "",
            "99999999999999999999",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            assert!(
                matches!(parse_all(&raw), Err(HeadError::ContentLength(_))),
                "{cl:?}"
            );
        }
        let two = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(parse_all(two).is_err());
        let zero = "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(head(zero).framing, Framing::Empty);
    }

    #[test]
    fn both_framings_are_refused() {
        let raw = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse_all(raw), Err(HeadError::BothFramings)));
    }

    #[test]
    fn malformed_heads_are_refused_with_400() {
        for raw in [
            "GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            let e = parse_all(raw).expect_err(raw);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{raw:?}: {e}");
        }
    }

    #[test]
    fn oversized_heads_get_431() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
        let e = parse(&mut BytesMut::from(big.as_str()), 1024).unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Incomplete but already past the limit.
        let e = parse(&mut BytesMut::from(&big[..1500]), 1024).unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_all(&raw), Err(HeadError::TooManyFields)));
    }
}
