//! A backend's response body, read straight off its connection by whoever
//! polls it. Data frames are slices of the read buffer (no copy). When the
//! last byte is read the connection goes back to its pool at once, before
//! that byte reaches the client, so the next request can use it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::pool::{OriginConn, Pool};
use super::response::READ_SIZE;
use crate::proxy::body::BoxError;
use crate::proxy::framing::Framing;
use crate::proxy::framing::{Decoded, Decoder};

/// See the module docs.
#[derive(Debug)]
pub struct OriginBody {
    conn: Option<OriginConn>,
    /// `None`: the body runs until the backend closes the connection.
    decoder: Option<Decoder>,
    /// Where the connection goes when the body ends, if reusable.
    home: Option<Arc<Pool>>,
}

impl OriginBody {
    /// No body at all.
    pub fn empty() -> OriginBody {
        OriginBody {
            conn: None,
            decoder: Some(Decoder::new(Framing::Empty)),
            home: None,
        }
    }

    pub(super) fn new(
        conn: OriginConn,
        framing: Option<Framing>,
        home: Option<Arc<Pool>>,
    ) -> OriginBody {
        let mut body = OriginBody {
            conn: Some(conn),
            decoder: framing.map(Decoder::new),
            home,
        };
        if body.decoder.as_ref().is_some_and(Decoder::is_done) {
            body.finish();
        }
        body
    }

    /// The body was read whole: the connection goes home if it may, and
    /// if the backend sent nothing beyond the body.
    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if conn.buf.is_empty() {
                home.put(conn);
            }
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.home = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.as_mut() {
                Some(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => {
                        if decoder.is_done() {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                None if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                None => {}
            }
            super::reserve(&mut conn.buf, READ_SIZE);
            match poll_read_buf(Pin::new(&mut conn.tcp), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(0)) => {
                    return match this.decoder.as_ref().map(Decoder::eof) {
                        Some(Err(e)) => this.fail(e),
                        // Delimited by the close: this is its end.
                        _ => {
                            this.conn = None;
                            Poll::Ready(None)
                        }
                    };
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.conn.is_none() {
            return SizeHint::with_exact(0);
        }
        match self.decoder.as_ref().and_then(Decoder::remaining) {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
