//! One blocking connection to the vault. Callers write their request
//! frame themselves (a few hundred bytes into a Unix socket: no handoff to
//! another thread, which would cost a wake-up per signature), under a lock
//! and with a send timeout so a vault that stops reading cannot hold them.
//! One dedicated reader thread fills each caller's slot when the answer
//! with its request id arrives; answers may come in any order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

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
    /// The write half and a reused encode buffer.
    writer: Mutex<(UnixStream, BytesMut)>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    stream: UnixStream,
}

/// A write that cannot finish in this long means the vault stopped
/// reading: the connection is dropped (a partial frame cannot be undone).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl Conn {
    /// Connects and starts the connection's reader thread.
    pub fn connect(path: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        writer.set_write_timeout(Some(SEND_TIMEOUT))?;
        let shared = Arc::new(Shared::default());

        let r_shared = shared.clone();
        let r_stream = stream.try_clone()?;
        std::thread::Builder::new()
            .name("vault-reader".into())
            .spawn(move || read_loop(reader, &r_shared, &r_stream))?;

        Ok(Conn {
            writer: Mutex::new((writer, BytesMut::with_capacity(1024))),
            shared,
            next_id: AtomicU32::new(1),
            stream,
        })
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Sends `make(id)` and returns its id and the receiver of its answer.
    /// `None` if the connection is dead.
    pub fn send(&self, make: impl FnOnce(u32) -> Frame) -> Option<(u32, mpsc::Receiver<Frame>)> {
        if self.is_dead() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        // Registered before the write: the answer may beat us back.
        lock(&self.shared.pending).insert(id, tx);
        let sent = {
            let mut w = lock(&self.writer);
            let (stream, buf) = &mut *w;
            buf.clear();
            // Oversized frames were refused before this point.
            make(id).encode(buf).is_ok() && stream.write_all(buf).is_ok()
        };
        if !sent {
            mark_dead(&self.shared, &self.stream);
        }
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
