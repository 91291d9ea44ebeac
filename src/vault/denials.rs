//! Refusals counted, not written one by one, past a few a second per
//! connection.
//!
//! Every refusal is answered and counted in the metrics, and audited; but
//! a caller that sends refused requests as fast as it can would otherwise
//! write a record for each (an ungranted uid made 225 MiB of audit log in
//! 3 s), turning the audit log into a way to fill the disk. So on each
//! connection the first [`AUDITED_PER_SECOND`] refusals of a second get
//! their own records, and the rest of that second's are written as one
//! record per operation with the number they stand for (`count`), when
//! the second is over or the connection ends. `audit verify` and anyone
//! reading the log sum `count`s; nothing is lost, only folded.
//!
//! Connections refused (the vault or a share of it full) are folded the
//! same way, vault-wide: a stranger reconnecting in a loop gets the same
//! few records a second.
//!
//! And a connection is not kept open for a flood: past [`CUT_PAST`]
//! refusals within a second it is cut ([`Denials::burst`]), and has to
//! connect again (a reconnection, peer credentials, admission) to be
//! refused more; its cuts are folded vault-wide like refused connections.

use std::time::{Duration, Instant};

use super::audit::{Audit, Event};
use super::policy::Caller;

/// Refusals a second, per connection, that get a record each.
pub const AUDITED_PER_SECOND: u32 = 4;

/// Refusals on one connection within a second past which it is cut. A
/// caller's mistakes (a key it lacks, a grant withdrawn) come at most at
/// its request rate, one per handshake or operation it means to make;
/// a vault connection of a busy proxy carries a few hundred handshakes a
/// second. Well past that, and past any one pipelined batch a client
/// sends while starting, a connection is refused because refusals are
/// what it sends. Being cut costs such a caller a reconnection, no more:
/// its granted requests on a new connection are served as before.
pub const CUT_PAST: u32 = 1000;

/// The span [`CUT_PAST`] is counted over, from a burst's first refusal.
const BURST_SPAN: Duration = Duration::from_secs(1);

/// One connection's (or the whole vault's) refusals this second.
pub struct Denials {
    /// Whose refusals these are; none: any caller's, vault-wide.
    caller: Option<Caller>,
    second: u64,
    audited: u32,
    /// Refusals past the allowance, by operation, not yet written.
    folded: Vec<(&'static str, u64)>,
    /// When the refusals [`Denials::burst`] counts began, and how many.
    burst_since: Option<Instant>,
    burst: u32,
}

impl Denials {
    /// `caller`'s refusals on one connection, or (`None`) everyone's.
    pub fn new(caller: Option<Caller>) -> Denials {
        Denials {
            caller,
            second: 0,
            audited: 0,
            folded: Vec::new(),
            burst_since: None,
            burst: 0,
        }
    }

    /// Audits `refusal` (a `denied` record for this connection's caller),
    /// or folds it into this second's count.
    pub fn record(&mut self, refusal: Event, audit: &Audit, now: u64) {
        self.tick(audit, now);
        let at = Instant::now();
        match self.burst_since {
            Some(since) if at.duration_since(since) < BURST_SPAN => {
                self.burst = self.burst.saturating_add(1);
            }
            _ => {
                self.burst_since = Some(at);
                self.burst = 1;
            }
        }
        if self.audited < AUDITED_PER_SECOND {
            self.audited += 1;
            audit.record(refusal);
            return;
        }
        match self.folded.iter_mut().find(|(op, _)| *op == refusal.op) {
            Some((_, n)) => *n += 1,
            None => self.folded.push((refusal.op, 1)),
        }
    }

    /// Whether more than [`CUT_PAST`] refusals came within a second: the
    /// connection is to be cut.
    pub fn burst(&self) -> bool {
        self.burst > CUT_PAST
    }

    /// Whether refusals are folded and not yet written.
    pub fn holding(&self) -> bool {
        !self.folded.is_empty()
    }

    /// Writes what a second that is over folded. Call it now and then
    /// (after each turn) and when the connection ends (with `u64::MAX`).
    pub fn tick(&mut self, audit: &Audit, now: u64) {
        if now == self.second {
            return;
        }
        let scope = if self.caller.is_some() {
            "on this connection"
        } else {
            "from any caller"
        };
        for (op, n) in self.folded.drain(..) {
            audit.record(Event {
                caller: self.caller.clone(),
                op,
                result: "denied",
                count: Some(n),
                error: Some(format!(
                    "{n} more denied {op} {scope} within one second, folded into this record"
                )),
                ..Event::default()
            });
        }
        self.second = now;
        self.audited = 0;
    }
}
