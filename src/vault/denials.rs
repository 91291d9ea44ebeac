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

use super::audit::{Audit, Event};
use super::policy::Caller;

/// Refusals a second, per connection, that get a record each.
pub const AUDITED_PER_SECOND: u32 = 4;

/// One connection's (or the whole vault's) refusals this second.
pub struct Denials {
    /// Whose refusals these are; none: any caller's, vault-wide.
    caller: Option<Caller>,
    second: u64,
    audited: u32,
    /// Refusals past the allowance, by operation, not yet written.
    folded: Vec<(&'static str, u64)>,
}

impl Denials {
    /// `caller`'s refusals on one connection, or (`None`) everyone's.
    pub fn new(caller: Option<Caller>) -> Denials {
        Denials {
            caller,
            second: 0,
            audited: 0,
            folded: Vec::new(),
        }
    }

    /// Audits `refusal` (a `denied` record for this connection's caller),
    /// or folds it into this second's count.
    pub fn record(&mut self, refusal: Event, audit: &Audit, now: u64) {
        self.tick(audit, now);
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
                    "{n} more refusals of {op} {scope} within one second, folded into this record"
                )),
                ..Event::default()
            });
        }
        self.second = now;
        self.audited = 0;
    }
}
