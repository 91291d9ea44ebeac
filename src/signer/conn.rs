//! One blocking connection to the vault, driven by two dedicated OS
//! threads (a writer and a reader), so socket I/O never runs on the
//! proxy's tokio workers.
//!
//! Callers queue a frame and get a slot that the reader fills when the
//! answer with the same request id arrives; answers may come in any order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::BytesMut;

use crate::protocol::{frame, Frame};

/// Where the reader puts an answer. A dropped sender means the connection
/// died before answering.
pub type Slot = mpsc::SyncSender<Frame>;

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u32, Slot>>,
    dead: AtomicBool,
}

/// A live connection. Dropping the last handle closes the socket.
pub struct Conn {
    queue: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    stream: UnixStream,
}

impl Conn {
    /// Connects and starts the connection's two threads.
    pub fn connect(path: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        let reader = stream.try_clone()?;
        let mut writer = stream.try_clone()?;
        let shared = Arc::new(Shared::default());
        let (queue, rx) = mpsc::channel::<Frame>();

        let w_shared = shared.clone();
        let w_stream = stream.try_clone()?;
        std::thread::Builder::new()
            .name("vault-writer".into())
            .spawn(move || {
                let mut buf = BytesMut::with_capacity(16 * 1024);
                while let Ok(first) = rx.recv() {
                    // Everything queued meanwhile goes out in the same write:
                    // under load many signatures share one syscall.
                    let mut next = Some(first);
                    while let Some(f) = next {
                        // Oversized frames were refused before queueing.
                        let _ = f.encode(&mut buf);
                        next = rx.try_recv().ok();
                    }
                    if writer.write_all(&buf).is_err() {
                        break;
                    }
                    buf.clear();
                }
                mark_dead(&w_shared, &w_stream);
            })?;

        let r_shared = shared.clone();
        let r_stream = stream.try_clone()?;
        std::thread::Builder::new()
            .name("vault-reader".into())
            .spawn(move || read_loop(reader, &r_shared, &r_stream))?;

        Ok(Conn {
            queue,
            shared,
            next_id: AtomicU32::new(1),
            stream,
        })
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Queues `make(id)` and returns its id and the receiver of its answer.
    /// `None` if the connection is dead.
    pub fn send(&self, make: impl FnOnce(u32) -> Frame) -> Option<(u32, mpsc::Receiver<Frame>)> {
        if self.is_dead() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&self.shared.pending).insert(id, tx);
        let sent = self.queue.send(make(id)).is_ok();
        // The reader may have died and cleared the map just before the
        // insert: nobody would ever answer this slot.
        if self.is_dead() || !sent {
            lock(&self.shared.pending).remove(&id);
            return None;
        }
        Some((id, rx))
    }

    /// Forgets a request whose caller gave up, so a late answer is dropped.
    pub fn cancel(&self, id: u32) {
        lock(&self.shared.pending).remove(&id);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Wakes the reader (EOF) so both threads exit.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn read_loop(mut reader: UnixStream, shared: &Shared, stream: &UnixStream) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    'outer: loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match frame::decode(&mut buf) {
                Ok(Some(f)) => {
                    let slot = lock(&shared.pending).remove(&f.request_id);
                    if let Some(slot) = slot {
                        let _ = slot.try_send(f);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "vault sent an invalid frame; dropping the connection");
                    break 'outer;
                }
            }
        }
    }
    mark_dead(shared, stream);
}

fn mark_dead(shared: &Shared, stream: &UnixStream) {
    shared.dead.store(true, Ordering::Release);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // Dropping the slots wakes every waiter with "disconnected".
    lock(&shared.pending).clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders never panic mid-update; a poisoned map of waiters is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
