//! Which connections the vault serves, and how much of its (locked)
//! memory their requests in progress may hold.
//!
//! Room is kept for the callers the grants name: callers no grant names
//! can only be refused, so together they get a small share of the
//! connections, and none may keep one idle. A connection is refused at
//! once, with an error frame, rather than left in the kernel's backlog: a
//! proxy reconnecting after a restart is told, not hung.
//!
//! Frames up to [`SMALL_FRAME`] are read as they come. A larger one waits
//! for its size out of a vault-wide budget before its body is buffered, so
//! connections each announcing a 1 MiB frame and sending it slowly hold at
//! most [`LARGE_FRAME_BUDGET`] between them (and each only for the read
//! timeout).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::policy::{Caller, Party};
use crate::sync::Locked;

pub use crate::protocol::MAX_CONNECTIONS_PER_UID;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Of those, how many the callers no grant names may hold together.
pub const MAX_UNKNOWN_CONNECTIONS: usize = 64;
/// Frames with a body up to this size need no share of the budget.
pub const SMALL_FRAME: usize = 16 * 1024;
/// Bytes of larger frames being received at once, vault-wide: 32 frames
/// of the largest size.
pub const LARGE_FRAME_BUDGET: usize = 32 << 20;

/// Why a connection was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// All [`MAX_CONNECTIONS`] are in use.
    Full,
    /// The callers no grant names hold all of their share.
    UnknownFull,
    /// This uid (or certificate identity) holds
    /// [`MAX_CONNECTIONS_PER_UID`] already.
    PerUid(Party),
}

impl Refusal {
    /// The `reason` label of `vaultgate_vault_disconnects_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full => "vault-full",
            Refusal::UnknownFull => "no-grant-full",
            Refusal::PerUid(_) => "too-many-connections",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full => write!(
                f,
                "the vault serves {MAX_CONNECTIONS} connections already, the most it may"
            ),
            Refusal::UnknownFull => write!(
                f,
                "callers no grant names hold {MAX_UNKNOWN_CONNECTIONS} connections already, the most they may together"
            ),
            Refusal::PerUid(party) => {
                let one = match party {
                    Party::Uid(_) => "uid",
                    Party::Cert(_) => "identity",
                };
                write!(
                    f,
                    "{party} already holds {MAX_CONNECTIONS_PER_UID} connections, the most one {one} may"
                )
            }
        }
    }
}

/// The vault-wide counts connections are admitted against.
pub struct Admission {
    total: Arc<Semaphore>,
    unknown: Arc<Semaphore>,
    per_uid: Arc<PerUid>,
    large_frames: Arc<Semaphore>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            total: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            unknown: Arc::new(Semaphore::new(MAX_UNKNOWN_CONNECTIONS)),
            per_uid: Arc::new(PerUid::default()),
            large_frames: Arc::new(Semaphore::new(LARGE_FRAME_BUDGET)),
        }
    }
}

impl Admission {
    /// Counts a connection from `caller`, whom a grant names if `known`,
    /// unless that would pass one of the limits.
    pub fn admit(&self, caller: &Caller, known: bool) -> Result<Admitted, Refusal> {
        let unknown = if known {
            None
        } else {
            Some(
                self.unknown
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refusal::UnknownFull)?,
            )
        };
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        let party = caller.party();
        let uid = self
            .per_uid
            .enter(party.clone())
            .ok_or(Refusal::PerUid(party))?;
        Ok(Admitted {
            known,
            _total: total,
            _unknown: unknown,
            _uid: uid,
            large_frames: self.large_frames.clone(),
        })
    }
}

/// A served connection's place; given back on drop.
pub struct Admitted {
    /// Whether a grant named the caller when it connected.
    pub known: bool,
    _total: OwnedSemaphorePermit,
    _unknown: Option<OwnedSemaphorePermit>,
    _uid: UidSlot,
    large_frames: Arc<Semaphore>,
}

impl Admitted {
    /// Waits for room to buffer a frame with a body of `len` bytes (more
    /// than [`SMALL_FRAME`]); the room is given back when the permit goes.
    pub async fn room_for(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len.min(LARGE_FRAME_BUDGET)).ok()?;
        self.large_frames.clone().acquire_many_owned(n).await.ok()
    }
}

/// Open connections by uid (or certificate identity).
#[derive(Default)]
struct PerUid(std::sync::Mutex<HashMap<Party, usize>>);

impl PerUid {
    /// Counts a connection for `uid`, unless it already holds the most.
    fn enter(self: &Arc<Self>, uid: Party) -> Option<UidSlot> {
        let mut m = self.0.locked();
        let n = m.entry(uid.clone()).or_default();
        if *n >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            counts: self.clone(),
            uid,
        })
    }
}

/// One counted connection; uncounted on drop.
struct UidSlot {
    counts: Arc<PerUid>,
    uid: Party,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.locked();
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_no_grant_names_share_a_small_part_and_leave_room_for_the_rest() {
        let a = Admission::default();
        let stranger = |uid| Caller::new(uid, uid, None);
        let mut held: Vec<Admitted> = (0..MAX_UNKNOWN_CONNECTIONS as u32)
            .map(|i| a.admit(&stranger(5000 + i % 5), false).unwrap())
            .collect();
        assert_eq!(
            a.admit(&stranger(6000), false).err(),
            Some(Refusal::UnknownFull)
        );
        // a granted caller still gets in, up to its own uid's limit
        let proxy = Caller::new(33, 33, None);
        for _ in 0..MAX_CONNECTIONS_PER_UID {
            held.push(a.admit(&proxy, true).unwrap());
        }
        assert_eq!(
            a.admit(&proxy, true).err(),
            Some(Refusal::PerUid(Party::Uid(33)))
        );
        // a refused connection took nothing
        held.truncate(MAX_UNKNOWN_CONNECTIONS - 1);
        assert!(a.admit(&stranger(6000), false).is_ok());
        assert!(a.admit(&proxy, true).is_ok());
    }

    #[test]
    fn the_whole_vault_has_a_limit_too() {
        let a = Admission::default();
        let held: Vec<Admitted> = (0..MAX_CONNECTIONS as u32)
            .map(|i| a.admit(&Caller::new(i / 200, 0, None), true).unwrap())
            .collect();
        assert_eq!(
            a.admit(&Caller::new(9999, 0, None), true).err(),
            Some(Refusal::Full)
        );
        drop(held);
        assert!(a.admit(&Caller::new(9999, 0, None), true).is_ok());
    }
}
