//! The keys themselves: listing, describing, creating, importing,
//! rotating, enabling, disabling and deleting.

use super::{check_name, now, Done, OpError, Vault};
use crate::protocol::{ErrorCode, KeyType, Op, Response};
use crate::vault::keys::Material;
use crate::vault::policy::Caller;
use crate::vault::record::{Key, KeyState, Origin};

impl Vault {
    pub(super) fn describe_json(key: &Key) -> Response {
        Response::Json {
            json: key.describe().to_string(),
        }
    }

    pub(super) fn list(&self, caller: &Caller) -> Done {
        let items: Vec<serde_json::Value> = self
            .store
            .list()
            .into_iter()
            .filter(|(name, _)| self.policy.load().allows(caller, Op::List, Some(name)))
            .map(|(name, k)| match k {
                Ok(k) => serde_json::json!({
                    "name": name,
                    "type": k.key_type().name(),
                    "state": k.record.state.name(),
                    "primary": k.record.primary,
                    "versions": k.record.versions.len(),
                }),
                Err(e) => {
                    serde_json::json!({"name": name, "state": "corrupt", "error": e.to_string()})
                }
            })
            .collect();
        Done::new(Response::Json {
            json: serde_json::Value::Array(items).to_string(),
        })
    }

    pub(super) fn describe(&self, name: &str) -> Result<Done, OpError> {
        let key = self.find(name)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(key.record.primary)))
    }

    pub(super) fn create(
        &self,
        name: &str,
        key_type: KeyType,
        rotate_every: Option<u64>,
    ) -> Result<Done, OpError> {
        check_name(name)?;
        if self.store.get(name).is_some() {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("key {name:?} already exists"),
            ));
        }
        // Generate before taking the lock: RSA-4096 can take seconds.
        let material = Material::generate(key_type)?;
        let _guard = self.lock();
        if self.store.get(name).is_some() {
            return Err(OpError::new(
                ErrorCode::AlreadyExists,
                format!("key {name:?} already exists"),
            ));
        }
        let key = Key::new(
            self.store.subkeys(),
            name,
            material,
            Origin::Generated,
            rotate_every,
            now(),
        )?;
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(1)))
    }

    pub(super) fn import(
        &self,
        name: &str,
        pem: &[u8],
        new_version: bool,
    ) -> Result<Done, OpError> {
        check_name(name)?;
        let material = Material::import_pem(pem)?;
        let _guard = self.lock();
        let key = match (self.store.get(name), new_version) {
            (None, false) => Key::new(
                self.store.subkeys(),
                name,
                material,
                Origin::Imported,
                None,
                now(),
            )?,
            (Some(_), false) => {
                return Err(OpError::new(
                    ErrorCode::AlreadyExists,
                    format!("key {name:?} already exists (use --new-version to add a version)"),
                ))
            }
            (None, true) => {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no key named {name:?}"),
                ))
            }
            (Some(existing), true) => {
                let existing = existing?;
                if existing.key_type() != material.key_type() {
                    return Err(OpError::new(
                        ErrorCode::InvalidInput,
                        format!(
                            "key {name:?} is {}, the imported key is {}",
                            existing.key_type(),
                            material.key_type()
                        ),
                    ));
                }
                let mut key = (*existing).clone();
                Self::start_grace(&mut key, self.settings.load().sign_grace.as_secs());
                key.add_version(self.store.subkeys(), material, Origin::Imported, now())?;
                key
            }
        };
        let version = key.record.primary;
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(version)))
    }

    /// Makes a new version primary. `scheduled` rotations skip keys that
    /// are not enabled.
    pub(super) fn rotate(&self, name: &str, scheduled: bool) -> Result<Done, OpError> {
        let current = if scheduled {
            self.usable(name)?
        } else {
            self.find(name)?
        };
        if current.record.state == KeyState::PendingDeletion {
            return Err(OpError::new(
                ErrorCode::PendingDeletion,
                format!("key {name:?} is pending deletion"),
            ));
        }
        let material = Material::generate(current.key_type())?;
        let _guard = self.lock();
        let mut key = (*self.find(name)?).clone();
        if scheduled && !key.rotation_due(now()) {
            // Another node rotated it first (a shared store).
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!("key {name:?} was rotated meanwhile; not due again yet"),
            ));
        }
        Self::start_grace(&mut key, self.settings.load().sign_grace.as_secs());
        let version = key.add_version(self.store.subkeys(), material, Origin::Generated, now())?;
        let key = self.put_as(key, scheduled)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(version)))
    }

    /// The primary version is about to be replaced: let it keep signing
    /// for `grace` seconds, for handshakes that already chose its
    /// certificate.
    pub(super) fn start_grace(key: &mut Key, grace: u64) {
        if !key.key_type().is_signing() {
            return;
        }
        let primary = key.record.primary;
        if let Some(v) = key.record.version_mut(primary) {
            v.retire_at = Some(now() + grace);
        }
    }

    pub(super) fn modify(
        &self,
        name: &str,
        f: impl FnOnce(&mut Key) -> Result<(), OpError>,
    ) -> Result<Done, OpError> {
        let _guard = self.lock();
        let mut key = (*self.find(name)?).clone();
        f(&mut key)?;
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, None))
    }

    pub(super) fn set_state(&self, name: &str, state: KeyState) -> Result<Done, OpError> {
        self.modify(name, |key| {
            if key.record.state == KeyState::PendingDeletion {
                return Err(OpError::new(
                    ErrorCode::PendingDeletion,
                    format!("key {name:?} is pending deletion; cancel the deletion first"),
                ));
            }
            key.record.state = state;
            Ok(())
        })
    }

    pub(super) fn schedule_deletion(
        &self,
        name: &str,
        wait_secs: Option<u64>,
    ) -> Result<Done, OpError> {
        let settings = self.settings.load();
        let min = settings.min_deletion_wait.as_secs();
        let wait = wait_secs.unwrap_or(settings.default_deletion_wait.as_secs());
        if wait < min {
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!("waiting period of {wait}s is shorter than the minimum of {min}s"),
            ));
        }
        self.modify(name, |key| {
            key.record.state = KeyState::PendingDeletion;
            key.record.deletion_at = Some(now() + wait);
            Ok(())
        })
    }

    pub(super) fn cancel_deletion(&self, name: &str) -> Result<Done, OpError> {
        self.modify(name, |key| {
            if key.record.state != KeyState::PendingDeletion {
                return Err(OpError::new(
                    ErrorCode::InvalidInput,
                    format!("key {name:?} is not pending deletion"),
                ));
            }
            // As KMS: a key whose deletion is cancelled comes back disabled.
            key.record.state = KeyState::Disabled;
            key.record.deletion_at = None;
            Ok(())
        })
    }
}
