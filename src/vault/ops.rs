//! What each request does: the vault's operations over the keystore,
//! checked against the policy and written to the audit log.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::audit::{Audit, Event};
use super::backup;
use super::denials::Denials;
use super::envelope;
use super::issue;
use super::keys::{self, KeyError, Material};
use super::keystore::{Keystore, StoreError};
use super::policy::{Caller, Policy};
use super::record::{Key, KeyState, Origin, RecordError, MAX_NAME_LEN};
use crate::config::vault::{CaRight, VaultSettings};
use crate::protocol::{ErrorCode, KeyEvent, KeyType, Op, Request, Response};
use crate::sync::Locked;

/// `Material::sign` or `Material::sign_digest`.
type SignWith = fn(&Material, u16, &[u8]) -> Result<Vec<u8>, KeyError>;

/// Largest plaintext `encrypt` takes (KMS takes 4 KiB; we allow 64 KiB).
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// Largest data key `generate-data-key` makes.
pub const MAX_DATA_KEY: u32 = 1024;

/// A refused or failed operation: the code the client sees and a message
/// naming the key or value involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
        }
    }
}

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
        OpError::new(ErrorCode::Storage, format!("keystore not changed: {e}"))
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
        format!("uid {} has no grant for {missing}", caller.uid),
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

/// Parameters of `cert-issue`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueParams {
    ca: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    common_name: Option<String>,
    days: Option<u32>,
    #[serde(default)]
    is_ca: bool,
    path_len: Option<u8>,
}

fn issue_error(e: issue::IssueError) -> OpError {
    let code = match e {
        issue::IssueError::NotSigning(_) => ErrorCode::Unsupported,
        issue::IssueError::Rcgen(_) => ErrorCode::Internal,
        _ => ErrorCode::InvalidInput,
    };
    OpError::new(code, e.to_string())
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
        self.audit.synced()
    }

    fn put(&self, key: Key) -> Result<Arc<Key>, OpError> {
        let key = self.store.put(key, self.anchor())?;
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
        let kept = VaultSettings {
            socket: old.socket.clone(),
            socket_mode: old.socket_mode,
            socket_group: old.socket_group,
            state_dir: old.state_dir.clone(),
            master_key: old.master_key.clone(),
            metrics_listen: old.metrics_listen,
            syslog: old.syslog,
            user: old.user.clone(),
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
        let outcome = self.dispatch(caller, req);
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

    /// Errors carry the key they concern when the request did not name it
    /// (decrypt, backup import).
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
    fn authorize_ca(&self, caller: &Caller, right: CaRight, ca: &str) -> Result<(), OpError> {
        if self.policy.load().allows_ca(caller, right, ca) {
            return Ok(());
        }
        Err(denied(
            caller,
            Op::CertIssue,
            format!("{right} with CA key {ca:?}"),
        ))
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

    /// `sign` and `sign-digest`: the same key, state, version and grace
    /// checks, then `how` signs the message or the digest.
    fn sign(
        &self,
        name: &str,
        version: Option<u32>,
        scheme: u16,
        input: &[u8],
        how: SignWith,
    ) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        if v != key.record.primary {
            let retire_at = key
                .record
                .versions
                .iter()
                .find(|r| r.version == v)
                .and_then(|r| r.retire_at);
            if retire_at.is_some_and(|t| t <= now()) {
                return Err(OpError::new(
                    ErrorCode::VersionRetired,
                    format!("key {name:?} version {v} is retired and no longer signs"),
                ));
            }
        }
        let signature = how(m, scheme, input)?;
        Ok(Done::new(Response::Signature {
            version: v,
            signature,
        })
        .key(name, Some(v)))
    }

    fn verify(
        &self,
        name: &str,
        version: Option<u32>,
        scheme: u16,
        message: &[u8],
        signature: &[u8],
    ) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        let valid = m.verify(scheme, message, signature)?;
        Ok(Done::new(Response::Verified { valid }).key(name, Some(v)))
    }

    fn public_key(&self, name: &str, version: Option<u32>) -> Result<Done, OpError> {
        let key = self.usable(name)?;
        if !key.key_type().is_signing() {
            return Err(KeyError::NotSigning(key.key_type()).into());
        }
        let (v, m) = Self::version(&key, version)?;
        Ok(Done::new(Response::PublicKey {
            key_type: key.key_type(),
            version: v,
            spki_der: m.spki().to_vec(),
        })
        .key(name, Some(v)))
    }

    fn encrypt(&self, name: &str, plaintext: &[u8], context: &[u8]) -> Result<Done, OpError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "plaintext of {} bytes exceeds {MAX_PLAINTEXT}",
                    plaintext.len()
                ),
            ));
        }
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, None)?;
        let header = envelope::header(name, v);
        let sealed = m.seal(&envelope::aad(&header, context), plaintext)?;
        let mut blob = header;
        blob.extend_from_slice(&sealed);
        Ok(Done::new(Response::Ciphertext { version: v, blob }).key(name, Some(v)))
    }

    fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        context: &[u8],
    ) -> Result<Done, (OpError, Named)> {
        let parsed = envelope::parse(blob).ok_or_else(|| {
            (
                OpError::new(
                    ErrorCode::InvalidCiphertext,
                    "not a vaultgate ciphertext blob",
                ),
                Named::default(),
            )
        })?;
        let name = parsed.key;
        let fail = |e: OpError| (e, Named::key(name));
        self.authorize(caller, Op::Decrypt, Some(name))
            .map_err(fail)?;
        let key = self.usable(name).map_err(fail)?;
        let (v, m) = Self::version(&key, Some(parsed.version)).map_err(fail)?;
        let plaintext = m
            .open(&envelope::aad(parsed.header, context), parsed.sealed)
            .map_err(|e| fail(e.into()))?;
        Ok(Done::new(Response::Plaintext {
            key: name.to_owned(),
            version: v,
            plaintext,
        })
        .key(name, Some(v)))
    }

    fn generate_data_key(&self, name: &str, length: u32, context: &[u8]) -> Result<Done, OpError> {
        if length == 0 || length > MAX_DATA_KEY {
            return Err(OpError::new(
                ErrorCode::InvalidInput,
                format!("data key length {length} not in 1..={MAX_DATA_KEY}"),
            ));
        }
        let plaintext = keys::random_bytes(length as usize)?;
        let done = self.encrypt(name, &plaintext, context)?;
        let Response::Ciphertext { version, blob } = done.response else {
            return Err(OpError::new(
                ErrorCode::Internal,
                "encrypt answered unexpectedly",
            ));
        };
        Ok(Done::new(Response::DataKey {
            version,
            plaintext,
            ciphertext: blob,
        })
        .key(name, Some(version)))
    }

    fn describe_json(key: &Key) -> Response {
        Response::Json {
            json: key.describe().to_string(),
        }
    }

    fn list(&self, caller: &Caller) -> Done {
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

    fn describe(&self, name: &str) -> Result<Done, OpError> {
        let key = self.find(name)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(key.record.primary)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.locked()
    }

    fn create(
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

    fn import(&self, name: &str, pem: &[u8], new_version: bool) -> Result<Done, OpError> {
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
    fn rotate(&self, name: &str, scheduled: bool) -> Result<Done, OpError> {
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
        Self::start_grace(&mut key, self.settings.load().sign_grace.as_secs());
        let version = key.add_version(self.store.subkeys(), material, Origin::Generated, now())?;
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(version)))
    }

    /// The primary version is about to be replaced: let it keep signing
    /// for `grace` seconds, for handshakes that already chose its
    /// certificate.
    fn start_grace(key: &mut Key, grace: u64) {
        if !key.key_type().is_signing() {
            return;
        }
        let primary = key.record.primary;
        if let Some(v) = key
            .record
            .versions
            .iter_mut()
            .find(|v| v.version == primary)
        {
            v.retire_at = Some(now() + grace);
        }
    }

    fn cert_install(
        &self,
        name: &str,
        version: Option<u32>,
        chain_pem: &str,
    ) -> Result<Done, OpError> {
        let _guard = self.lock();
        let mut key = (*self.find(name)?).clone();
        let (v, m) = Self::version(&key, version)?;
        issue::check_chain(chain_pem, m).map_err(|e| {
            let message = match e {
                issue::ChainError::Mismatch { cert, key } => format!(
                    "the certificate's public key ({cert}) is not key {name:?} version {v}'s ({key})"
                ),
                e => e.to_string(),
            };
            OpError::new(ErrorCode::InvalidInput, message)
        })?;
        if let Some(r) = key.record.versions.iter_mut().find(|r| r.version == v) {
            r.cert_chain = Some(chain_pem.to_owned());
        }
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(v)))
    }

    fn cert_csr(&self, name: &str, version: Option<u32>, params: &str) -> Result<Done, OpError> {
        let names: issue::Names = serde_json::from_str(params)
            .map_err(|e| OpError::new(ErrorCode::InvalidInput, format!("CSR parameters: {e}")))?;
        let key = self.usable(name)?;
        let (v, m) = Self::version(&key, version)?;
        let csr = issue::csr(m, &names).map_err(issue_error)?;
        Ok(Done::new(Response::Certificate {
            version: v,
            chain_pem: csr,
        })
        .key(name, Some(v)))
    }

    /// Issues a certificate for a key version (self-signed, or by a CA key
    /// held here) and binds it, as `cert_install` would. Errors name the
    /// CA key once one is involved: its use is what the record is about.
    fn cert_issue(
        &self,
        caller: &Caller,
        name: &str,
        version: Option<u32>,
        params: &str,
    ) -> Result<Done, (OpError, Named)> {
        let p: IssueParams = serde_json::from_str(params)
            .map_err(|e| OpError::new(ErrorCode::InvalidInput, format!("issue parameters: {e}")))
            .map_err(|e| (e, Named::default()))?;
        let Some(ca) = &p.ca else {
            return self
                .issue_with(name, version, &p, None)
                .map_err(|e| (e, Named::default()));
        };
        let with_ca = |e| (e, Named::ca(ca));
        check_length(ca).map_err(|e| (e, Named::default()))?;
        // Signing with the CA key is a use of it, and a CA certificate
        // a more powerful one: each its own right on the CA key, which
        // `cert-issue` (an admin operation on the subject) is not.
        let right = if p.is_ca {
            CaRight::IssueCa
        } else {
            CaRight::Issue
        };
        self.authorize_ca(caller, right, ca).map_err(with_ca)?;
        let ca_key = self.usable(ca).map_err(with_ca)?;
        let (cv, cm) = Self::version(&ca_key, None).map_err(with_ca)?;
        let chain = Self::chain_of(&ca_key, cv)
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("CA key {ca:?} has no certificate; issue it one with is_ca and no ca"),
                )
            })
            .map_err(with_ca)?;
        let done = self
            .issue_with(name, version, &p, Some((cm, &chain)))
            .map_err(with_ca)?;
        Ok(Done {
            ca: Some((ca.clone(), cv)),
            ..done
        })
    }

    /// `cert_issue` once the CA, if any, is authorized and found.
    fn issue_with(
        &self,
        name: &str,
        version: Option<u32>,
        p: &IssueParams,
        ca: Option<(&Arc<Material>, &str)>,
    ) -> Result<Done, OpError> {
        let _guard = self.lock();
        let mut key = (*self.usable(name)?).clone();
        let (v, m) = Self::version(&key, version)?;
        let m = m.clone();
        // The certificate being replaced: this version's, or the newest
        // earlier version's.
        let previous = key
            .record
            .versions
            .iter()
            .filter(|r| r.version <= v && r.cert_chain.is_some())
            .max_by_key(|r| r.version)
            .and_then(|r| r.cert_chain.clone());
        let names = (!p.names.is_empty() || p.common_name.is_some()).then(|| issue::Names {
            names: p.names.clone(),
            common_name: p.common_name.clone(),
        });
        let chain = issue::issue(issue::Issue {
            subject: &m,
            names,
            previous: previous.as_deref(),
            lifetime: p
                .days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86400)),
            ca,
            is_ca: p.is_ca,
            path_len: p.path_len,
        })
        .map_err(issue_error)?;
        if let Some(r) = key.record.versions.iter_mut().find(|r| r.version == v) {
            r.cert_chain = Some(chain);
        }
        let key = self.put(key)?;
        Ok(Done::new(Self::describe_json(&key)).key(name, Some(v)))
    }

    fn chain_of(key: &Key, version: u32) -> Option<String> {
        key.record
            .versions
            .iter()
            .find(|r| r.version == version)
            .and_then(|r| r.cert_chain.clone())
    }

    fn cert_get(&self, name: &str, version: Option<u32>) -> Result<Done, OpError> {
        let key = self.find(name)?;
        let (v, _) = Self::version(&key, version)?;
        let chain = key
            .record
            .versions
            .iter()
            .find(|r| r.version == v)
            .and_then(|r| r.cert_chain.clone())
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("no certificate is bound to key {name:?} version {v}"),
                )
            })?;
        Ok(Done::new(Response::Certificate {
            version: v,
            chain_pem: chain,
        })
        .key(name, Some(v)))
    }

    fn modify(
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

    fn set_state(&self, name: &str, state: KeyState) -> Result<Done, OpError> {
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

    fn schedule_deletion(&self, name: &str, wait_secs: Option<u64>) -> Result<Done, OpError> {
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

    fn cancel_deletion(&self, name: &str) -> Result<Done, OpError> {
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

    /// A backup of `only`, or of every key. Every key must be granted
    /// and readable: a backup that silently lacks a key is found out
    /// only when it is needed.
    fn backup_export(
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
    /// then all are written at once ([`Keystore::put_all`]).
    fn backup_import(
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

    fn audit_verify(&self) -> Result<Done, OpError> {
        self.audit.flush();
        if let Some(why) = self.audit.failure() {
            return Err(OpError::new(
                ErrorCode::Storage,
                format!("the audit log cannot be written ({why})"),
            ));
        }
        let report = super::audit::verify(
            &self.settings.load().state_dir,
            &self.store.subkeys().audit_mac,
        )
        .map_err(|e| OpError::new(ErrorCode::CorruptKey, e.to_string()))?;
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

    fn audit_rotate(&self) -> Result<Done, OpError> {
        let closed = self.audit.rotate().map_err(|e| {
            let code = match *e {
                super::audit::AuditError::NothingToRotate { .. } => ErrorCode::InvalidInput,
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
    fn watch_space(&self) {
        use super::space::Change;
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

    /// Audits a refused connection, or folds it into this second's count.
    pub fn refused_connection(&self, refusal: Event) {
        self.refused.locked().record(refusal, &self.audit, now());
    }

    pub fn housekeeping(&self) {
        self.watch_space();
        self.refused.locked().tick(&self.audit, now());
        if self.audit.failure().is_some() {
            return; // deletions and rotations wait until they can be audited
        }
        let now = now();
        for (name, key) in self.store.list() {
            let Ok(key) = key else { continue };
            let r = &key.record;
            if r.state == KeyState::PendingDeletion && r.deletion_at.is_some_and(|t| t <= now) {
                let _guard = self.lock();
                let result = self.store.remove(&name, self.anchor());
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
            } else if r.state == KeyState::Enabled
                && r.rotate_every.is_some_and(|every| {
                    r.rotated.unwrap_or(r.created).saturating_add(every) <= now
                })
            {
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
