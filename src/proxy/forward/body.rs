//! Body wrappers: byte counting (client → backend) and the response body
//! that writes the access log line when it is finished or dropped.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

use super::access::{AccessRecord, BodyStats};
use crate::proxy::body::BoxError;
use crate::proxy::origin::OriginBody;

/// A response body from anywhere but an HTTP/1 backend (an h2c backend,
/// an error text).
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body: an HTTP/1 backend's, read off its socket (the common
/// case, not boxed), or any other.
pub enum Answer {
    Origin(OriginBody),
    Other(BoxBody),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Answer::Origin(b) => Pin::new(b).poll_frame(cx),
            Answer::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Origin(b) => b.is_end_stream(),
            Answer::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Origin(b) => b.size_hint(),
            Answer::Other(b) => b.size_hint(),
        }
    }
}

/// Counts data bytes as they stream through, and notes whether the
/// client's body failed (a broken chunk, a reset stream): the request then
/// failed on the client's side, not the backend's.
pub struct Counting<B> {
    inner: B,
    stats: Arc<BodyStats>,
}

impl<B> Counting<B> {
    pub fn new(inner: B, stats: Arc<BodyStats>) -> Self {
        Counting { inner, stats }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counting<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.stats
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => self.stats.failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body sent to the client. Its drop is the end of the
/// request: that is when the access record is complete.
pub struct Logged {
    inner: Answer,
    sent: u64,
    record: Option<AccessRecord>,
}

impl Logged {
    pub fn new(inner: Answer, record: AccessRecord) -> Self {
        Logged {
            inner,
            sent: 0,
            record: Some(record),
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.sent += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish(self.sent);
        }
    }
}
