//! Fair turns on a connection worker: what one caller's flood of its own,
//! allowed work may cost everyone else.
//!
//! A connection runs the fast requests it has read right on its worker's
//! thread (see [`super::server`]), so a caller that pipelines thousands
//! of costly signatures would hold the thread for as long as they take.
//! Instead a connection works in turns: it runs requests for at most
//! [`TURN`] (always at least one), answers them, and goes to the back of
//! the worker's queue if it has more. And a turn is taken per uid: on
//! each worker at most one connection of a uid works at a time, waiting
//! in order, so a caller with many connections gets a turn as often as
//! one with a single connection. What another caller waits is then about
//! one turn per other busy uid on its worker, not the flood's backlog.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::policy::Party;

/// The longest a connection works before others on its worker get a
/// turn: far above one fast request (tens of microseconds), so a turn
/// still answers a whole batch of the usual ones in one write.
pub const TURN: Duration = Duration::from_millis(1);

thread_local! {
    /// Each uid's turn on this worker thread. Held weakly: an entry lives
    /// as long as that uid has a connection here.
    static TURNS: RefCell<HashMap<Party, Weak<Semaphore>>> = RefCell::new(HashMap::new());
}

/// A connection's place in its uid's turns on the worker it runs on.
pub struct Turns {
    uid: Arc<Semaphore>,
}

impl Turns {
    /// The turns of `uid` on the calling worker thread. Call it on the
    /// thread the connection is served on (its tasks stay there).
    pub fn of(uid: Party) -> Turns {
        TURNS.with(|turns| {
            let mut turns = turns.borrow_mut();
            if let Some(existing) = turns.get(&uid).and_then(Weak::upgrade) {
                return Turns { uid: existing };
            }
            // Forget uids that have left, so the map stays as small as the
            // set of uids connected here.
            turns.retain(|_, t| t.strong_count() > 0);
            let fresh = Arc::new(Semaphore::new(1));
            turns.insert(uid, Arc::downgrade(&fresh));
            Turns { uid: fresh }
        })
    }

    /// Waits for this uid's turn on this worker; the turn ends when the
    /// permit is dropped.
    pub async fn take(&self) -> Option<SemaphorePermit<'_>> {
        // Never closed while `self` holds it.
        self.uid.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_works_one_connection_at_a_time_per_worker() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let a1 = Turns::of(Party::Uid(1));
            let a2 = Turns::of(Party::Uid(1));
            let b = Turns::of(Party::Uid(2));
            let held = a1.take().await.expect("turn");
            // Another connection of uid 1 waits; uid 2 does not.
            assert!(a2.uid.try_acquire().is_err());
            assert!(b.take().await.is_some());
            drop(held);
            assert!(a2.take().await.is_some());
        });
    }

    #[test]
    fn a_uid_that_left_is_forgotten() {
        let first = Turns::of(Party::Uid(7));
        drop(first);
        let _other = Turns::of(Party::Uid(8));
        TURNS.with(|t| assert!(!t.borrow().contains_key(&Party::Uid(7))));
    }
}
