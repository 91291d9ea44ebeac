//! The request body handed to the forwarder: data the connection loop
//! reads and decodes arrives through a one-slot channel, so the backend's
//! pace holds back reading from the client. The connection loop starts
//! reading only once the body is first polled, which is also when an
//! `Expect: 100-continue` client is told to go ahead.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use crate::proxy::framing::FramingError;

/// What the connection loop sends down the channel.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    End,
    Failed(FramingError),
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid request body: {0}")]
    Framing(#[from] FramingError),
    #[error("the client connection ended before the request body did")]
    Abandoned,
}

/// A request body: empty, or streamed from the connection.
#[derive(Debug)]
pub struct RequestBody {
    rx: Option<mpsc::Receiver<Piece>>,
    /// Fired at the first poll: the connection loop waits for it.
    wanted: Option<oneshot::Sender<()>>,
    /// Body bytes still to come, when known (Content-Length).
    remaining: Option<u64>,
}

/// The connection loop's side of a streamed body.
#[derive(Debug)]
pub struct Feed {
    pub tx: mpsc::Sender<Piece>,
    pub wanted: oneshot::Receiver<()>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            rx: None,
            wanted: None,
            remaining: Some(0),
        }
    }

    /// A streamed body of `length` bytes if known, and its feed.
    pub fn streamed(length: Option<u64>) -> (RequestBody, Feed) {
        let (tx, rx) = mpsc::channel(1);
        let (want_tx, want_rx) = oneshot::channel();
        let body = RequestBody {
            rx: Some(rx),
            wanted: Some(want_tx),
            remaining: length,
        };
        (
            body,
            Feed {
                tx,
                wanted: want_rx,
            },
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(w) = self.wanted.take() {
            let _ = w.send(());
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let piece = match rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(p) => p,
        };
        match piece {
            Some(Piece::Data(d)) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(d.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(d))))
            }
            Some(Piece::End) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Some(Piece::Failed(e)) => {
                self.rx = None;
                Poll::Ready(Some(Err(e.into())))
            }
            // The loop stopped feeding without an end: the client went
            // away, or the response came first and the rest is not read.
            None => {
                self.rx = None;
                Poll::Ready(Some(Err(BodyError::Abandoned)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.rx.is_none(), self.remaining) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(n)) => SizeHint::with_exact(n),
            (false, None) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_first_poll_asks_for_data_and_pieces_arrive_in_order() {
        let (body, mut feed) = RequestBody::streamed(Some(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(feed.wanted.try_recv().is_err());
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
        (&mut feed.wanted).await.expect("wanted");
        feed.tx.send(Piece::Data(Bytes::from("hel"))).await.unwrap();
        feed.tx.send(Piece::Data(Bytes::from("lo"))).await.unwrap();
        feed.tx.send(Piece::End).await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_feed_dropped_before_the_end_is_an_error() {
        let (body, feed) = RequestBody::streamed(None);
        drop(feed);
        assert!(matches!(body.collect().await, Err(BodyError::Abandoned)));
        assert!(RequestBody::empty().is_end_stream());
    }
}
