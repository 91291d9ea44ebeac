//! Successful uses of a key folded into counted records while they wait
//! for the writer.
//!
//! Every full TLS handshake through the proxy is one `sign`, and each had
//! a record of its own (~250 bytes, ~280 bytes of log per handshake
//! measured with `openssl s_time -new`): four such clients made tens of
//! GiB a day. A successful use (`sign`, `sign-digest`, `verify`,
//! `public-key`, `encrypt`, `decrypt`, `generate-data-key`) queued while
//! an earlier one by the same caller (uid, gid, pid) with the same key
//! and version is still in the queue, not yet taken by the writer, is
//! added to that record's `count` instead of queued as a record of its
//! own.
//!
//! Why in the queue, and not per connection turn: the record still
//! exists, in the queue, before the answer is released (the count is
//! raised under the queue's lock, before [`super::Audit::record`]
//! returns), so "audited before answered" and fail-closed admission are
//! unchanged, and a crash loses what it lost before, the records not yet
//! written (at most one writer round, 10 ms). But one round holds every
//! caller's uses of its last 10 ms, while one turn of one connection
//! holds only what that connection had pipelined when it was read: the
//! proxy sends one signature per handshake as it comes, and with four
//! `openssl s_time -new` clients through it a vault turn answered 1.0
//! requests on average (6,000 turns, ~6,000 signatures), so folding per
//! turn would have saved nothing; folding in the queue made 282 bytes of
//! log per handshake 24.
//!
//! Folded only what cannot change an answer's meaning by where it sits:
//! successes of uses. Anything else queued (a key change, an admin op, an
//! error, a refusal, a notice) ends the folding, so a use after it gets a
//! new record after it; the log's order of uses against key changes is
//! the order they happened in. Refusals have their own scheme
//! ([`crate::vault::denials`]). At most [`OPEN`] records are open to
//! folding at once (a caller using many keys just gets more records),
//! so finding one is a short scan, not a map lookup per signature.

use super::Event;
use crate::vault::policy::{Caller, Remote};

/// Records open to folding at once.
const OPEN: usize = 16;

/// The operations whose successes are folded: the uses of a key, which
/// come at handshake rate. Key changes, admin operations, certificates:
/// each keeps its record.
const FOLDED: [&str; 7] = [
    "sign",
    "sign-digest",
    "verify",
    "public-key",
    "encrypt",
    "decrypt",
    "generate-data-key",
];

/// Which queued records later uses may still be folded into.
#[derive(Default)]
pub(super) struct Folds {
    /// Indices into the queue's events.
    open: Vec<usize>,
}

impl Folds {
    /// Folds `event` into an open record in `events` (true), or leaves
    /// it to the caller to push (false), then at index `events.len()`.
    pub fn fold(&mut self, events: &mut [Event], event: &Event) -> bool {
        if !foldable(event) {
            // What comes after this is not folded into what came before.
            self.open.clear();
            return false;
        }
        if let Some(&i) = self.open.iter().find(|&&i| same(&events[i], event)) {
            let e = &mut events[i];
            e.count = Some(e.count.unwrap_or(1).saturating_add(1));
            return true;
        }
        if self.open.len() < OPEN {
            self.open.push(events.len());
        }
        false
    }

    /// The writer took the queue: nothing in it is open any longer.
    pub fn taken(&mut self) {
        self.open.clear();
    }
}

fn foldable(e: &Event) -> bool {
    e.result == "ok"
        && e.caller.is_some()
        && e.error.is_none()
        && e.ca.is_none()
        && FOLDED.contains(&e.op)
}

/// Whether `b` is the same use as `a`, by the same caller.
fn same(a: &Event, b: &Event) -> bool {
    // A local caller is its uid, gid and pid (its groups are the
    // process's); a remote one its identity and address.
    #[derive(PartialEq)]
    enum Who<'a> {
        Local(u32, u32, Option<i32>),
        Remote(&'a Remote),
    }
    fn who(e: &Event) -> Option<Who<'_>> {
        e.caller.as_ref().map(|c| match c {
            Caller::Local(l) => Who::Local(l.uid, l.gid, l.pid),
            Caller::Remote(r) => Who::Remote(r),
        })
    }
    a.op == b.op && a.key == b.key && a.version == b.version && who(a) == who(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, pid: i32) -> Event {
        Event {
            caller: Some(Caller::new(7, 7, Some(pid))),
            op: "sign",
            key: Some(key.into()),
            version: Some(1),
            result: "ok",
            ..Event::default()
        }
    }

    fn queue(events: &mut Vec<Event>, folds: &mut Folds, e: Event) {
        if !folds.fold(events, &e) {
            events.push(e);
        }
    }

    #[test]
    fn uses_fold_by_caller_key_and_version_until_something_else_comes() {
        let (mut q, mut f) = (Vec::new(), Folds::default());
        for _ in 0..3 {
            queue(&mut q, &mut f, sign("a", 1));
            queue(&mut q, &mut f, sign("b", 1));
            queue(&mut q, &mut f, sign("a", 2));
        }
        let counts: Vec<_> = q.iter().map(|e| e.count).collect();
        assert_eq!(counts, [Some(3), Some(3), Some(3)]);
        // A refusal ends the folding: the next sign is a record after it.
        queue(
            &mut q,
            &mut f,
            Event {
                result: "denied",
                ..sign("a", 1)
            },
        );
        queue(&mut q, &mut f, sign("a", 1));
        assert_eq!(q.len(), 5);
        assert_eq!(q[4].count, None);
        // Taken by the writer: a new round of records.
        f.taken();
        let mut q = Vec::new();
        queue(&mut q, &mut f, sign("a", 1));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn key_changes_and_errors_are_never_folded() {
        let (mut q, mut f) = (Vec::new(), Folds::default());
        for _ in 0..2 {
            queue(
                &mut q,
                &mut f,
                Event {
                    op: "rotate",
                    ..sign("a", 1)
                },
            );
            queue(
                &mut q,
                &mut f,
                Event {
                    result: "error",
                    error: Some("bad scheme".into()),
                    ..sign("a", 1)
                },
            );
        }
        assert_eq!(q.len(), 4);
        assert!(q.iter().all(|e| e.count.is_none()));
    }
}
