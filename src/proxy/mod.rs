//! The TLS-terminating reverse proxy: [`tls`] (certificates, resolver,
//! resumption), [`forward`] (routes, upstreams, balancing, health, proxy
//! headers, access log) and [`server`] (accept loop, limits, shutdown).

pub mod forward;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

use crate::config::proxy::{KeyRef, ProxySettings};
use crate::signer::{PoolOptions, VaultPool};
use forward::Forwarder;
use tls::{CertStore, TlsError};

/// A proxy ready to serve: TLS config over a swappable certificate store,
/// and the forwarder.
pub struct Proxy {
    pub settings: ProxySettings,
    /// The live certificates. Replace with `store.store(..)`: handshakes in
    /// progress keep the store they started with.
    pub store: Arc<ArcSwap<CertStore>>,
    pub tls: Arc<ServerConfig>,
    pub forwarder: Arc<Forwarder>,
    pub pool: Option<VaultPool>,
}

impl Proxy {
    /// Connects to the vault (when any key is `vault:`), loads every
    /// certificate and checks each key against it. Blocking.
    pub fn build(settings: ProxySettings) -> Result<Proxy, TlsError> {
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
        let pool = needs_vault.then(|| {
            VaultPool::start(PoolOptions {
                sockets: settings.vault_sockets.clone(),
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
                return Err(TlsError::NoVault { key });
            }
        }
        let store = Arc::new(ArcSwap::from_pointee(CertStore::load(
            &settings,
            pool.as_ref(),
        )?));
        let tls = tls::server_config(&settings, store.clone())?;
        let forwarder = Arc::new(Forwarder::new(&settings));
        Ok(Proxy {
            settings,
            store,
            tls,
            forwarder,
            pool,
        })
    }

    /// Reloads every certificate and key reference and swaps the store.
    /// Handshakes already past certificate selection finish with the old
    /// store; on any error the old store stays. Blocking (vault lookups).
    pub fn reload_certs(&self) -> Result<(), TlsError> {
        let fresh = CertStore::load(&self.settings, self.pool.as_ref())?;
        self.store.store(Arc::new(fresh));
        Ok(())
    }

    /// Starts active health checks; they stop when the handles are aborted.
    pub fn spawn_health_checks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.forwarder
            .upstreams()
            .flat_map(|u| forward::health::spawn(u.clone()))
            .collect()
    }
}
