//! The TLS-terminating reverse proxy.
//!
//! # Layout
//!
//! Imports go one way, from the process down to the backend client:
//! `server → listeners, reload → connection → h1, h2 → forward → origin`,
//! with `tls` (certificates, resolver, resumption) beside them and `body`,
//! `framing` and `linger` shared below.
//!
//! - [`server`]: the process's lifetime: runtime, binding, pid file, drain.
//! - [`listeners`]: the listening sockets, their accept loops and the
//!   metrics listener.
//! - `redirect`: plain-HTTP listeners that send clients to HTTPS.
//! - `reload`: what changes a running proxy (SIGHUP, certificate files,
//!   vault key events, expiry).
//! - `connection`: one client connection: TLS handshake, then HTTP/1 or
//!   HTTP/2 by ALPN.
//! - [`h1`]: the proxy's own HTTP/1.1 server driver.
//! - `h2`: HTTP/2 through hyper, a connection's streams in its own task.
//! - [`forward`]: routes, upstreams, balancing, health, proxy headers,
//!   access log; the request path in named phases.
//! - [`origin`]: the clients to backends: the proxy's own HTTP/1.1 client
//!   and its connection pools, and h2c through hyper.
//! - [`body`]: the request body type both sides pass each other.
//! - [`framing`]: HTTP/1.1 message framing, for the server and the client.
//! - `linger`: lingering close, for both protocols.
//! - [`tls`]: certificate store, SNI resolver, session tickets, resumption
//!   that a withdrawn key ends.
//! - `status`: the status page on the metrics listener.

pub mod body;
mod connection;
pub mod forward;
pub mod framing;
pub mod h1;
mod h2;
mod linger;
pub mod listeners;
pub mod origin;
mod redirect;
mod reload;
pub mod server;
mod status;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::config::proxy::{KeyRef, ProxySettings};
use crate::signer::{PoolOptions, VaultPool};
use crate::sync::Locked;
use forward::Forwarder;
use tls::{CertStore, TlsError};

/// A proxy ready to serve: TLS config over a swappable certificate store,
/// and the forwarder, both replaced whole by a config reload.
pub struct Proxy {
    /// The settings it started with: what needs a restart to change
    /// (vault sockets, worker threads) is read from here.
    pub settings: ProxySettings,
    /// The live certificates. Replace with `store.store(..)`: handshakes in
    /// progress keep the store they started with.
    pub store: Arc<ArcSwap<CertStore>>,
    /// What new connections and requests use; a reload swaps it.
    pub live: ArcSwap<Live>,
    pub pool: Option<VaultPool>,
    /// The file SIGHUP re-reads (none: SIGHUP reloads certificates only).
    pub config_path: Option<std::path::PathBuf>,
    /// Which sessions may resume, in every generation's TLS config: ended
    /// when a served key is withdrawn.
    pub resumption: tls::resumption::Epoch,
    health: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held from loading a certificate store to swapping it in. Reloads
    /// start from several places at once (a key event, the file watch,
    /// `run` re-issuing a rotated key's certificate, SIGHUP); unordered,
    /// one that read a certificate file before it was replaced could swap
    /// in after one that read it after, and the old certificate would stay
    /// served with nothing left to reload it.
    swapping: std::sync::Mutex<()>,
}

/// One generation of the reloadable configuration.
pub struct Live {
    pub settings: Arc<ProxySettings>,
    pub tls: Arc<ServerConfig>,
    pub forwarder: Arc<Forwarder>,
}

/// Why a config reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("no config file to re-read")]
    NoConfig,
    #[error(transparent)]
    Bind(#[from] listeners::BindError),
    #[error("the reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    AccessLog(#[from] forward::access_log::AccessLogError),
}

/// Why a proxy could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    AccessLog(#[from] forward::access_log::AccessLogError),
}

impl Proxy {
    /// Connects to the vault (when any key is `vault:`), loads every
    /// certificate, checks each key against it and signs once with each
    /// vault key (see [`crate::signer::VaultKey::warm_up`]). Blocking.
    pub fn build(settings: ProxySettings) -> Result<Proxy, BuildError> {
        let needs_vault = settings
            .certs
            .iter()
            .any(|c| matches!(c.key, KeyRef::Vault(_)));
        for c in &settings.certs {
            if let KeyRef::File(path) = &c.key {
                tracing::warn!(
                    key = %path.display(),
                    "file: key loaded into the proxy process: no isolation from the network-facing side; use vault: keys in production"
                );
            }
        }
        let tls = if needs_vault {
            settings.vault_client_tls().map_err(TlsError::VaultTls)?
        } else {
            None
        };
        let pool = needs_vault.then(|| {
            VaultPool::start(PoolOptions {
                sockets: settings.vaults.clone(),
                tls,
                connections_per_socket: settings.vault_connections,
                timeout: settings.sign_timeout,
                plain_wait: settings.sign_plain_wait,
            })
        });
        if let Some(pool) = &pool {
            if !pool.wait_connected(Duration::from_secs(5)) {
                let key = settings
                    .certs
                    .iter()
                    .find_map(|c| match &c.key {
                        KeyRef::Vault(n) => Some(n.clone()),
                        KeyRef::File(_) => None,
                    })
                    .unwrap_or_default();
                return Err(TlsError::NoVault {
                    key,
                    sockets: pool.socket_states(),
                }
                .into());
            }
        }
        let store = Arc::new(ArcSwap::from_pointee(CertStore::load(
            &settings,
            pool.as_ref(),
        )?));
        for key in store.load().vault_keys() {
            if let Err(e) = key.warm_up() {
                tracing::warn!(key = %key.name(), version = key.version(), error = %e, "the vault did not sign a warm-up message; handshakes with this key will fail until it does");
            }
        }
        let resumption = tls::resumption::Epoch::default();
        let tls = tls::server_config(&settings, store.clone(), &resumption)?;
        let forwarder = Arc::new(Forwarder::new(&settings)?);
        Ok(Proxy {
            resumption,
            live: ArcSwap::from_pointee(Live {
                settings: Arc::new(settings.clone()),
                tls,
                forwarder,
            }),
            settings,
            store,
            pool,
            config_path: None,
            health: std::sync::Mutex::new(Vec::new()),
            swapping: std::sync::Mutex::new(()),
        })
    }

    /// Re-reads the config file and validates it completely. Blocking.
    pub fn read_config(&self) -> Result<ProxySettings, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfig)?;
        let loaded = crate::config::load(path)?;
        Ok(ProxySettings::from_loaded(&loaded)?)
    }

    /// Makes `new` the live generation once its certificates load: routes,
    /// upstreams, backends, certificates, limits and timeouts change for
    /// new connections and requests (those in flight finish as they
    /// began). Listeners are the server's to change. Returns the settings
    /// that changed but need a restart. Blocking (vault lookups).
    pub fn apply_config(&self, new: ProxySettings) -> Result<Vec<&'static str>, ReloadError> {
        let old = self.live.load_full();
        let mut ignored = Vec::new();
        if new.vaults != self.settings.vaults
            || new.vault_tls != self.settings.vault_tls
            || new.vault_connections != self.settings.vault_connections
        {
            ignored.push("vault_sockets");
        }
        if new.workers != self.settings.workers {
            ignored.push("workers");
        }
        if new.user != self.settings.user {
            ignored.push("user");
        }
        if new.redirect_listen != self.settings.redirect_listen {
            ignored.push("redirect_listen");
        }
        let swapping = self.swapping.locked();
        let certs = CertStore::load(&new, self.pool.as_ref())?;
        // A new ServerConfig would start new ticket keys, so returning
        // clients could not resume: keep it unless TLS settings changed.
        let tls_same = new.min_tls_version == old.settings.min_tls_version
            && new.session_tickets == old.settings.session_tickets
            && new.session_cache_size == old.settings.session_cache_size
            && new.ticket_rotation == old.settings.ticket_rotation;
        let tls = if tls_same {
            old.tls.clone()
        } else {
            tls::server_config(&new, self.store.clone(), &self.resumption)?
        };
        let forwarder = Arc::new(Forwarder::new(&new)?);
        self.store.store(Arc::new(certs));
        self.live.store(Arc::new(Live {
            forwarder,
            settings: Arc::new(new),
            tls,
        }));
        drop(swapping);
        Ok(ignored)
    }

    /// Makes `next` (the live settings with upstreams' backends changed)
    /// the live generation, with a forwarder for it and the same TLS, if
    /// `current` is still live. Returns whether it was.
    pub fn replace_upstreams(&self, current: &Arc<Live>, next: ProxySettings) -> bool {
        let fresh = Arc::new(Live {
            forwarder: Arc::new(Forwarder::with_access_log(
                &next,
                current.forwarder.access_log(),
            )),
            settings: Arc::new(next),
            tls: current.tls.clone(),
        });
        let prev = self.live.compare_and_swap(current, fresh);
        Arc::ptr_eq(&prev, current)
    }

    /// Reloads every certificate and key reference and swaps the store.
    /// Handshakes already past certificate selection finish with the old
    /// store; on any error the old store stays. Blocking (vault lookups).
    pub fn reload_certs(&self) -> Result<(), TlsError> {
        let _swapping = self.swapping.locked();
        let fresh = CertStore::load(&self.live.load().settings, self.pool.as_ref())?;
        self.store.store(Arc::new(fresh));
        Ok(())
    }

    /// (Re)starts the live upstreams' background tasks, active health
    /// checks and the pruning of idle backend connections; the previous
    /// generation's stop. Needs a tokio runtime.
    pub fn restart_upstream_tasks(&self) {
        let live = self.live.load();
        let fresh: Vec<_> = live
            .forwarder
            .upstreams()
            .flat_map(|u| forward::health::spawn(u.clone()))
            .chain(live.forwarder.upstreams().map(|u| {
                let u = u.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(origin::pool::IDLE_TIMEOUT / 6);
                    loop {
                        tick.tick().await;
                        u.prune_idle();
                    }
                })
            }))
            .collect();
        let mut health = self.health.locked();
        for old in health.drain(..) {
            old.abort();
        }
        *health = fresh;
    }

    /// Stops every upstream task (at shutdown).
    pub fn stop_upstream_tasks(&self) {
        let mut health = self.health.locked();
        for old in health.drain(..) {
            old.abort();
        }
    }
}
