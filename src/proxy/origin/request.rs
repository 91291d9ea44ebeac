//! Writing a request to a backend: the head, encoded once however many
//! times it is sent, and the body, by length or chunked. While the body
//! goes out the answer is already being read, so a backend that answers
//! early (a 413, a redirect) is not left waiting on an upload it refused.

use futures_util::FutureExt;
use http_body::Body;
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::pool::OriginConn;
use super::response::{read_head, ResponseHead};
use super::OriginError;
use crate::proxy::body::UpBody;

/// Body bytes gathered behind the head, or between writes, before they
/// go out in one write.
const GATHER: usize = 64 * 1024;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    Nothing,
    Length(u64),
    Chunked,
}

/// A request ready to send: its encoded head and its body.
pub struct Outgoing {
    pub head: Vec<u8>,
    pub sending: Sending,
    /// `None` when there is no body, or once it has been taken to send.
    pub body: Option<UpBody>,
    pub method_is_head: bool,
    /// The request asks to switch protocols: a 101 hands over the socket.
    pub upgrade: bool,
}

impl Outgoing {
    /// Encodes `method target HTTP/1.1` and `headers`, with the framing
    /// header that matches how `body` will be sent. `headers` must already
    /// be free of hop-by-hop fields (and carry `Host`).
    pub fn new(
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: Option<UpBody>,
        upgrade: bool,
    ) -> Outgoing {
        let body = body.filter(|b| !b.is_end_stream());
        let sending = match &body {
            None => Sending::Nothing,
            Some(b) => match b.size_hint().exact() {
                Some(n) => Sending::Length(n),
                None => Sending::Chunked,
            },
        };
        let mut head = Vec::with_capacity(256 + headers.len() * 32);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match sending {
            // A method that defines a body says it has none, as hyper and
            // curl do; one that does not says nothing.
            Sending::Nothing if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
            Sending::Nothing => {}
            Sending::Length(n) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(n.to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            Sending::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        Outgoing {
            head,
            sending,
            body,
            method_is_head: *method == Method::HEAD,
            upgrade,
        }
    }
}

/// Writes the request on `conn` and reads the answer's head (after any
/// 1xx interim answers other than 101).
pub(super) async fn exchange(
    conn: &mut OriginConn,
    req: &mut Outgoing,
) -> Result<ResponseHead, OriginError> {
    let OriginConn { tcp, buf } = conn;
    let (mut rd, mut wr) = tcp.split();
    let Some(body) = req.body.take() else {
        wr.write_all(&req.head).await.map_err(OriginError::Write)?;
        return read_head(&mut rd, buf).await;
    };
    let mut reading = std::pin::pin!(read_head(&mut rd, buf));
    let sending = send_body(&mut wr, &req.head, body, req.sending);
    tokio::select! {
        biased;
        sent = sending => {
            sent?;
            reading.await
        }
        head = &mut reading => {
            // Answered before the body was sent whole: the rest of the
            // upload is not sent, and the connection cannot be reused.
            head.map(ResponseHead::cut_short)
        }
    }
}

/// Writes the head and the body, gathering what is ready into few writes.
async fn send_body<W>(
    wr: &mut W,
    head: &[u8],
    mut body: UpBody,
    sending: Sending,
) -> Result<(), OriginError>
where
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(head.len() + 4096);
    out.extend_from_slice(head);
    let mut left = match sending {
        Sending::Length(n) => Some(n),
        _ => None,
    };
    loop {
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    wr.write_all(&out).await.map_err(OriginError::Write)?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(OriginError::Body(e)),
            Some(Ok(frame)) => {
                // Trailers are not forwarded (README: limits).
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if let Some(left) = left.as_mut() {
                    *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                        OriginError::Body(
                            "the request body is longer than its Content-Length".into(),
                        )
                    })?;
                }
                if sending == Sending::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                }
                if data.len() >= GATHER / 4 {
                    // Large pieces go out as they are, not copied.
                    wr.write_all(&out).await.map_err(OriginError::Write)?;
                    out.clear();
                    wr.write_all(&data).await.map_err(OriginError::Write)?;
                } else {
                    out.extend_from_slice(&data);
                }
                if sending == Sending::Chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= GATHER {
                    wr.write_all(&out).await.map_err(OriginError::Write)?;
                    out.clear();
                }
            }
        }
    }
    if left.is_some_and(|n| n > 0) {
        return Err(OriginError::Body(
            "the request body is shorter than its Content-Length".into(),
        ));
    }
    if sending == Sending::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        wr.write_all(&out).await.map_err(OriginError::Write)?;
    }
    wr.flush().await.map_err(OriginError::Write)
}
