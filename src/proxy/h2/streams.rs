//! An HTTP/2 connection's streams run inside the connection's own task.
//!
//! hyper hands each request stream to its executor; with tokio's that is a
//! task per stream: a spawn, a task allocation, and a wake-up and a poll
//! of its own for every step of the stream (the backend answering, the
//! response's frames handed to the connection). Here the executor queues
//! the stream in the connection, and one poll of the connection's task
//! runs every stream that was woken since the last one, then the
//! connection itself: when several backends answer in one round, one
//! wake-up serves them all, and their frames are written in the same
//! pass.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::coalesce::Turns;
use crate::sync::Locked;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: it queues, the connection runs.
#[derive(Clone, Default)]
pub(super) struct Streams(Arc<Mutex<Vec<Stream>>>);

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.lock().push(Box::pin(fut));
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Stream>> {
        self.0.locked()
    }
}

/// A connection future and the streams it started, polled together; each
/// poll is counted in `turns` (see [`super::coalesce::Coalesce`]).
///
/// It ends when the connection does. hyper's connection ends only after
/// its streams have (a graceful close waits for them), or on a connection
/// error, after which no stream could send anything anyway: streams left
/// then are dropped, as their tasks would have failed.
pub(super) struct WithStreams<F> {
    conn: Pin<Box<F>>,
    queued: Streams,
    running: FuturesUnordered<Stream>,
    turns: Turns,
}

impl<F: Future> WithStreams<F> {
    pub(super) fn new(conn: F, queued: Streams, turns: Turns) -> WithStreams<F> {
        WithStreams {
            conn: Box::pin(conn),
            queued,
            running: FuturesUnordered::new(),
            turns,
        }
    }

    pub(super) fn conn(&mut self) -> Pin<&mut F> {
        self.conn.as_mut()
    }
}

impl<F: Future> Future for WithStreams<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.turns.next();
        // Streams first: what they answer, the connection then writes in
        // the same pass.
        while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // Streams that the connection (or a stream) just started get their
        // first poll now, not after another wake-up. Whatever they answer
        // at once wakes the connection's task (h2 does) for the next turn,
        // so the connection is not polled again here.
        loop {
            let new = std::mem::take(&mut *this.queued.lock());
            if new.is_empty() {
                return Poll::Pending;
            }
            this.running.extend(new);
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection stand-in: it starts `n` streams on its first poll,
    /// each of which counts itself done, and ends once all are done.
    struct FakeConn {
        exec: Streams,
        started: bool,
        n: usize,
        done: Arc<AtomicUsize>,
    }

    impl Future for FakeConn {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                for _ in 0..self.n {
                    let done = self.done.clone();
                    self.exec.execute(async move {
                        tokio::task::yield_now().await;
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
            let d = self.done.load(Ordering::SeqCst);
            if d == self.n {
                Poll::Ready(d)
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn streams_run_in_the_connection_task_until_the_connection_ends() {
        let exec = Streams::default();
        let done = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            exec: exec.clone(),
            started: false,
            n: 5,
            done: done.clone(),
        };
        let turns = Turns::default();
        let finished = WithStreams::new(conn, exec.clone(), turns).await;
        assert_eq!(finished, 5);
        assert!(exec.lock().is_empty());
    }
}
