//! Resumption that a withdrawn key ends. Every session ticket and every
//! cached TLS 1.2 session carries the [`Epoch`] it was made in, and only
//! those of the current epoch resume. When a key the proxy serves is
//! disabled, scheduled for deletion or deleted, the proxy ends the epoch:
//! from then on no session made before resumes, clients fall back to a
//! full handshake, and a full handshake with the withdrawn key fails
//! because the vault refuses to sign with it.
//!
//! Why every site's sessions and not only the withdrawn certificate's:
//! rustls hands the ticketer and the session store only its encoding of
//! the session, which names the server name but not the certificate, and
//! decides on resumption after the certificate resolver has run, without
//! asking it. A session made with one certificate can resume under
//! another for the same name (TLS 1.3 does not tie the session to the
//! certificate's algorithm), so no narrower test is sound. The price is
//! one full handshake per returning client, once per withdrawal, which
//! is rare.
//!
//! The epoch sits inside what the ticket encrypts (and authenticates),
//! so a client cannot change it; in the session cache, beside the
//! session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};

const EPOCH_LEN: usize = 8;

/// The current resumption epoch, shared by the ticketer, the session
/// cache and whatever hears that a key was withdrawn. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Epoch(Arc<AtomicU64>);

impl Epoch {
    /// Ends the epoch: no ticket or cached session made so far resumes.
    pub fn end(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn current(&self) -> [u8; EPOCH_LEN] {
        self.0.load(Ordering::SeqCst).to_le_bytes()
    }

    /// `session` marked with the current epoch.
    fn mark(&self, session: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(EPOCH_LEN + session.len());
        out.extend_from_slice(&self.current());
        out.extend_from_slice(session);
        out
    }

    /// The session `marked` holds, if it was made in the current epoch.
    fn unmark(&self, mut marked: Vec<u8>) -> Option<Vec<u8>> {
        if marked.get(..EPOCH_LEN)? != self.current() {
            return None;
        }
        marked.drain(..EPOCH_LEN);
        Some(marked)
    }
}

/// A ticketer whose tickets resume in the epoch they were issued in only.
#[derive(Debug)]
pub struct Tickets {
    inner: Arc<dyn ProducesTickets>,
    epoch: Epoch,
}

impl Tickets {
    pub fn new(inner: Arc<dyn ProducesTickets>, epoch: Epoch) -> Tickets {
        Tickets { inner, epoch }
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&self.epoch.mark(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.epoch.unmark(self.inner.decrypt(cipher)?)
    }
}

/// A session cache whose sessions resume in the epoch they were stored in
/// only. Sessions of an ended epoch stay until the cache evicts them.
#[derive(Debug)]
pub struct Sessions {
    inner: Arc<dyn StoresServerSessions>,
    epoch: Epoch,
}

impl Sessions {
    pub fn new(inner: Arc<dyn StoresServerSessions>, epoch: Epoch) -> Sessions {
        Sessions { inner, epoch }
    }
}

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, self.epoch.mark(&value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.epoch.unmark(self.inner.get(key)?)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.epoch.unmark(self.inner.take(key)?)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ServerSessionMemoryCache;

    #[test]
    fn tickets_and_sessions_of_an_ended_epoch_do_not_resume() {
        let epoch = Epoch::default();
        let tickets = Tickets::new(
            super::super::tickets::rotating(std::time::Duration::from_secs(60)).unwrap(),
            epoch.clone(),
        );
        let sessions = Sessions::new(ServerSessionMemoryCache::new(8), epoch.clone());
        let ticket = tickets.encrypt(b"session").unwrap();
        assert_eq!(tickets.decrypt(&ticket).unwrap(), b"session");
        assert!(sessions.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(sessions.get(b"id").unwrap(), b"session");

        epoch.end();
        assert!(tickets.decrypt(&ticket).is_none());
        assert!(sessions.get(b"id").is_none());
        assert!(sessions.take(b"id").is_none());

        // What is made after the end resumes as before.
        let ticket = tickets.encrypt(b"later").unwrap();
        assert_eq!(tickets.decrypt(&ticket).unwrap(), b"later");
        assert!(sessions.put(b"id".to_vec(), b"later".to_vec()));
        assert_eq!(sessions.take(b"id").unwrap(), b"later");
        assert!(sessions.get(b"id").is_none());
    }
}
