//! The read side of an HTTP/2 connection: a budget for the header bytes
//! its HPACK blocks decode to, charged before h2 decodes them.
//!
//! h2 decodes HPACK itself, with no hook per block. A client can put a
//! field in the dynamic table once and then name it with one byte as often
//! as a block holds: h2 answers a block over `max_header_list_size` with a
//! 431 and goes on, and ends the connection only past four times that, so
//! blocks just under the four times decode to ~256 KiB each, thousands of
//! fields, about a millisecond of CPU per block, as fast as the client
//! writes them. Here the frames pass through untouched while their 9-byte
//! heads are read, the fragments of each header block go through
//! [`super::hpack::Sizes`], and what a block decodes to beyond
//! [`FREE_PER_BLOCK`] is taken from a per-connection bucket. A connection
//! that empties it gets GOAWAY(ENHANCE_YOUR_CALM) and is closed before h2
//! sees the block that did.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::hpack::{HpackError, Sizes};
use crate::sync::Locked;

/// Decoded header bytes of one block that cost nothing: more than any
/// browser's request (nginx refuses a single header line over 8 KiB).
pub(super) const FREE_PER_BLOCK: usize = 16 * 1024;
/// What a connection may spend at once beyond the free bytes: four of the
/// largest blocks h2 lets through (4 × 64 KiB at the default
/// `max_header_size`), or sixty-four requests with 32 KiB of headers.
pub(super) const BURST: f64 = 1024.0 * 1024.0;
/// What the bucket regains per second.
pub(super) const PER_SECOND: f64 = 256.0 * 1024.0;
/// The dynamic table's limit: h2's default SETTINGS_HEADER_TABLE_SIZE,
/// which hyper does not change.
const TABLE_SIZE: usize = 4096;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How often a connection cut off here is logged at warn (the rest at
/// debug; the metric counts all).
const WARN_EVERY: Duration = Duration::from_secs(60);
static LAST_WARNED: Mutex<Option<Instant>> = Mutex::new(None);

/// Why the connection was ended.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 header blocks decoded beyond the connection's budget (a block of {block} bytes)")]
pub(super) struct Exceeded {
    /// The decoded size, so far, of the block that emptied the bucket.
    block: usize,
}

/// Decoded bytes over time, per connection.
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            left: BURST,
            at: now,
        }
    }

    fn take(&mut self, n: usize, now: Instant) -> bool {
        let regained = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.left = (self.left + regained).min(BURST);
        self.at = now;
        self.left -= n as f64;
        self.left >= 0.0
    }
}

/// Where the client's bytes are, frame by frame.
enum Rx {
    Preface(usize),
    Head([u8; 9], usize),
    Payload(Payload),
    /// Not HTTP/2 (hyper answers HTTP/1 bytes with a 400), or bytes the
    /// reader cannot follow, which h2 refuses itself.
    Off,
}

/// The rest of one frame's payload.
struct Payload {
    left: usize,
    /// A padded HEADERS frame's pad length, the payload's first byte.
    pad_length_next: bool,
    /// Bytes before the fragment (a HEADERS frame's priority fields).
    front: usize,
    /// Padding after the fragment.
    back: usize,
    /// Whether the bytes between are a header block fragment.
    fragment: bool,
    /// Whether the block ends with this frame.
    ends_block: bool,
}

/// Where the server's bytes are: a GOAWAY may only go between frames.
#[derive(Default)]
struct Tx {
    head: [u8; 9],
    have: usize,
    left: usize,
}

impl Tx {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// How many bytes from here end the current head or payload.
    fn step(&self) -> usize {
        if self.have > 0 {
            9 - self.have
        } else {
            self.left
        }
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                self.left =
                    u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
            }
        }
    }
}

enum Close {
    Open,
    /// Waiting for the server's current frame to be written whole.
    AtBoundary,
    Writing(usize),
    ShuttingDown,
    Closed,
}

/// An HTTP/2 connection's I/O, charging its header blocks (see the module
/// docs).
pub(super) struct Budget<T> {
    inner: T,
    peer: SocketAddr,
    rx: Rx,
    sizes: Sizes,
    /// Decoded bytes of the header block being read.
    block: usize,
    bucket: Bucket,
    /// The highest stream a HEADERS frame opened that h2 was given.
    last_stream: u32,
    tx: Tx,
    close: Close,
    goaway: Vec<u8>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Budget<T> {
    pub(super) fn new(inner: T, peer: SocketAddr) -> Budget<T> {
        Budget {
            inner,
            peer,
            rx: Rx::Preface(0),
            sizes: Sizes::new(TABLE_SIZE),
            block: 0,
            bucket: Bucket::new(Instant::now()),
            last_stream: 0,
            tx: Tx::default(),
            close: Close::Open,
            goaway: Vec::new(),
        }
    }

    /// Follows the client's next bytes; an error once the budget is spent.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), Exceeded> {
        while !bytes.is_empty() {
            match &mut self.rx {
                Rx::Off => return Ok(()),
                Rx::Preface(have) => {
                    let n = (PREFACE.len() - *have).min(bytes.len());
                    if bytes[..n] != PREFACE[*have..*have + n] {
                        self.rx = Rx::Off;
                        return Ok(());
                    }
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == PREFACE.len() {
                        self.rx = Rx::Head([0; 9], 0);
                    }
                }
                Rx::Head(head, have) => {
                    let n = (9 - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 9 {
                        let head = *head;
                        self.frame_starts(&head);
                    }
                }
                Rx::Payload(p) => {
                    let n = if p.pad_length_next {
                        p.pad_length_next = false;
                        p.back = usize::from(bytes[0]);
                        1
                    } else if p.front > 0 {
                        let n = p.front.min(bytes.len());
                        p.front -= n;
                        n
                    } else if p.fragment && p.left > p.back {
                        let n = (p.left - p.back).min(bytes.len());
                        p.left -= n;
                        let fed = self.sizes.feed(&bytes[..n]);
                        bytes = &bytes[n..];
                        match fed {
                            Ok(decoded) => self.charge(decoded)?,
                            Err(e) => self.lost(&e),
                        }
                        self.payload_checked();
                        continue;
                    } else {
                        // The padding, or a payload that is not HPACK.
                        let n = p.left.min(bytes.len());
                        p.back = p.back.saturating_sub(n);
                        n
                    };
                    p.left -= n;
                    bytes = &bytes[n..];
                    self.payload_checked();
                }
            }
        }
        Ok(())
    }

    fn frame_starts(&mut self, head: &[u8; 9]) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let fragment = kind == HEADERS || kind == CONTINUATION;
        if kind == HEADERS {
            self.last_stream = self.last_stream.max(stream);
        }
        self.rx = Rx::Payload(Payload {
            left: len,
            pad_length_next: kind == HEADERS && flags & PADDED != 0,
            front: if kind == HEADERS && flags & PRIORITY != 0 {
                5
            } else {
                0
            },
            back: 0,
            fragment,
            ends_block: fragment && flags & END_HEADERS != 0,
        });
        self.payload_checked();
    }

    /// Moves on when the payload is done; stops following a frame whose
    /// padding and priority do not fit in it (h2 refuses it).
    fn payload_checked(&mut self) {
        let Rx::Payload(p) = &self.rx else { return };
        if p.pad_length_next {
            if p.left == 0 {
                self.rx = Rx::Off;
            }
            return;
        }
        if p.front + p.back > p.left {
            self.rx = Rx::Off;
        } else if p.left == 0 {
            if p.ends_block {
                self.block = 0;
            }
            self.rx = Rx::Head([0; 9], 0);
        }
    }

    /// Takes what the block decodes to beyond its free bytes.
    fn charge(&mut self, decoded: usize) -> Result<(), Exceeded> {
        let before = self.block.saturating_sub(FREE_PER_BLOCK);
        self.block = self.block.saturating_add(decoded);
        let over = self.block.saturating_sub(FREE_PER_BLOCK) - before;
        if over == 0 || self.bucket.take(over, Instant::now()) {
            return Ok(());
        }
        Err(Exceeded { block: self.block })
    }

    /// HPACK the reader cannot follow: h2 ends the connection for it.
    fn lost(&mut self, e: &HpackError) {
        tracing::debug!(client = %self.peer, error = %e, "header block not followed");
        self.rx = Rx::Off;
    }

    /// Counts and logs the end, and queues the GOAWAY.
    fn trip(&mut self, why: &Exceeded) {
        metrics::counter!("vaultgate_proxy_h2_abuse_total", "reason" => "hpack").increment(1);
        let now = Instant::now();
        let warn = {
            let mut last = LAST_WARNED.locked();
            let due = last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if warn {
            tracing::warn!(client = %self.peer, error = %why, "HTTP/2 connection closed with ENHANCE_YOUR_CALM (more in the next minute only at debug)");
        } else {
            tracing::debug!(client = %self.peer, error = %why, "HTTP/2 connection closed with ENHANCE_YOUR_CALM");
        }
        let debug = b"header_decode_budget";
        let len = (8 + debug.len()) as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([GOAWAY, 0, 0, 0, 0, 0]);
        f.extend(self.last_stream.to_be_bytes());
        f.extend(ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend(debug);
        self.goaway = f;
        self.close = Close::AtBoundary;
    }

    /// Sends the GOAWAY once the server's current frame is out, then
    /// closes the TLS stream (close_notify, then FIN).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.close {
                Close::Open | Close::Closed => return Poll::Ready(()),
                Close::AtBoundary if self.tx.at_boundary() => self.close = Close::Writing(0),
                // h2 writes the rest when it writes next.
                Close::AtBoundary => return Poll::Pending,
                Close::Writing(at) => {
                    match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.goaway[at..])) {
                        Ok(n) if n > 0 && at + n < self.goaway.len() => {
                            self.close = Close::Writing(at + n);
                        }
                        Ok(n) if n > 0 => self.close = Close::ShuttingDown,
                        _ => self.close = Close::Closed,
                    }
                }
                Close::ShuttingDown => {
                    let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    self.close = Close::Closed;
                }
            }
        }
    }

    fn closed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed: HTTP/2 header decode budget spent",
        )
    }

    fn closing(&self) -> bool {
        !matches!(self.close, Close::Open)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Budget<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closing() {
            let before = buf.filled().len();
            let last_stream = this.last_stream;
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            match this.scan(&buf.filled()[before..]) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(why) => {
                    // None of these bytes reach h2.
                    buf.set_filled(before);
                    this.last_stream = last_stream;
                    this.trip(&why);
                }
            }
        }
        ready!(this.poll_close(cx));
        Poll::Ready(Err(Self::closed_error()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Budget<T> {
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
        if this.closing() {
            if matches!(this.close, Close::AtBoundary) && !this.tx.at_boundary() {
                // The frame under way goes out whole, and nothing after it.
                let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
                    return Poll::Ready(Ok(0));
                };
                let n = first.len().min(this.tx.step());
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &first[..n]))?;
                this.tx.advance(&first[..n]);
                if this.tx.at_boundary() {
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(n));
            }
            ready!(this.poll_close(cx));
            return Poll::Ready(Err(Self::closed_error()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if !matches!(this.rx, Rx::Off) {
            let mut left = n;
            for b in bufs {
                let k = left.min(b.len());
                this.tx.advance(&b[..k]);
                left -= k;
                if left == 0 {
                    break;
                }
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing() {
            ready!(this.poll_close(cx));
            return Poll::Ready(Err(Self::closed_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing() {
            ready!(this.poll_close(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
