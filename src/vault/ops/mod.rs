//! What each request does: the vault's operations over the keystore,
//! checked against the policy and written to the audit log.
//!
//! This module owns the [`Vault`] and the path every request takes
//! (admission, authorisation, dispatch, audit record, metrics); the
//! operations live by family:
//! - [`crypto`](mod@crypto): sign, verify, public key, encrypt, decrypt,
//!   data keys: the use of keys.
//! - [`lifecycle`](mod@lifecycle): list, describe, create, import, rotate,
//!   state changes and deletion: the keys themselves.
//! - [`certs`](mod@certs): certificates bound to key versions, CSRs,
//!   issuing by a CA key.
//! - [`backups`](mod@backups): wrapped export and all-or-nothing import.
//! - [`upkeep`](mod@upkeep): audit verify and rotate, scheduled rotation
//!   and deletion, disk space, refused connections.

mod backups;
mod certs;
mod crypto;
mod lifecycle;
mod upkeep;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::audit::{Audit, Event};
use super::backup;
use super::denials::Denials;
use super::keys::{KeyError, Material};
use super::keystore::{Keystore, StoreError};
use super::policy::{Caller, Policy};
use super::record::{Key, KeyState, RecordError, MAX_NAME_LEN};
use crate::config::vault::{CaRight, VaultSettings};
use crate::protocol::{ErrorCode, KeyEvent, Op, Request, Response};
use crate::sync::Locked;

/// A refused or failed operation: the code the client sees and a message
/// naming the key or value involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
    /// The key whose change lost a race with another node's: read it
    /// again and decide again.
    lost_race: Option<String>,
}

impl OpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            lost_race: None,
        }
    }
}

/// How many times a change that lost a race to another node is decided
/// again on the newer record before the caller is told.
const RACE_RETRIES: u32 = 8;

impl From<KeyError> for OpError {
    fn from(e: KeyError) -> Self {
        let code = match e {
            KeyError::SchemeMismatch { .. }
            | KeyError::NotSigning(_)
            | KeyError::NoDigestSigning(_)
            | KeyError::NotSymmetric(_) => ErrorCode::Unsupported,
            KeyError::Import(_) | KeyError::DigestLength { .. } | KeyError::VersionLimit { .. } => {
                ErrorCode::InvalidInput
            }
            KeyError::Open => ErrorCode::InvalidCiphertext,
            KeyError::Generate(_) | KeyError::Material(_) | KeyError::Sign => ErrorCode::Internal,
        };
        OpError::new(code, e.to_string())
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        let lost_race = match &e {
            StoreError::Conflict { name } => Some(name.clone()),
            _ => None,
        };
        OpError {
            lost_race,
            ..OpError::new(ErrorCode::Storage, format!("keystore not changed: {e}"))
        }
    }
}

impl From<RecordError> for OpError {
    fn from(e: RecordError) -> Self {
        OpError::new(ErrorCode::CorruptKey, e.to_string())
    }
}

impl From<backup::BackupError> for OpError {
    fn from(e: backup::BackupError) -> Self {
        use backup::BackupError as B;
        let code = match e {
            B::Passphrase
            | B::Count { .. }
            | B::Moved { .. }
            | B::Altered(_)
            | B::Header
            | B::Tag => ErrorCode::InvalidCiphertext,
            B::Key(k) => return k.into(),
            B::Stretch(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidInput,
        };
        OpError::new(code, e.to_string())
    }
}

/// What a handler hands back for the reply and the audit record.
struct Done {
    response: Response,
    key: Option<String>,
    version: Option<u32>,
    /// The CA key (and version) that signed a certificate issued for `key`.
    ca: Option<(String, u32)>,
}

impl Done {
    fn new(response: Response) -> Done {
        Done {
            response,
            key: None,
            version: None,
            ca: None,
        }
    }

    fn key(mut self, key: &str, version: Option<u32>) -> Done {
        self.key = Some(key.to_owned());
        self.version = version;
        self
    }
}

/// What the audit record of a failed request names that the request
/// itself does not: the key a ciphertext or backup entry names, the CA
/// key a certificate was to be issued by (use of it is what was refused).
#[derive(Debug, Default)]
struct Named {
    key: Option<String>,
    ca: Option<String>,
}

impl Named {
    fn key(name: &str) -> Named {
        Named {
            key: Some(name.to_owned()),
            ca: None,
        }
    }

    fn ca(name: &str) -> Named {
        Named {
            key: None,
            ca: Some(name.to_owned()),
        }
    }
}

/// A refusal: counted by operation, and saying what grant was missing.
fn denied(caller: &Caller, op: Op, missing: String) -> OpError {
    metrics::counter!("vaultgate_vault_denied_total", "op" => op.name()).increment(1);
    OpError::new(
        ErrorCode::Denied,
        format!("{} has no grant for {missing}", caller.party()),
    )
}

pub struct Vault {
    /// Replaced whole on reload (SIGHUP); what cannot change without a
    /// restart (socket, state dir, master key) is kept by the reloader.
    settings: ArcSwap<VaultSettings>,
    store: Keystore,
    policy: ArcSwap<Policy>,
    audit: Audit,
    /// Serialises keystore changes: read, modify, write, publish.
    write_lock: Mutex<()>,
    backup_keys: backup::KeyCache,
    space: super::space::SpaceWatch,
    /// Connections refused, vault-wide: folded past a few a second.
    refused: Mutex<Denials>,
    /// Key changes, for subscribers (proxies swapping certificates).
    events: tokio::sync::broadcast::Sender<KeyEvent>,
    /// The audit record last anchored in a shared store, and when.
    anchored: Mutex<(u64, Instant)>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Operations that touch the disk or burn CPU for long (RSA generation,
/// argon2); the server runs them off the connection's task.
pub fn is_slow(op: Op) -> bool {
    matches!(
        op,
        Op::Create
            | Op::Import
            | Op::Rotate
            | Op::Enable
            | Op::Disable
            | Op::ScheduleDeletion
            | Op::CancelDeletion
            | Op::BackupExport
            | Op::BackupImport
            | Op::AuditVerify
            | Op::AuditRotate
            | Op::CertInstall
            | Op::CertCsr
            | Op::CertIssue
            | Op::CertSign
    )
}

/// Operations that stretch a backup passphrase (argon2id): the server
/// runs one at a time, vault-wide.
pub fn needs_derivation(op: Op) -> bool {
    matches!(op, Op::BackupExport | Op::BackupImport)
}

/// Counts a request and records its duration. The handles are looked up
/// once per thread, operation and result, not per request: a lookup
/// builds the labelled key (a `Vec`) and hashes it, twice per signature.
/// A thread caches at its first request, which comes after `vault::run`
/// installs the recorder, so no thread keeps a handle of the no-op one.
fn count_request(op: Op, result: &'static str, took: std::time::Duration) {
    struct Handles {
        op: Op,
        result: &'static str,
        requests: metrics::Counter,
        duration: metrics::Histogram,
    }
    thread_local! {
        static KNOWN: std::cell::RefCell<Vec<Handles>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    KNOWN.with_borrow_mut(|known| {
        let i = match known.iter().position(|h| h.op == op && h.result == result) {
            Some(i) => i,
            None => {
                known.push(Handles {
                    op,
                    result,
                    requests: metrics::counter!("vaultgate_vault_requests_total", "op" => op.name(), "result" => result),
                    duration: metrics::histogram!("vaultgate_vault_request_duration_seconds", "op" => op.name(), "result" => result),
                });
                known.len() - 1
            }
        };
        known[i].requests.increment(1);
        known[i].duration.record(took.as_secs_f64());
    });
}

/// Checked on every request before anything else, so a long name reaches
/// neither the policy nor the audit log.
fn check_length(name: &str) -> Result<(), OpError> {
    if name.len() > MAX_NAME_LEN {
        return Err(OpError::new(
            ErrorCode::InvalidInput,
            format!(
                "a key name of {} bytes: names are 1-{MAX_NAME_LEN} bytes",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), OpError> {
    if !super::record::valid_name(name) {
        return Err(OpError::new(
            ErrorCode::InvalidInput,
            format!("invalid key name {name:?}: 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'"),
        ));
    }
    Ok(())
}

impl Vault {
    pub fn new(settings: VaultSettings, store: Keystore, policy: Policy, audit: Audit) -> Vault {
        Vault {
            settings: ArcSwap::from_pointee(settings),
            store,
            policy: ArcSwap::from_pointee(policy),
            audit,
            write_lock: Mutex::new(()),
            backup_keys: backup::KeyCache::default(),
            space: super::space::SpaceWatch::default(),
            refused: Mutex::new(Denials::new(None)),
            events: tokio::sync::broadcast::channel(1024).0,
            anchored: Mutex::new((0, Instant::now())),
        }
    }

    /// A receiver of every key change from now on. Subscribe before
    /// reading current state, so nothing falls between.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<KeyEvent> {
        self.events.subscribe()
    }

    /// Whether any grant names `caller` (see [`Policy::names`]).
    pub fn knows(&self, caller: &Caller) -> bool {
        self.policy.load().names(caller)
    }

    /// Whether `caller` may be told about changes to `key`.
    pub fn may_watch(&self, caller: &Caller, key: &str) -> bool {
        key == "*" || self.policy.load().allows(caller, Op::Subscribe, Some(key))
    }

    fn publish(&self, key: &Key) {
        let _ = self.events.send(KeyEvent {
            key: key.name().to_owned(),
            primary: key.record.primary,
            json: key.describe().to_string(),
        });
    }

    /// Where the audit log ends, synced, for the manifest to anchor: a
    /// keystore change is rare, so it waits for a sync, and a log put
    /// back from before the previous change ends short of the anchor.
    fn anchor(&self) -> super::audit::Anchor {
        self.audit.flush();
        let anchor = self.audit.synced();
        self.store.put_audit_anchor(&anchor);
        anchor
    }

    fn put(&self, key: Key) -> Result<Arc<Key>, OpError> {
        self.put_as(key, false)
    }

    /// [`Vault::put`]; `scheduled`: a change the scheduler makes, fenced
    /// in a cluster against another node having been elected since.
    fn put_as(&self, key: Key, scheduled: bool) -> Result<Arc<Key>, OpError> {
        let key = self.store.put(key, self.anchor(), scheduled)?;
        self.audit.set_manifest(self.store.generation());
        self.publish(&key);
        Ok(key)
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub fn settings(&self) -> Arc<VaultSettings> {
        self.settings.load_full()
    }

    /// Applies reloaded settings: grants, deletion waits, signing grace.
    /// Returns what was ignored because it needs a restart.
    pub fn reload(&self, new: VaultSettings) -> Vec<&'static str> {
        let old = self.settings.load();
        let mut ignored = Vec::new();
        if new.socket != old.socket
            || new.socket_mode != old.socket_mode
            || new.socket_group != old.socket_group
        {
            ignored.push("socket");
        }
        if new.state_dir != old.state_dir {
            ignored.push("state_dir");
        }
        if new.master_key != old.master_key {
            ignored.push("master_key");
        }
        if new.metrics_listen != old.metrics_listen {
            ignored.push("metrics_listen");
        }
        if new.syslog != old.syslog {
            ignored.push("syslog");
        }
        if new.user != old.user {
            ignored.push("user");
        }
        if new.store != old.store {
            ignored.push("store");
        }
        let kept = VaultSettings {
            socket: old.socket.clone(),
            socket_mode: old.socket_mode,
            socket_group: old.socket_group,
            state_dir: old.state_dir.clone(),
            master_key: old.master_key.clone(),
            metrics_listen: old.metrics_listen,
            syslog: old.syslog,
            user: old.user.clone(),
            store: old.store.clone(),
            ..new
        };
        self.audit
            .set_rotation(kept.audit_rotate_size, kept.audit_keep_segments);
        self.policy.store(Arc::new(Policy::new(
            &kept.grants,
            nix::unistd::geteuid().as_raw(),
        )));
        self.settings.store(Arc::new(kept));
        ignored
    }

    /// Runs one request for `caller`: policy, operation, audit, metrics.
    pub fn handle(&self, caller: &Caller, req: &Request) -> Response {
        let (response, event) = self.answer(caller, req);
        if let Some(e) = event {
            self.audit.record(e);
        }
        response
    }

    /// [`Vault::handle`], with a refusal's record left to the connection's
    /// [`Denials`], which folds a flood of them into counts.
    pub fn handle_counting_denials(
        &self,
        caller: &Caller,
        req: &Request,
        denials: &mut Denials,
    ) -> Response {
        let (response, event) = self.answer(caller, req);
        match event {
            Some(e) if e.result == "denied" => denials.record(e, &self.audit, now()),
            Some(e) => self.audit.record(e),
            None => {}
        }
        response
    }

    /// Runs one request: its answer and the record to audit (none for a
    /// ping).
    fn answer(&self, caller: &Caller, req: &Request) -> (Response, Option<Event>) {
        let op = req.op();
        let started = Instant::now();
        // Fail closed: nothing is done that could not be audited. Ping,
        // which does nothing and is not audited, still answers.
        if op != Op::Ping {
            if let Err(why) = self.audit.admit() {
                metrics::counter!("vaultgate_vault_requests_total", "op" => op.name(), "result" => "unaudited")
                    .increment(1);
                return (
                    Response::error(
                        ErrorCode::Storage,
                        format!("refused: {why}; the vault does nothing it cannot audit"),
                    ),
                    None,
                );
            }
        }
        let outcome = self.dispatch_deciding_again(caller, req);
        let (response, key, version, ca, result, error) = match outcome {
            Ok(done) => (
                done.response,
                done.key,
                done.version,
                done.ca.map(|(name, v)| (name, Some(v))),
                "ok",
                None,
            ),
            Err((e, named)) => {
                let result = if e.code == ErrorCode::Denied {
                    "denied"
                } else {
                    "error"
                };
                let key = named.key.or_else(|| {
                    req.key()
                        .filter(|k| k.len() <= MAX_NAME_LEN)
                        .map(str::to_owned)
                });
                (
                    Response::error(e.code, e.message.clone()),
                    key,
                    None,
                    named.ca.map(|name| (name, None)),
                    result,
                    Some(e.message),
                )
            }
        };
        count_request(op, result, started.elapsed());
        let event = (op != Op::Ping).then(|| Event {
            caller: Some(caller.clone()),
            op: op.name(),
            key,
            version,
            ca_version: ca.as_ref().and_then(|(_, v)| *v),
            ca: ca.map(|(name, _)| name),
            result,
            error,
            ..Event::default()
        });
        (response, event)
    }

    /// [`Vault::dispatch`], run again on the newer record when its change
    /// lost a race with another node's (a shared store): so two nodes
    /// rotating one key at once both succeed, one version each.
    fn dispatch_deciding_again(
        &self,
        caller: &Caller,
        req: &Request,
    ) -> Result<Done, (OpError, Named)> {
        let mut tries = 0;
        loop {
            let outcome = self.dispatch(caller, req);
            let name = match &outcome {
                Err((e, _)) if tries < RACE_RETRIES => e.lost_race.clone(),
                _ => None,
            };
            let Some(name) = name else {
                return outcome;
            };
            tries += 1;
            metrics::counter!("vaultgate_vault_store_conflicts_total").increment(1);
            let refreshed = {
                let _guard = self.lock();
                self.store.refresh(&name)
            };
            match refreshed {
                Ok(applied) => self.take_applied(applied),
                Err(e) => return Err((e.into(), Named::key(&name))),
            }
        }
    }

    /// Makes changes other nodes made known here: subscribers told,
    /// refusals audited.
    pub fn take_applied(&self, applied: Vec<super::keystore::Applied>) {
        use super::keystore::Applied;
        if applied.is_empty() {
            return;
        }
        for a in applied {
            match a {
                Applied::Changed(key) => self.publish(&key),
                Applied::Deleted(name) => {
                    let _ = self.events.send(KeyEvent {
                        key: name,
                        primary: 0,
                        json: "null".into(),
                    });
                }
                Applied::Refused(alarm, name) => self.audit.alarm(&alarm, Some(&name)),
            }
        }
        self.audit.set_manifest(self.store.generation());
    }

    /// The changes other nodes make to a shared store; none for a local
    /// store.
    pub fn store_changes(&self) -> Option<Box<dyn super::keystore::Follow>> {
        self.store.follow()
    }

    /// Applies `follow`'s changes for as long as the process runs.
    pub fn follow_store(&self, mut follow: Box<dyn super::keystore::Follow>) {
        loop {
            if let Some(change) = follow.next(std::time::Duration::from_secs(1)) {
                // Under the write lock: a change of this node's reads a
                // key, modifies it and writes it expecting the revision
                // it read, which must not move in between.
                let applied = {
                    let _guard = self.lock();
                    self.store.apply(change)
                };
                self.take_applied(applied);
            }
        }
    }

    /// Errors carry the key they concern when the request did not name it
    /// (decrypt, backup import).
    #[allow(clippy::too_many_lines, reason = "one arm per request")]
    fn dispatch(&self, caller: &Caller, req: &Request) -> Result<Done, (OpError, Named)> {
        let op = req.op();
        let plain_err = |e| (e, Named::default());
        if let Some(key) = req.key() {
            check_length(key).map_err(plain_err)?;
            self.authorize(caller, op, Some(key)).map_err(plain_err)?;
        } else if op != Op::Decrypt {
            // Some grant of the op first; the key a ciphertext or backup
            // entry names is checked once it is read. So a caller with no
            // `backup-import` grant never has a passphrase stretched, and
            // one with no `list` grant is told so rather than shown an
            // empty list.
            self.authorize(caller, op, None).map_err(plain_err)?;
        }
        let plain = |r: Result<Done, OpError>| r.map_err(plain_err);
        match req {
            Request::Ping { payload } => Ok(Done::new(Response::Pong {
                payload: payload.clone(),
            })),
            Request::Sign {
                key,
                version,
                scheme,
                message,
            } => plain(self.sign(key, *version, *scheme, message, Material::sign)),
            Request::SignDigest {
                key,
                version,
                scheme,
                digest,
            } => plain(self.sign(key, *version, *scheme, digest, Material::sign_digest)),
            Request::Verify {
                key,
                version,
                scheme,
                message,
                signature,
            } => plain(self.verify(key, *version, *scheme, message, signature)),
            Request::PublicKey { key, version } => plain(self.public_key(key, *version)),
            Request::Encrypt {
                key,
                plaintext,
                context,
            } => plain(self.encrypt(key, plaintext, context)),
            Request::Decrypt {
                ciphertext,
                context,
            } => self.decrypt(caller, ciphertext, context),
            Request::GenerateDataKey {
                key,
                length,
                context,
            } => plain(self.generate_data_key(key, *length, context)),
            Request::Create {
                key,
                key_type,
                rotate_every,
            } => plain(self.create(key, *key_type, *rotate_every)),
            Request::Import {
                key,
                pem,
                new_version,
            } => plain(self.import(key, pem, *new_version)),
            Request::List => plain(Ok(self.list(caller))),
            Request::Describe { key } => plain(self.describe(key)),
            Request::Rotate { key } => plain(self.rotate(key, false)),
            Request::Enable { key } => plain(self.set_state(key, KeyState::Enabled)),
            Request::Disable { key } => plain(self.set_state(key, KeyState::Disabled)),
            Request::ScheduleDeletion { key, wait_secs } => {
                plain(self.schedule_deletion(key, *wait_secs))
            }
            Request::CancelDeletion { key } => plain(self.cancel_deletion(key)),
            Request::BackupExport {
                key,
                passphrase,
                salt,
            } => plain(self.backup_export(caller, key.as_deref(), passphrase, salt)),
            Request::BackupImport {
                blob,
                passphrase,
                skip_existing,
            } => self.backup_import(caller, blob, passphrase, *skip_existing),
            Request::AuditVerify => plain(self.audit_verify()),
            Request::AuditRotate => plain(self.audit_rotate()),
            Request::Subscribe => plain(Ok(Done::new(Response::Json {
                json: serde_json::json!({"subscribed": true}).to_string(),
            }))),
            Request::CertInstall {
                key,
                version,
                chain_pem,
            } => plain(self.cert_install(key, *version, chain_pem)),
            Request::CertGet { key, version } => plain(self.cert_get(key, *version)),
            Request::CertCsr {
                key,
                version,
                params,
            } => plain(self.cert_csr(key, *version, params)),
            Request::CertIssue {
                key,
                version,
                params,
            } => self.cert_issue(caller, key, *version, params),
            Request::CertSign {
                key,
                version,
                params,
            } => plain(self.cert_sign(caller, key, *version, params)),
        }
    }

    fn authorize(&self, caller: &Caller, op: Op, key: Option<&str>) -> Result<(), OpError> {
        if self.policy.load().allows(caller, op, key) {
            return Ok(());
        }
        Err(denied(
            caller,
            op,
            match key {
                Some(k) => format!("{op} on key {k:?}"),
                None => op.to_string(),
            },
        ))
    }

    /// Whether `caller` may have CA key `ca` sign a certificate of the
    /// kind `right` names (`cert-issue` is checked on the subject alone).
    fn authorize_ca(
        &self,
        caller: &Caller,
        op: Op,
        right: CaRight,
        ca: &str,
    ) -> Result<(), OpError> {
        if self.policy.load().allows_ca(caller, right, ca) {
            return Ok(());
        }
        Err(denied(caller, op, format!("{right} with CA key {ca:?}")))
    }

    /// The key, present and parsed (any state).
    fn find(&self, name: &str) -> Result<Arc<Key>, OpError> {
        match self.store.get(name) {
            None => Err(OpError::new(
                ErrorCode::NotFound,
                format!("no key named {name:?}"),
            )),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(k)) => Ok(k),
        }
    }

    /// The key, if it may be used now.
    fn usable(&self, name: &str) -> Result<Arc<Key>, OpError> {
        let key = self.find(name)?;
        match key.record.state {
            KeyState::Enabled => Ok(key),
            KeyState::Disabled => Err(OpError::new(
                ErrorCode::Disabled,
                format!("key {name:?} is disabled"),
            )),
            KeyState::PendingDeletion => Err(OpError::new(
                ErrorCode::PendingDeletion,
                format!("key {name:?} is pending deletion"),
            )),
        }
    }

    fn version(key: &Key, version: Option<u32>) -> Result<(u32, &Arc<Material>), OpError> {
        key.material(version).ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!(
                    "key {:?} has no version {}",
                    key.name(),
                    version.unwrap_or(0)
                ),
            )
        })
    }

    /// Serialises changes to the keystore on this node, and the applying
    /// of other nodes' changes with them.
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.locked()
    }
}
