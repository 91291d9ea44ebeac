//! The vault client: one Unix-socket connection, many requests in flight,
//! answers matched by request id. Used by the admin CLI, `vaultgate run`
//! and the proxy's signer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::protocol::{
    frame, ErrorCode, Frame, KeyEvent, KeyType, Op, ProtocolError, Request, Response, OP_EVENT,
};
use crate::sync::Locked;

/// What to do about a socket that cannot be reached, by its error kind.
fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            " (the socket is for the vault's user and its socket_group: run as a member of that \
             group, e.g. `usermod -aG GROUP USER` and log in again, or as a user the vault's \
             grants name)"
        }
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            " (is the vault running? it listens where its config's [vault] socket says; \
             --socket, --config or VAULTGATE_SOCKET name another)"
        }
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the vault at {path}: {source}{hint}", hint = connect_hint(source))]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vault connection closed")]
    Closed,
    #[error("vault did not answer {op} within {timeout:?}")]
    Timeout { op: Op, timeout: Duration },
    #[error("bad answer from the vault: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("request too large: {0}")]
    TooLarge(ProtocolError),
    #[error("{code}: {message}")]
    Vault { code: ErrorCode, message: String },
    #[error("vault answered {op} with an unexpected response")]
    Unexpected { op: Op },
}

impl ClientError {
    /// The vault's error code, when the vault itself refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Vault { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Pending = Mutex<HashMap<u32, oneshot::Sender<Frame>>>;
type Subscriptions = Mutex<HashMap<u32, mpsc::UnboundedSender<KeyEvent>>>;

/// A multiplexed connection to the vault. Cheap to clone; all clones share
/// the connection.
#[derive(Clone)]
pub struct VaultClient {
    tx: mpsc::UnboundedSender<Frame>,
    pending: Arc<Pending>,
    subscriptions: Arc<Subscriptions>,
    next_id: Arc<AtomicU32>,
    timeout: Option<Duration>,
    /// Set by the reader when the connection ends, before it drops every
    /// waiter; a call registered after that sees it and does not wait.
    closed: Arc<AtomicBool>,
}

impl VaultClient {
    /// Connects to the vault socket at `path`. Must be called inside a
    /// tokio runtime: it spawns the connection's reader and writer tasks.
    pub async fn connect(path: &Path) -> Result<VaultClient, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let pending: Arc<Pending> = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();

        // Writer: everything queued goes out in one write. A request wakes
        // this task straight after the caller that queued it (tokio runs a
        // task just woken next), so without the yield every request of a
        // burst went out in its own `sendto`: ~3.5 µs each, as much CPU as
        // the rest of the client's work per signature. Yielding once lets
        // the callers already runnable queue theirs first; the vault then
        // gets the burst in one write, at the cost of one scheduler pass
        // for a lone request.
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(8192);
            while let Some(frame) = rx.recv().await {
                tokio::task::yield_now().await;
                let mut next = Some(frame);
                while let Some(f) = next {
                    if f.encode(&mut buf).is_err() {
                        // to_frame sizes were checked in `call`; skip anything else
                    }
                    next = rx.try_recv().ok();
                }
                if write.write_all(&buf).await.is_err() {
                    break;
                }
                buf.clear();
            }
        });

        // Reader: hand each answer to whoever waits for its id.
        let reader_pending = pending.clone();
        let subscriptions: Arc<Subscriptions> = Arc::default();
        let reader_subs = subscriptions.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            let mut frames = Frames::new(read);
            while let Some(frame) = frames.next().await {
                if frame.opcode == OP_EVENT {
                    let mut subs = reader_subs.locked();
                    if let (Some(tx), Ok(event)) =
                        (subs.get(&frame.request_id), KeyEvent::from_frame(&frame))
                    {
                        if tx.send(event).is_err() {
                            subs.remove(&frame.request_id);
                        }
                    }
                    continue;
                }
                let waiter = lock(&reader_pending).remove(&frame.request_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            // Dropping the senders wakes every waiter with `Closed` and
            // ends every subscription's stream.
            reader_closed.store(true, Ordering::SeqCst);
            lock(&reader_pending).clear();
            reader_subs.locked().clear();
        });

        Ok(VaultClient {
            tx,
            pending,
            subscriptions,
            next_id: Arc::new(AtomicU32::new(1)),
            timeout: None,
            closed,
        })
    }

    /// Returns a client that gives up on any answer after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> VaultClient {
        self.timeout = Some(timeout);
        self
    }

    /// Whether the connection's reader has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.closed.load(Ordering::SeqCst)
    }

    /// Sends one request and waits for its answer. A vault error becomes
    /// [`ClientError::Vault`].
    pub async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.call_with_id(req, id).await
    }

    /// Subscribes to key changes: rotations, state changes, certificates
    /// bound, deletions. The stream ends when the connection does.
    pub async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<KeyEvent>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscriptions.locked().insert(id, tx);
        match self.call_with_id(&Request::Subscribe, id).await {
            Ok(_) => Ok(rx),
            Err(e) => {
                self.subscriptions.locked().remove(&id);
                Err(e)
            }
        }
    }

    /// The certificate chain (PEM) bound to a key version, and the version.
    pub async fn cert_get(
        &self,
        key: &str,
        version: Option<u32>,
    ) -> Result<(u32, String), ClientError> {
        let req = Request::CertGet {
            key: key.to_owned(),
            version,
        };
        match self.call(&req).await? {
            Response::Certificate { version, chain_pem } => Ok((version, chain_pem)),
            _ => Err(ClientError::Unexpected { op: Op::CertGet }),
        }
    }

    async fn call_with_id(&self, req: &Request, id: u32) -> Result<Response, ClientError> {
        let op = req.op();
        let frame = req.to_frame(id);
        if frame.body.len() > crate::protocol::MAX_BODY {
            return Err(ClientError::TooLarge(ProtocolError::FrameTooLarge(
                frame.body.len(),
            )));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        // The reader may have ended (and dropped every waiter) before this
        // one was registered: then nobody would ever answer or drop it.
        if self.closed.load(Ordering::SeqCst) || self.tx.send(frame).is_err() {
            lock(&self.pending).remove(&id);
            return Err(ClientError::Closed);
        }
        let answer = match self.timeout {
            None => rx.await.map_err(|_| ClientError::Closed)?,
            Some(timeout) => match tokio::time::timeout(timeout, rx).await {
                Ok(r) => r.map_err(|_| ClientError::Closed)?,
                Err(_) => {
                    lock(&self.pending).remove(&id);
                    return Err(ClientError::Timeout { op, timeout });
                }
            },
        };
        match Response::from_frame(op, &answer)? {
            Response::Error { code, message } => Err(ClientError::Vault { code, message }),
            resp => Ok(resp),
        }
    }

    pub async fn ping(&self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        match self
            .call(&Request::Ping {
                payload: payload.to_vec(),
            })
            .await?
        {
            Response::Pong { payload } => Ok(payload),
            _ => Err(ClientError::Unexpected { op: Op::Ping }),
        }
    }

    /// Signs `message` with the TLS signature scheme `scheme`; returns the
    /// key version that signed and the signature.
    pub async fn sign(
        &self,
        key: &str,
        version: Option<u32>,
        scheme: u16,
        message: &[u8],
    ) -> Result<(u32, Vec<u8>), ClientError> {
        let req = Request::Sign {
            key: key.to_owned(),
            version,
            scheme,
            message: message.to_vec(),
        };
        match self.call(&req).await? {
            Response::Signature { version, signature } => Ok((version, signature)),
            _ => Err(ClientError::Unexpected { op: Op::Sign }),
        }
    }

    pub async fn verify(
        &self,
        key: &str,
        version: Option<u32>,
        scheme: u16,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, ClientError> {
        let req = Request::Verify {
            key: key.to_owned(),
            version,
            scheme,
            message: message.to_vec(),
            signature: signature.to_vec(),
        };
        match self.call(&req).await? {
            Response::Verified { valid } => Ok(valid),
            _ => Err(ClientError::Unexpected { op: Op::Verify }),
        }
    }

    /// The key's type, the version answered, and its SubjectPublicKeyInfo (DER).
    pub async fn public_key(
        &self,
        key: &str,
        version: Option<u32>,
    ) -> Result<(KeyType, u32, Vec<u8>), ClientError> {
        let req = Request::PublicKey {
            key: key.to_owned(),
            version,
        };
        match self.call(&req).await? {
            Response::PublicKey {
                key_type,
                version,
                spki_der,
            } => Ok((key_type, version, spki_der)),
            _ => Err(ClientError::Unexpected { op: Op::PublicKey }),
        }
    }

    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let req = Request::Encrypt {
            key: key.to_owned(),
            plaintext: Zeroizing::new(plaintext.to_vec()),
            context: context.to_vec(),
        };
        match self.call(&req).await? {
            Response::Ciphertext { blob, .. } => Ok(blob),
            _ => Err(ClientError::Unexpected { op: Op::Encrypt }),
        }
    }

    /// Decrypts a blob from [`encrypt`](Self::encrypt); returns the key
    /// name and version that had sealed it, and the plaintext.
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &[u8],
    ) -> Result<(String, u32, Zeroizing<Vec<u8>>), ClientError> {
        let req = Request::Decrypt {
            ciphertext: ciphertext.to_vec(),
            context: context.to_vec(),
        };
        match self.call(&req).await? {
            Response::Plaintext {
                key,
                version,
                plaintext,
            } => Ok((key, version, plaintext)),
            _ => Err(ClientError::Unexpected { op: Op::Decrypt }),
        }
    }

    /// KMS GenerateDataKey: a fresh random key, in the clear and wrapped.
    pub async fn generate_data_key(
        &self,
        key: &str,
        length: u32,
        context: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), ClientError> {
        let req = Request::GenerateDataKey {
            key: key.to_owned(),
            length,
            context: context.to_vec(),
        };
        match self.call(&req).await? {
            Response::DataKey {
                plaintext,
                ciphertext,
                ..
            } => Ok((plaintext, ciphertext)),
            _ => Err(ClientError::Unexpected {
                op: Op::GenerateDataKey,
            }),
        }
    }

    /// Sends a metadata request (create, list, describe, rotate, …) and
    /// returns the vault's JSON answer.
    pub async fn json(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let op = req.op();
        match self.call(req).await? {
            Response::Json { json } => {
                serde_json::from_str(&json).map_err(|_| ClientError::Unexpected { op })
            }
            _ => Err(ClientError::Unexpected { op }),
        }
    }
}

/// Answer frames off the read half, decoded from reads of up to
/// [`READ_CHUNK`]: a batch of answers arrives in one `recv` (a codec's
/// 8 KiB buffer took two or three for 64 signatures).
struct Frames {
    read: tokio::net::unix::OwnedReadHalf,
    buf: BytesMut,
}

const READ_CHUNK: usize = 64 * 1024;

impl Frames {
    fn new(read: tokio::net::unix::OwnedReadHalf) -> Frames {
        Frames {
            read,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The next frame; `None` once the connection ends or carries
    /// something that is not a frame.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match frame::decode(&mut self.buf) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(_) => return None,
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Frame>>> {
    // A panic while holding this lock leaves only a map of waiters; keep going.
    p.locked()
}

/// What [`follow_key_events`] reports to its caller.
#[derive(Debug)]
pub enum Followed {
    /// Subscribed; `again` after a lost connection, when events may have
    /// been missed and the caller should catch up.
    Subscribed {
        again: bool,
    },
    Event(KeyEvent),
    /// The subscription ended (the vault went away); reconnecting.
    Lost,
}

/// Follows the vault's key events for good: subscribes on the first of
/// `sockets` that accepts, hands each subscription and event to `on`,
/// and after the vault goes away reconnects with a backoff from 100 ms
/// doubling up to `max_backoff`. A refused subscription (no grant) is
/// logged once, naming `why` the caller wanted the events.
pub async fn follow_key_events<F, Fut>(
    sockets: Vec<PathBuf>,
    max_backoff: Duration,
    why: &str,
    mut on: F,
) where
    F: FnMut(Followed) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let first_backoff = Duration::from_millis(100).min(max_backoff);
    let mut backoff = first_backoff;
    let mut warned = false;
    let mut subscribed_before = false;
    loop {
        for socket in &sockets {
            let Ok(client) = VaultClient::connect(socket).await else {
                continue;
            };
            let mut events = match client.subscribe().await {
                Ok(e) => e,
                Err(e) => {
                    if !warned {
                        tracing::warn!(socket = %socket.display(), error = %e, "cannot follow the vault's key events (grant this uid \"subscribe\", or \"use\"): {why}");
                        warned = true;
                    }
                    continue;
                }
            };
            backoff = first_backoff;
            on(Followed::Subscribed {
                again: subscribed_before,
            })
            .await;
            subscribed_before = true;
            while let Some(event) = events.recv().await {
                on(Followed::Event(event)).await;
            }
            on(Followed::Lost).await;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}
