//! The vault: the only process that holds private keys.
//!
//! - [`keys`]     — key material: generate, import, sign, verify, AES-GCM
//! - [`record`]   — one key as stored: authenticated metadata, sealed versions
//! - [`keystore`] — the `keys/` directory, loaded at start, written crash-safely
//! - [`manifest`] — `keys/MANIFEST`: each key's latest generation, so rollbacks are found
//! - [`master`]   — the master key (file or passphrase) and derived subkeys
//! - [`node`]     — this node's entry in its cluster's list, held while it runs
//! - [`migrate`]  — a single node's keystore moved into an empty cluster
//! - [`policy`]   — grants matched against peer credentials
//! - [`audit`]    — the chained, tamper-evident audit log
//! - [`envelope`] — the ciphertext blob format of encrypt/decrypt
//! - [`backup`]   — backup files: sealed and tagged as a whole, restored all or none
//! - [`issue`]    — CSRs and certificates made with vault keys (rcgen)
//! - [`ops`]      — what each request does
//! - [`admission`] — which connections are served, and the memory their partial requests hold
//! - [`denials`]  — refusals past a few a second per connection, folded into counted records; a connection cut after a burst
//! - [`fair`]     — turns on a connection worker, so one caller's flood cannot starve the others
//! - [`space`]    — the room left on the state dir's filesystem, warned of before it runs out
//! - [`listen`](mod@listen) — sockets bound early (as root) that listen only once the keystore is open
//! - [`server`]   — the Unix socket and per-connection pipelining
//! - [`stream`]   — a connection's bytes: the Unix socket, or TLS over TCP
//! - [`tls`]      — the mutual-TLS listeners: certificate identities as callers

pub mod admission;
pub mod audit;
pub mod backup;
pub mod denials;
pub mod envelope;
pub mod fair;
pub mod issue;
pub mod keys;
pub mod keystore;
pub mod listen;
pub mod manifest;
pub mod master;
pub mod migrate;
pub mod node;
pub mod ops;
pub mod policy;
pub mod record;
pub mod server;
pub mod space;
pub mod stream;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::user::RunAs;
use crate::config::vault::VaultSettings;

/// Why the vault could not start.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("state dir {path}: {source}", path = .path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key: {0}")]
    Master(#[from] master::MasterError),
    #[error("audit log: {0}")]
    Audit(#[from] audit::AuditError),
    #[error("keystore: {0}")]
    Store(#[from] keystore::StoreError),
    #[error("socket {path}: {message}", path = .path.display())]
    Socket { path: PathBuf, message: String },
    #[error("tls_listen {addr}: {source}")]
    TlsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {message}", path = .path.display())]
    TlsFiles { path: PathBuf, message: String },
    #[error("pid file {path}: {source}", path = .path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("key derivation failed")]
    Derive,
    #[error(
        "state dir {dir}: {path} is owned by {owner}, not by the vault's user {user:?}; \
         give the state dir to that user (chown -R {user}: {dir}) or run as its owner",
        dir = .dir.display(),
        path = .path.display()
    )]
    StateDirOwner {
        dir: PathBuf,
        path: PathBuf,
        owner: String,
        user: String,
    },
    #[error(transparent)]
    Switch(#[from] crate::os::DropError),
    #[error("cannot start the keystore's follower thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Node(#[from] node::NodeError),
}

/// Opens the state dir and builds the vault (no socket yet).
pub fn open(settings: VaultSettings) -> Result<Vault, VaultError> {
    crate::fsutil::ensure_dir(&settings.state_dir, 0o700).map_err(|source| {
        VaultError::StateDir {
            path: settings.state_dir.clone(),
            source,
        }
    })?;
    // A crash (or an exit racing a last write) can leave a temp file of an
    // atomic write behind; the real file is intact either way.
    if let Err(e) = crate::fsutil::remove_stale_temps(&settings.state_dir) {
        tracing::warn!(error = %e, "could not clear stale temp files in the state dir");
    }
    let master_key = master::obtain(&settings.state_dir, &settings.master_key)?;
    let subkeys = master::Subkeys::derive(&master_key).map_err(|_| VaultError::Derive)?;
    drop(master_key);
    let audit_key = subkeys.audit_mac.clone();
    let audit = audit::Audit::open(
        &settings.state_dir,
        audit_key,
        &audit::Options {
            syslog: settings.syslog,
            sync_every: settings.audit_sync,
            rotate_size: settings.audit_rotate_size,
            keep_segments: settings.audit_keep_segments,
        },
    )?;
    let store = open_store(&settings, Arc::new(subkeys), audit.head_manifest())?;
    for (alarm, key) in store.take_alarms() {
        audit.alarm(&alarm, key.as_deref());
    }
    check_anchor(&store, &audit);
    check_shared_anchor(&store, &audit);
    audit.set_manifest(store.generation());
    let policy = policy::Policy::new(&settings.grants, nix::unistd::geteuid().as_raw());
    keys::warm_up();
    Ok(Vault::new(settings, store, policy, audit))
}

/// A shared store keeps where this node's log stood: a log that now ends
/// before it was cut back or replaced (with its state dir, which the
/// manifest's own anchor cannot tell).
fn check_shared_anchor(store: &keystore::Keystore, audit: &audit::Audit) {
    let anchor = match store.audit_anchor() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not read this node's audit anchor from the store");
            return;
        }
    };
    let end = audit.synced();
    let replaced = end.seq < anchor.seq || (end.seq == anchor.seq && end.mac != anchor.mac);
    if replaced {
        let alarm = audit::Alarm {
            kind: "audit-rolled-back",
            message: format!(
                "the shared store holds this node's audit log at record {} (MAC {}), but the log ends at record {} (MAC {}): \
                 it was cut back or replaced",
                anchor.seq, anchor.mac, end.seq, end.mac
            ),
        };
        audit.alarm(&alarm, None);
    }
    store.put_audit_anchor(&audit.synced());
}

/// The keystore `[vault.store]` names: the state dir's, or the
/// cluster's on etcd (after checking this node's master key is the
/// cluster's), with this node's manifest of what it has seen kept in
/// `state_dir/cluster`.
fn open_store(
    settings: &VaultSettings,
    subkeys: Arc<master::Subkeys>,
    head_manifest: Option<u64>,
) -> Result<keystore::Keystore, VaultError> {
    use crate::config::store::StoreSettings;
    let cfg = match &settings.store {
        StoreSettings::Local => {
            return Ok(keystore::Keystore::open_local(
                &settings.state_dir,
                subkeys,
                head_manifest,
            )?)
        }
        StoreSettings::Etcd(cfg) => cfg,
    };
    let etcd = crate::etcd::Etcd::connect(&crate::etcd::EtcdConfig {
        endpoints: cfg.endpoints.clone(),
        prefix: cfg.prefix.clone(),
        tls_ca: cfg.tls_ca.clone(),
        tls_cert: cfg.tls_cert.clone(),
        tls_key: cfg.tls_key.clone(),
    })
    .map_err(|e| keystore::StoreError::Etcd(Box::new(e)))?;
    let backend = keystore::etcd::EtcdBackend::new(etcd, &cfg.node);
    backend.claim_master(&subkeys.cluster_check())?;
    let dir = settings.state_dir.join("cluster");
    crate::fsutil::ensure_dir(&dir, 0o700).map_err(|source| VaultError::StateDir {
        path: dir.clone(),
        source,
    })?;
    tracing::info!(node = %cfg.node, endpoints = ?cfg.endpoints, prefix = %cfg.prefix, "keystore on etcd");
    Ok(keystore::Keystore::open(
        Box::new(backend),
        &dir,
        subkeys,
        head_manifest,
        true,
    )?)
}

/// [`open`], for a node of a cluster after taking its name in the
/// cluster's list: a second node of that name refuses to start before
/// it opens anything.
fn open_registered(
    settings: VaultSettings,
) -> Result<(Vault, Option<node::Registered>), VaultError> {
    let registered = match &settings.store {
        crate::config::store::StoreSettings::Etcd(cfg) => {
            Some(node::register(cfg, &settings.socket)?)
        }
        crate::config::store::StoreSettings::Local => None,
    };
    match open(settings) {
        Ok(v) => Ok((v, registered)),
        Err(e) => {
            if let Some(r) = registered {
                r.close();
            }
            Err(e)
        }
    }
}

/// The manifest anchors the synced end of the log it last saw; a log
/// that now ends before that record was replaced by an older one (with
/// its head) or removed, which the log alone cannot tell.
fn check_anchor(store: &keystore::Keystore, audit: &audit::Audit) {
    let Some(anchor) = store.anchor() else { return };
    let end = audit.synced();
    if end.seq < anchor.seq {
        let alarm = audit::Alarm {
            kind: "audit-rolled-back",
            message: format!(
                "the keystore manifest saw the audit log at record {} (MAC {}), but the log ends at record {}: \
                 it was replaced by an older copy, or removed",
                anchor.seq, anchor.mac, end.seq
            ),
        };
        audit.alarm(&alarm, None);
    }
}

pub use ops::Vault;

/// What SIGHUP re-reads: the config file, and how to read it.
pub struct Reload {
    /// The config file (named in the status file beside the pid file).
    pub config: PathBuf,
    pub read: Reloader,
}

/// Re-reads the vault's settings on SIGHUP. Its error is the caller's own
/// (config or flags), logged and audited as it displays; a config error
/// names the file, line and column.
pub type Reloader =
    Box<dyn Fn() -> Result<VaultSettings, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Binds the metrics listener and installs the recorder, before anything
/// is counted: alarms found while opening the audit log are metrics too.
async fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<
    Option<(
        tokio::net::TcpListener,
        metrics_exporter_prometheus::PrometheusHandle,
    )>,
    VaultError,
> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| VaultError::Metrics { addr, source })?;
    Ok(Some((listener, crate::telemetry::install_recorder())))
}

/// Runs the vault until SIGTERM or SIGINT: hardens the process, opens the
/// keystore, binds the socket, serves. `on_ready` is called once the
/// socket accepts connections.
/// Serves the vault's `/metrics` on `listener` (and says where).
fn serve_metrics(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "vault metrics listening");
        println!("metrics {local}");
    }
    tokio::spawn(crate::telemetry::serve_metrics(
        listener,
        handle,
        crate::telemetry::Process::Vault,
        None,
    ));
}

pub async fn run(
    settings: VaultSettings,
    reload: Option<Reload>,
    on_ready: impl FnOnce(&VaultSettings),
) -> Result<(), VaultError> {
    let user = settings.user.clone();
    // Refuse a switch that cannot happen before touching anything.
    if let Some(u) = &user {
        crate::os::check_can_become(u)?;
    }
    harden(user.as_ref());

    // What needs root comes first: the state dir (created for the user,
    // or checked to be theirs), the listeners. Then the switch, and only
    // then the state dir's contents are read and written, by the user
    // they belong to: every file the vault creates is the user's, with
    // its own narrow mode, and no root-owned file is left for it to trip on.
    if let Some(u) = &user {
        prepare_state_dir(&settings.state_dir, u)?;
    }
    let socket = settings.socket.clone();
    let metrics = bind_metrics(settings.metrics_listen).await?;
    let listener = server::bind(
        &socket,
        settings.socket_mode,
        settings.socket_group,
        user.as_ref(),
    )?;
    let tls = tls::bind_opt(settings.tls.as_ref()).await?;
    let status = match &settings.pid_file {
        Some(f) => Some(Arc::new(write_pid_file(
            f,
            reload.as_ref().map(|r| r.config.as_path()),
            user.as_ref(),
        )?)),
        None => None,
    };
    if let Some(u) = &user {
        let switched = crate::os::become_user(u);
        if let Err(e) = crate::os::log_switch("vault", u, switched) {
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
    }
    let opened = tokio::task::spawn_blocking(move || open_registered(settings))
        .await
        .map_err(|_| VaultError::Derive)
        .and_then(|r| r);
    let (vault, registered) = match opened {
        Ok((v, registered)) => (Arc::new(v), registered),
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    vault
        .audit()
        .record(audit::Event::system("vault-start", None));

    if let Some((listener, handle)) = metrics {
        serve_metrics(listener, handle);
    }
    let (listener, tls) = listen(&socket, listener, tls)?;

    // The handler is in place before anyone is told the vault is up: a
    // SIGHUP that came first would end the process (its default action).
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let reloads = tokio::spawn(reload_on_sighup(
        hup,
        vault.clone(),
        reload.map(|r| r.read),
        status,
    ));

    tracing::info!(socket = %socket.display(), "vault listening");
    on_ready(&vault.settings());
    crate::notify::ready(&format!("vault listening on {}", socket.display()));

    // Changes other vault nodes make to a shared keystore; a thread of
    // its own, as applying one writes this node's manifest.
    if let Some(follow) = vault.store_changes() {
        let vault = vault.clone();
        std::thread::Builder::new()
            .name("store-follow".into())
            .spawn(move || vault.follow_store(follow))
            .map_err(VaultError::Thread)?;
    }

    let housekeeping = {
        let vault = vault.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let v = vault.clone();
                let _ = tokio::task::spawn_blocking(move || v.housekeeping()).await;
            }
        })
    };

    server::serve(listener, tls, vault.clone(), crate::os::shutdown_signal()).await;
    crate::notify::stopping();
    housekeeping.abort();
    reloads.abort();
    if let Some(r) = registered {
        let _ = tokio::task::spawn_blocking(move || r.close()).await;
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(f) = &vault.settings().pid_file {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(crate::control::status_path(f));
    }
    vault
        .audit()
        .record(audit::Event::system("vault-stop", None));
    vault.audit().flush();
    tracing::info!("vault stopped");
    Ok(())
}

/// Starts listening on what was bound: only now, with the keystore
/// open, does a connect succeed.
fn listen(
    socket: &std::path::Path,
    unix: listen::Bound,
    tls: Option<tls::Listeners>,
) -> Result<(tokio::net::UnixListener, Option<tls::Listening>), VaultError> {
    let unix = unix.listen_unix().map_err(|e| VaultError::Socket {
        path: socket.to_owned(),
        message: format!("cannot listen: {e}"),
    })?;
    Ok((unix, tls.map(tls::Listeners::listen).transpose()?))
}

/// Makes the state dir the vault's `user`'s, the way a database treats
/// its data dir: a missing one is created 0700 and given to the user; an
/// existing one, and everything in it, must already be the user's (a dir
/// left by a run as root, or someone else's, is refused by name rather
/// than half used).
fn prepare_state_dir(dir: &std::path::Path, user: &RunAs) -> Result<(), VaultError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io = |source| VaultError::StateDir {
        path: dir.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Parents as usual (0755), so the user can reach its dir.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(user.uid)),
                Some(nix::unistd::Gid::from_raw(user.gid)),
            )
            .map_err(|e| io(e.into()))?;
            tracing::info!(dir = %dir.display(), user = %user.name, "created the state dir for the vault's user");
            return Ok(());
        }
        Err(e) => return Err(io(e)),
        Ok(_) => {}
    }
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.uid() != user.uid {
            let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map_or_else(
                    || format!("uid {}", meta.uid()),
                    |u| format!("{} (uid {})", u.name, meta.uid()),
                );
            return Err(VaultError::StateDirOwner {
                dir: dir.to_owned(),
                path,
                owner,
                user: user.name.clone(),
            });
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io)? {
                pending.push(entry.map_err(io)?.path());
            }
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit, 1024, is below the vault's connection limit plus its files).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.min(1 << 20);
    if soft < want {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            tracing::warn!(error = %e, soft, "cannot raise the open-file limit");
        }
    }
}

/// What the vault does to itself before anything else: no core dumps, not
/// dumpable, memory locked (and, before a switch away from root, allowed
/// to stay locked), SIGXFSZ caught, the open-file limit raised. Each
/// failure is a warning: the vault still runs, and says what it lacks.
fn harden(user: Option<&RunAs>) {
    let h = crate::os::harden();
    if let Err(e) = h.non_dumpable {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    if let Err(e) = h.no_core {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    if !h.large_frees_unmapped {
        tracing::warn!("could not fix the allocator's mmap threshold; memory freed by passphrase stretching may stay locked");
    }
    if let Err(e) = h.mlocked {
        tracing::warn!(
            error = %e,
            "could not lock memory (mlockall); key material may be swapped to disk. \
             Raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity in systemd) or grant CAP_IPC_LOCK"
        );
    } else if user.is_some() && nix::unistd::geteuid().is_root() {
        if let Err(e) = crate::os::memlock_for_switch() {
            tracing::warn!("{e}");
        }
    }
    // A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action ends
    // the process. Caught, the write fails with EFBIG instead and is
    // handled like a full disk. (tokio keeps the handler installed.)
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        libc::SIGXFSZ,
    ))
    .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGXFSZ; a file size limit would end the vault"));
    raise_fd_limit();
}

/// Writes the pid file and creates the status file beside it, as root if
/// the vault starts as root (both stay the user's after the switch).
fn write_pid_file(
    f: &std::path::Path,
    config: Option<&std::path::Path>,
    user: Option<&RunAs>,
) -> Result<crate::control::StatusFile, VaultError> {
    let io = |source| VaultError::PidFile {
        path: f.to_owned(),
        source,
    };
    if let Some(dir) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::ensure_dir(dir, 0o755).map_err(io)?;
    }
    crate::fsutil::write_atomic(f, format!("{}\n", std::process::id()).as_bytes(), 0o644)
        .map_err(io)?;
    crate::control::StatusFile::create(f, config.unwrap_or(std::path::Path::new("-")), user)
        .map_err(io)
}

/// Applies a re-read config on every SIGHUP. An invalid config changes
/// nothing: the error is logged, audited and counted.
async fn reload_on_sighup(
    hup: Option<tokio::signal::unix::Signal>,
    vault: Arc<Vault>,
    reload: Option<Reloader>,
    status: Option<Arc<crate::control::StatusFile>>,
) {
    let Some(mut hup) = hup else { return };
    while hup.recv().await.is_some() {
        let Some(reload) = &reload else {
            tracing::info!("SIGHUP: no config file to re-read (started from flags)");
            continue;
        };
        crate::notify::reloading();
        let outcome = reload();
        if let Some(s) = &status {
            s.record(outcome.as_ref().map(|_| ()));
        }
        crate::notify::ready(&match &outcome {
            Ok(_) => "vault serving; config reloaded".to_owned(),
            Err(e) => format!("vault serving; the last reload failed: {e}"),
        });
        match outcome {
            Ok(settings) => {
                let ignored = vault.reload(settings);
                if !ignored.is_empty() {
                    tracing::warn!(?ignored, "these settings change only on restart");
                }
                tracing::info!("config reloaded");
                metrics::counter!("vaultgate_vault_reloads_total", "result" => "ok").increment(1);
                vault
                    .audit()
                    .record(audit::Event::system("config-reload", None));
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                metrics::counter!("vaultgate_vault_reloads_total", "result" => "error")
                    .increment(1);
                vault
                    .audit()
                    .record(audit::Event::system("config-reload", Some(e.to_string())));
            }
        }
    }
}
