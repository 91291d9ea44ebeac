//! Changes under a prefix, in revision order, from a given revision.
//!
//! A task in the client's runtime drives the gRPC stream. When the
//! stream breaks (the member died, lost its leader, or a ping went
//! unanswered) the task opens another on the next member from the
//! revision after the last event it passed on, so a broken connection
//! neither loses nor repeats an event. Only two things end a watch:
//! compaction past the revision it needs ([`WatchEvent::Compacted`]) and
//! no member accepting it before the deadline ([`WatchEvent::Broken`]).
//! Either way the caller lists again and watches from that listing's
//! revision + 1.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::endpoints::{Needs, OVERALL_TIMEOUT};
use super::error::EtcdError;
use super::{Etcd, Revision, Shared};

/// Events a watcher has not taken yet; past this the stream waits.
const BACKLOG: usize = 1024;
/// Before opening a stream again: a member that cancels every watch it
/// is given (it lost its leader) must not be asked in a tight loop.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum WatchEvent {
    Put {
        key: String,
        value: Vec<u8>,
        mod_revision: Revision,
    },
    Delete {
        key: String,
        mod_revision: Revision,
    },
    /// The revisions from the one asked for up to `compact_revision` are
    /// gone: list again and watch from the listing's revision + 1. The
    /// watch has ended.
    Compacted {
        compact_revision: Revision,
    },
    /// No member would carry the watch (quorum lost, all down), or a key
    /// was not ours to read; the watch has ended. `next_revision` is where
    /// it stopped: a re-watch from there misses nothing unless compacted.
    Broken {
        next_revision: Revision,
        error: EtcdError,
    },
}

/// The receiving end of [`Etcd::watch`]; dropping it ends the task.
pub struct Watch {
    events: mpsc::Receiver<WatchEvent>,
    runtime: tokio::runtime::Handle,
}

impl Watch {
    /// The next event; `None` once the watch has ended and every event
    /// was taken.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.events.recv().await
    }

    /// `recv` for a thread outside any runtime: `None` also after
    /// `timeout` with no event.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<WatchEvent> {
        let events = &mut self.events;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, events.recv()).await.ok()? })
    }
}

impl Etcd {
    /// Watches every key under `sub_prefix` from `from_revision` on
    /// (events at that revision included).
    pub fn watch(&self, sub_prefix: &str, from_revision: Revision) -> Watch {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let shared = self.shared.clone();
        let key = shared.full(sub_prefix);
        self.runtime().spawn(drive(shared, key, from_revision, tx));
        Watch {
            events: rx,
            runtime: self.runtime().clone(),
        }
    }
}

async fn drive(
    shared: std::sync::Arc<Shared>,
    key: String,
    from: Revision,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut next = from;
    loop {
        let op = format!("watch {key} from revision {next}");
        let deadline = Instant::now() + OVERALL_TIMEOUT;
        let opened = shared
            .endpoints
            .call(&op, Needs::Leader, deadline, |mut c| {
                let (key, options) = (
                    key.clone(),
                    WatchOptions::new().with_prefix().with_start_revision(next),
                );
                async move { c.watch(key, Some(options)).await }
            })
            .await;
        let mut stream = match opened {
            Ok(a) => a.value,
            Err(error) => {
                let _ = tx
                    .send(WatchEvent::Broken {
                        next_revision: next,
                        error,
                    })
                    .await;
                return;
            }
        };
        match follow(&shared, &mut stream, &mut next, &tx).await {
            Ended::Reopen => tokio::time::sleep(REOPEN_PAUSE).await,
            Ended::Done => return,
        }
    }
}

enum Ended {
    /// The stream broke or was cancelled: open another from `next`.
    Reopen,
    /// Compacted, a bad key, or nobody is listening.
    Done,
}

async fn follow(
    shared: &Shared,
    stream: &mut WatchStream,
    next: &mut Revision,
    tx: &mpsc::Sender<WatchEvent>,
) -> Ended {
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = tx.closed() => return Ended::Done,
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ended::Reopen,
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch stream broke; reopening");
                return Ended::Reopen;
            }
        };
        if resp.compact_revision() > 0 {
            let compact_revision = resp.compact_revision();
            let _ = tx.send(WatchEvent::Compacted { compact_revision }).await;
            return Ended::Done;
        }
        if resp.canceled() {
            // Cancelled by the member itself, as when it loses its leader.
            return Ended::Reopen;
        }
        match pass_on(shared, &resp, next, tx).await {
            Ok(true) => {}
            Ok(false) => return Ended::Done,
            Err(error) => {
                let _ = tx
                    .send(WatchEvent::Broken {
                        next_revision: *next,
                        error,
                    })
                    .await;
                return Ended::Done;
            }
        }
    }
}

/// Sends the events of one response, then advances `next` past them: a
/// transaction's writes share a revision and come in one response, so a
/// stream that breaks between responses never splits one.
async fn pass_on(
    shared: &Shared,
    resp: &WatchResponse,
    next: &mut Revision,
    tx: &mpsc::Sender<WatchEvent>,
) -> Result<bool, EtcdError> {
    let mut last = None;
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let entry = shared.entry(kv)?;
        let mod_revision = kv.mod_revision();
        let out = match event.event_type() {
            EventType::Put => WatchEvent::Put {
                key: entry.key,
                value: entry.value,
                mod_revision,
            },
            EventType::Delete => WatchEvent::Delete {
                key: entry.key,
                mod_revision,
            },
        };
        if tx.send(out).await.is_err() {
            return Ok(false);
        }
        last = Some(mod_revision);
    }
    if let Some(r) = last {
        *next = r + 1;
    }
    Ok(true)
}
