//! What keeps the vault in shape: audit verify and rotation, scheduled
//! rotations and deletions, disk space, refused connections.

use super::{now, Done, OpError, Vault};
use crate::protocol::{ErrorCode, KeyEvent, Response};
use crate::sync::Locked;
use crate::vault::audit::Event;
use crate::vault::record::KeyState;

/// How often a moving audit log's end is anchored in a shared store.
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Vault {
    pub(super) fn audit_verify(&self) -> Result<Done, OpError> {
        self.audit.flush();
        if let Some(why) = self.audit.failure() {
            return Err(OpError::new(
                ErrorCode::Storage,
                format!("the audit log cannot be written ({why})"),
            ));
        }
        let report = crate::vault::audit::verify(
            &self.settings.load().state_dir,
            &self.store.subkeys().audit_mac,
        )
        .map_err(|e| OpError::new(ErrorCode::CorruptKey, e.to_string()))?;
        if let Ok(Some(anchor)) = self.store.audit_anchor() {
            let cut = report.last < anchor.seq
                || (report.last == anchor.seq && report.last_mac != anchor.mac);
            if cut {
                return Err(OpError::new(
                    ErrorCode::CorruptKey,
                    format!(
                        "the audit log ends at record {} (MAC {}), but the shared store holds it at record {} (MAC {}): it was cut back or replaced",
                        report.last, report.last_mac, anchor.seq, anchor.mac
                    ),
                ));
            }
        }
        Ok(Done::new(Response::Json {
            json: serde_json::json!({
                "ok": true,
                "records": report.records,
                "segments": report.segments,
                "first": report.first,
                "last": report.last,
                "last_mac": report.last_mac,
                "events": report.events,
            })
            .to_string(),
        }))
    }

    pub(super) fn audit_rotate(&self) -> Result<Done, OpError> {
        let closed = self.audit.rotate().map_err(|e| {
            let code = match *e {
                crate::vault::audit::AuditError::NothingToRotate { .. } => ErrorCode::InvalidInput,
                _ => ErrorCode::Storage,
            };
            OpError::new(code, e.to_string())
        })?;
        Ok(Done::new(Response::Json {
            json: serde_json::json!({
                "segment": closed.segment,
                "first": closed.first,
                "last": closed.last,
                "deleted": closed.deleted,
            })
            .to_string(),
        }))
    }

    /// Deletes keys whose waiting period is over and rotates keys whose
    /// `rotate_every` has passed. Called periodically by the server.
    /// Warns (log and audit) when the state dir's filesystem runs low,
    /// and when it has room again.
    pub(super) fn watch_space(&self) {
        use crate::vault::space::Change;
        let dir = self.settings.load().state_dir.clone();
        let mib = |b: u64| b / (1 << 20);
        match self.space.check(&dir) {
            Some(Change::Low { free, total }) => {
                let why = format!(
                    "{} MiB of {} MiB free on the state dir's filesystem ({}): key changes stop when it is full, then every operation",
                    mib(free),
                    mib(total),
                    dir.display()
                );
                tracing::warn!("{why}");
                self.audit.record(Event::system("disk-low", Some(why)));
            }
            Some(Change::Recovered { free, total }) => {
                tracing::info!(
                    free_mib = mib(free),
                    total_mib = mib(total),
                    "the state dir's filesystem has room again"
                );
                self.audit.record(Event::system("disk-recovered", None));
            }
            None => {}
        }
    }

    /// Anchors the audit log's synced end in a shared store every few
    /// seconds it has moved, besides at every change.
    fn anchor_now_and_then(&self) {
        let mut last = self.anchored.locked();
        let synced = self.audit.synced();
        if synced.seq != last.0 && last.1.elapsed() >= ANCHOR_EVERY {
            self.store.put_audit_anchor(&synced);
            *last = (synced.seq, std::time::Instant::now());
        }
    }

    /// Audits a refused connection, or folds it into this second's count.
    pub fn refused_connection(&self, refusal: Event) {
        self.refused.locked().record(refusal, &self.audit, now());
    }

    pub fn housekeeping(&self) {
        self.watch_space();
        self.anchor_now_and_then();
        self.refused.locked().tick(&self.audit, now());
        if self.audit.failure().is_some() {
            return; // deletions and rotations wait until they can be audited
        }
        if !self.store.schedules() {
            return; // another node of the cluster runs them
        }
        let now = now();
        for (name, key) in self.store.list() {
            let Ok(key) = key else { continue };
            let r = &key.record;
            if r.state == KeyState::PendingDeletion && r.deletion_at.is_some_and(|t| t <= now) {
                let _guard = self.lock();
                let result = self.store.remove(&name, self.anchor(), true);
                self.audit.set_manifest(self.store.generation());
                let _ = self.events.send(KeyEvent {
                    key: name.clone(),
                    primary: 0,
                    json: "null".into(),
                });
                let error = result.as_ref().err().map(|e| e.to_string());
                self.audit.record(Event {
                    key: Some(name.clone()),
                    ..Event::system("delete", error)
                });
                tracing::info!(key = %name, "deleted key after its waiting period");
            } else if r.state == KeyState::Enabled && key.rotation_due(now) {
                let result = self.rotate(&name, true);
                let (version, error) = match &result {
                    Ok(d) => (d.version, None),
                    Err(e) => (None, Some(e.message.clone())),
                };
                self.audit.record(Event {
                    key: Some(name.clone()),
                    version,
                    ..Event::system("scheduled-rotate", error)
                });
            }
        }
    }
}
