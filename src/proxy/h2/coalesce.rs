//! The write side of an HTTP/2 connection: responses that finish close
//! together leave in one TLS record and one write instead of one each.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this much waiting plaintext, a write first sends what waits.
const HOLD_LIMIT: usize = 32 * 1024;
/// A write at least this large (a full DATA frame) goes out as it is when
/// nothing waits, rather than being copied.
const DIRECT: usize = 16 * 1024;
/// A buffer grown beyond this by a large burst is released once sent.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Counts the polls of one connection's task, so that [`Coalesce`] can
/// tell a flush in the same poll from one in a later poll.
#[derive(Clone, Default)]
pub(super) struct Turns(Arc<AtomicU32>);

impl Turns {
    pub(super) fn next(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The write side of an HTTP/2 connection, holding writes until the
/// connection's task has let the tasks that were ready alongside it run.
///
/// h2 flushes after every DATA frame it chains (any body over 256 bytes)
/// and at the end of every poll of the connection, and tokio runs the
/// connection's task right after the stream task that woke it: unchanged,
/// every response became its own TLS record and its own `writev`, and on
/// loopback each write also pays the receiver's TCP work. HAProxy and
/// nginx send several responses per write.
///
/// A flush here, with bytes waiting, wakes the task and returns at once
/// the first time; the bytes go out at the first flush in a later poll of
/// the task, which tokio schedules behind the tasks already queued (the
/// other streams whose backend answered in the same round). A task woken
/// during its own poll is queued as a yield, not run next, so this holds
/// a response for at most one pass over the ready tasks.
pub(super) struct Coalesce<T> {
    inner: T,
    out: Vec<u8>,
    /// How much of `out` the inner stream has taken.
    sent: usize,
    /// The turn in which a flush was put off (the task has been woken).
    held_in: Option<u32>,
    turns: Turns,
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    pub(super) fn new(inner: T, turns: Turns) -> Coalesce<T> {
        Coalesce {
            inner,
            out: Vec::new(),
            sent: 0,
            held_in: None,
            turns,
        }
    }

    /// Hands everything waiting to the inner stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.sent = 0;
        self.held_in = None;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // h2 does not flush on every path: during its handshake it flushes
        // its SETTINGS once and then only reads until the preface arrives.
        // Every poll of the connection reads, so held bytes leave here too.
        if self.held_in.is_some_and(|t| t != self.turns.now()) {
            if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.out.len() + len > HOLD_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        if this.out.is_empty() && len >= DIRECT {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.out.is_empty() {
            let now = this.turns.now();
            match this.held_in {
                None => {
                    this.held_in = Some(now);
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                Some(t) if t == now => return Poll::Ready(Ok(())),
                Some(_) => ready!(this.poll_send(cx))?,
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::{Wake, Waker};

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag_waker() -> (Waker, Arc<Flag>) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (Waker::from(flag.clone()), flag)
    }

    /// What the other end can read now, without waiting.
    fn readable(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let (waker, _) = flag_waker();
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *peer).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => got.extend(rb.filled()),
                _ => return got,
            }
        }
    }

    /// A `Coalesce` over one end of an in-memory pipe of `capacity`
    /// bytes, the other end, and the turn counter it follows.
    fn coalesce(
        capacity: usize,
    ) -> (
        Coalesce<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Turns,
    ) {
        let (ours, peer) = tokio::io::duplex(capacity);
        let turns = Turns::default();
        (Coalesce::new(ours, turns.clone()), peer, turns)
    }

    fn write(c: &mut Coalesce<tokio::io::DuplexStream>, cx: &mut Context<'_>, b: &[u8]) {
        match Pin::new(c).poll_write(cx, b) {
            Poll::Ready(Ok(n)) => assert_eq!(n, b.len()),
            other => panic!("write: {other:?}"),
        }
    }

    fn flush(c: &mut Coalesce<tokio::io::DuplexStream>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(c).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn flushes_in_one_poll_are_held_and_sent_together_in_the_next() {
        let (mut c, mut peer, turns) = coalesce(256 * 1024);
        let (waker, woken) = flag_waker();
        let mut cx = Context::from_waker(&waker);

        turns.next();
        write(&mut c, &mut cx, b"first response ");
        flush(&mut c, &mut cx);
        assert!(woken.0.load(Ordering::SeqCst), "holding must wake the task");
        write(&mut c, &mut cx, b"second response");
        flush(&mut c, &mut cx);
        assert_eq!(readable(&mut peer), b"");

        turns.next();
        flush(&mut c, &mut cx);
        assert_eq!(readable(&mut peer), b"first response second response");
        // Nothing waits now: a flush is a plain flush, no wake-up.
        woken.0.store(false, Ordering::SeqCst);
        flush(&mut c, &mut cx);
        assert!(!woken.0.load(Ordering::SeqCst));
    }

    #[test]
    fn held_bytes_leave_on_a_read_in_a_later_poll() {
        // h2's handshake flushes its SETTINGS, then only reads.
        let (mut c, mut peer, turns) = coalesce(64 * 1024);
        let (waker, _) = flag_waker();
        let mut cx = Context::from_waker(&waker);

        turns.next();
        write(&mut c, &mut cx, b"SETTINGS");
        flush(&mut c, &mut cx);
        let mut buf = [0u8; 16];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut c).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(readable(&mut peer), b"");

        turns.next();
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut c).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(readable(&mut peer), b"SETTINGS");
    }

    #[test]
    fn shutdown_sends_what_is_held() {
        let (mut c, mut peer, turns) = coalesce(64 * 1024);
        let (waker, _) = flag_waker();
        let mut cx = Context::from_waker(&waker);

        turns.next();
        write(&mut c, &mut cx, b"GOAWAY");
        flush(&mut c, &mut cx);
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(readable(&mut peer), b"GOAWAY");
    }

    #[test]
    fn large_writes_pass_through_and_the_held_bytes_keep_their_order() {
        let (mut c, mut peer, turns) = coalesce(1024 * 1024);
        let (waker, _) = flag_waker();
        let mut cx = Context::from_waker(&waker);
        let big = vec![b'x'; DIRECT];

        turns.next();
        // Nothing held: a full frame goes out at once, uncopied.
        write(&mut c, &mut cx, &big);
        assert_eq!(readable(&mut peer).len(), DIRECT);

        // Held bytes go out before a write that would pass the limit.
        write(&mut c, &mut cx, b"head");
        let more = vec![b'y'; HOLD_LIMIT];
        write(&mut c, &mut cx, &more);
        let got = readable(&mut peer);
        assert_eq!(&got[..4], b"head");
        assert_eq!(got.len(), 4 + HOLD_LIMIT);
    }
}
