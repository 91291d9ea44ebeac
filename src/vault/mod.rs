//! The vault: the only process that holds private keys.
//!
//! - [`keys`]     — key material: generate, import, sign, verify, AES-GCM
//! - [`record`]   — one key as stored: authenticated metadata, sealed versions
//! - [`keystore`] — the `keys/` directory, loaded at start, written crash-safely
//! - [`master`]   — the master key (file or passphrase) and derived subkeys
//! - [`policy`]   — grants matched against peer credentials
//! - [`audit`]    — the chained, tamper-evident audit log
//! - [`envelope`] — the ciphertext blob format of encrypt/decrypt
//! - [`backup`]   — wrapped backup entries
//! - [`issue`]    — CSRs and certificates made with vault keys (rcgen)
//! - [`ops`]      — what each request does
//! - [`server`]   — the Unix socket and per-connection pipelining

pub mod audit;
pub mod backup;
pub mod envelope;
pub mod issue;
pub mod keys;
pub mod keystore;
pub mod master;
pub mod ops;
pub mod policy;
pub mod record;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("key derivation failed")]
    Derive,
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
    let store = keystore::Keystore::open(&settings.state_dir, Arc::new(subkeys))?;
    let audit = audit::Audit::open(
        &settings.state_dir,
        audit_key,
        settings.syslog,
        settings.audit_sync,
    )?;
    let policy = policy::Policy::new(&settings.grants, nix::unistd::geteuid().as_raw());
    Ok(Vault::new(settings, store, policy, audit))
}

pub use ops::Vault;

/// Runs the vault until SIGTERM or SIGINT: hardens the process, opens the
/// keystore, binds the socket, serves. `on_ready` is called once the
/// socket accepts connections.
/// Re-reads the vault's settings on SIGHUP; an error message names the
/// file, line and column.
pub type Reloader = Box<dyn Fn() -> Result<VaultSettings, String> + Send + Sync>;

pub async fn run(
    settings: VaultSettings,
    reload: Option<Reloader>,
    on_ready: impl FnOnce(&VaultSettings),
) -> Result<(), VaultError> {
    let h = crate::os::harden();
    if let Err(e) = h.non_dumpable {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    if let Err(e) = h.no_core {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    if let Err(e) = h.mlocked {
        tracing::warn!(
            error = %e,
            "could not lock memory (mlockall); key material may be swapped to disk. \
             Raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity in systemd) or grant CAP_IPC_LOCK"
        );
    }
    // A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action ends
    // the process. Caught, the write fails with EFBIG instead and is
    // handled like a full disk. (tokio keeps the handler installed.)
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        libc::SIGXFSZ,
    ))
    .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGXFSZ; a file size limit would end the vault"));
    raise_fd_limit();
    let socket = settings.socket.clone();
    let (mode, group) = (settings.socket_mode, settings.socket_group);
    let metrics_addr = settings.metrics_listen;
    let vault = Arc::new(
        tokio::task::spawn_blocking(move || open(settings))
            .await
            .map_err(|_| VaultError::Derive)??,
    );
    vault
        .audit()
        .record(audit::Event::system("vault-start", None));

    if let Some(addr) = metrics_addr {
        let handle = crate::telemetry::install_recorder();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| VaultError::Metrics { addr, source })?;
        if let Ok(local) = listener.local_addr() {
            tracing::info!(%local, "vault metrics listening");
            println!("metrics {local}");
        }
        tokio::spawn(crate::telemetry::serve_metrics(listener, handle));
    }

    let listener = server::bind(&socket, mode, group)?;
    tracing::info!(socket = %socket.display(), "vault listening");
    on_ready(&vault.settings());

    let reloads = tokio::spawn(reload_on_sighup(vault.clone(), reload));

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

    server::serve(listener, vault.clone(), crate::os::shutdown_signal()).await;
    housekeeping.abort();
    reloads.abort();
    let _ = std::fs::remove_file(&socket);
    vault
        .audit()
        .record(audit::Event::system("vault-stop", None));
    vault.audit().flush();
    tracing::info!("vault stopped");
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

/// Applies a re-read config on every SIGHUP. An invalid config changes
/// nothing: the error is logged, audited and counted.
async fn reload_on_sighup(vault: Arc<Vault>, reload: Option<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let Some(reload) = &reload else {
            tracing::info!("SIGHUP: no config file to re-read (started from flags)");
            continue;
        };
        match reload() {
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
                    .record(audit::Event::system("config-reload", Some(e)));
            }
        }
    }
}
