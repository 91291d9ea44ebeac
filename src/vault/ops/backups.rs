//! Backups: every granted key wrapped under a passphrase, and restored
//! all or nothing.

use super::{denied, now, Done, Named, OpError, Vault};
use crate::protocol::{ErrorCode, Op, Response};
use crate::vault::audit::Event;
use crate::vault::backup;
use crate::vault::policy::Caller;
use crate::vault::record::Key;

impl Vault {
    /// A backup of `only`, or of every key. Every key must be granted
    /// and readable: a backup that silently lacks a key is found out
    /// only when it is needed.
    pub(super) fn backup_export(
        &self,
        caller: &Caller,
        only: Option<&str>,
        passphrase: &[u8],
        salt: &[u8],
    ) -> Result<Done, OpError> {
        let keys = match only {
            Some(name) => vec![self.find(name)?],
            None => {
                let policy = self.policy.load();
                let (granted, refused): (Vec<_>, Vec<_>) = self
                    .store
                    .list()
                    .into_iter()
                    .partition(|(name, _)| policy.allows(caller, Op::BackupExport, Some(name)));
                if !refused.is_empty() {
                    let names: Vec<_> = refused.into_iter().map(|(n, _)| n).collect();
                    return Err(denied(
                        caller,
                        Op::BackupExport,
                        format!("backup-export on keys {names:?}; a backup holds every key"),
                    ));
                }
                granted
                    .into_iter()
                    .map(|(_, k)| k.map_err(OpError::from))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let wrap = self.backup_keys.wrapping(passphrase, salt)?;
        let blob = backup::export(&keys, &wrap, salt, now())?;
        let done = Done::new(Response::BackupEntry { blob });
        Ok(match (only, keys.first()) {
            (Some(name), Some(key)) => done.key(name, Some(key.record.primary)),
            _ => done,
        })
    }

    /// Restores a backup, all of it or nothing: the file is parsed,
    /// authenticated and every entry validated, every name checked
    /// against the grants and the keystore, before the first is written;
    /// then all are written at once ([`Keystore::put_all`](crate::vault::keystore::Keystore::put_all)).
    pub(super) fn backup_import(
        &self,
        caller: &Caller,
        blob: &[u8],
        passphrase: &[u8],
        skip_existing: bool,
    ) -> Result<Done, (OpError, Named)> {
        let plain = |e: backup::BackupError| (OpError::from(e), Named::default());
        let parsed = backup::parse(blob).map_err(plain)?;
        let wrap = self
            .backup_keys
            .wrapping(passphrase, &parsed.salt)
            .map_err(plain)?;
        let keys = backup::restore(&parsed, &wrap, self.store.subkeys(), now()).map_err(plain)?;
        let policy = self.policy.load();
        if let Some(refused) = keys
            .iter()
            .find(|k| !policy.allows(caller, Op::BackupImport, Some(k.name())))
        {
            let name = refused.name();
            return Err((
                denied(
                    caller,
                    Op::BackupImport,
                    format!("backup-import on key {name:?}; nothing was imported"),
                ),
                Named::key(name),
            ));
        }
        let _guard = self.lock();
        let (existing, fresh): (Vec<Key>, Vec<Key>) = keys
            .into_iter()
            .partition(|k| self.store.get(k.name()).is_some());
        let skipped: Vec<String> = existing.iter().map(|k| k.name().to_owned()).collect();
        if !skipped.is_empty() && !skip_existing {
            return Err((
                OpError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "keys {skipped:?} already exist; nothing was imported                          (skip-existing imports the others and leaves those as they are)"
                    ),
                ),
                Named::key(&skipped[0]),
            ));
        }
        let written = self
            .store
            .put_all(fresh, self.anchor())
            .map_err(|e| (OpError::from(e), Named::default()))?;
        self.audit.set_manifest(self.store.generation());
        for key in &written {
            self.publish(key);
            self.audit.record(Event {
                caller: Some(caller.clone()),
                op: Op::BackupImport.name(),
                key: Some(key.name().to_owned()),
                version: Some(key.record.primary),
                result: "ok",
                ..Event::default()
            });
        }
        let json = serde_json::json!({
            "imported": written.iter().map(|k| k.describe()).collect::<Vec<_>>(),
            "skipped": skipped,
        });
        Ok(Done::new(Response::Json {
            json: json.to_string(),
        }))
    }
}
