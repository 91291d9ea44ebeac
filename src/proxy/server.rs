//! The proxy's lifetime: its runtime, binding every address before
//! serving anything, the pid file, starting the listeners
//! ([`super::listeners`]), the reload watchers ([`super::reload`]) and the
//! upstream tasks, and the drain at shutdown. Per-connection work is in
//! [`super::connection`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::listeners::{self, BindError, Listeners, MetricsListener};
use super::Proxy;
use crate::control::StatusFile;

/// Why the proxy could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the proxy task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot write the pid file {path}: {source}", path = .path.display())]
    PidFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The proxy's runtime: `workers` threads (default one per core).
pub fn runtime(
    settings: &crate::config::proxy::ProxySettings,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.workers {
        b.worker_threads(n);
    }
    b.thread_name("proxy-worker").enable_all().build()
}

/// [`run`] until SIGTERM/SIGINT, from outside the runtime. The accept loop
/// runs on a worker thread rather than the calling one, so the connection
/// tasks it spawns go to that worker's own queue without a cross-thread
/// wake-up.
pub fn run_until_signal(
    rt: &tokio::runtime::Runtime,
    proxy: Arc<Proxy>,
    bound: Option<Bound>,
    on_listen: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<bool, ServeError> {
    let task = rt.spawn(run(proxy, bound, crate::os::shutdown_signal(), on_listen));
    rt.block_on(task)?
}

/// What the proxy binds and writes before serving anything: every
/// `listen` address, the metrics listener and the pid file. Separate from
/// [`run`] so that a proxy with a `user` can do it as root (ports below
/// 1024) and switch users before it connects to the vault.
pub struct Bound {
    listen: Vec<(SocketAddr, TcpListener)>,
    metrics: Option<(SocketAddr, TcpListener)>,
    /// Beside the pid file: each reload's verdict, for `vaultgate reload`.
    status: Option<StatusFile>,
    /// Plain-HTTP listeners that redirect to HTTPS.
    redirect: Vec<(SocketAddr, TcpListener)>,
}

/// Binds everything before serving anything: a bad address fails the
/// start, not half of it. Then writes the pid file.
pub async fn bind(
    settings: &crate::config::proxy::ProxySettings,
    config: Option<&std::path::Path>,
) -> Result<Bound, ServeError> {
    let mut listen = Vec::new();
    for &addr in &settings.listen {
        listen.push((addr, listeners::bind(addr).await?));
    }
    let metrics = match settings.metrics_listen {
        Some(a) => Some((a, listeners::bind(a).await?)),
        None => None,
    };
    let mut redirect = Vec::new();
    for &addr in &settings.redirect_listen {
        redirect.push((addr, listeners::bind(addr).await?));
    }
    let status = match &settings.pid_file {
        Some(f) => {
            write_pid_file(f)?;
            let config = config.unwrap_or(std::path::Path::new("-"));
            let status =
                StatusFile::create(f, config, settings.user.as_ref()).map_err(|source| {
                    ServeError::PidFile {
                        path: crate::control::status_path(f),
                        source,
                    }
                })?;
            Some(status)
        }
        None => None,
    };
    Ok(Bound {
        listen,
        metrics,
        status,
        redirect,
    })
}

/// Serves on `bound` (or binds first, see [`bind`]), prints `listen ADDR`
/// per listener and `metrics ADDR` on stdout (the addresses actually
/// bound, so port 0 works), starts health checks and serves until
/// `shutdown`. `on_listen` gets the first listener's address. Returns
/// whether the drain finished in time.
pub async fn run(
    proxy: Arc<Proxy>,
    bound: Option<Bound>,
    shutdown: impl Future<Output = ()>,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<bool, ServeError> {
    let settings = proxy.live.load().settings.clone();
    let bound = match bound {
        Some(b) => b,
        None => bind(&settings, proxy.config_path.as_deref()).await?,
    };
    let pid_file = settings.pid_file.clone();
    // Redirects first, so their `redirect ADDR` lines come before the
    // `listen` line that tells a caller the proxy is up.
    let https_port = bound
        .listen
        .first()
        .and_then(|(_, l)| l.local_addr().ok())
        .map_or(443, |a| a.port());
    let mut redirects = Vec::new();
    for (addr, l) in bound.redirect {
        let local = l
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        println!("redirect {local}");
        redirects.push(tokio::spawn(super::redirect::serve(l, https_port)));
    }
    let listeners = Arc::new(Listeners::new(proxy.clone()));
    let metrics = MetricsListener::new(Some(super::status::page(proxy.clone(), listeners.clone())));
    metrics.replace(bound.metrics)?;
    let mut first = None;
    for (addr, l) in bound.listen {
        let local = listeners
            .start(addr, l)
            .map_err(|source| BindError { addr, source })?;
        first.get_or_insert(local);
    }
    proxy.restart_upstream_tasks();
    let status = bound.status.map(Arc::new);
    let tasks = super::reload::spawn(&proxy, listeners.clone(), metrics, status.clone());
    if let Some(local) = first {
        on_listen(local);
    }
    let serving: Vec<String> = listeners.local().iter().map(ToString::to_string).collect();
    crate::notify::ready(&format!("serving on {}", serving.join(", ")));
    shutdown.await;
    crate::notify::stopping();
    let clean = listeners
        .shutdown(proxy.live.load().settings.limits.shutdown_timeout)
        .await;
    for t in tasks.into_iter().chain(redirects) {
        t.abort();
    }
    proxy.stop_upstream_tasks();
    if let Some(f) = &pid_file {
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(crate::control::status_path(f));
    }
    Ok(clean)
}

fn write_pid_file(f: &std::path::Path) -> Result<(), ServeError> {
    let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
    dir.map_or(Ok(()), |d| crate::fsutil::ensure_dir(d, 0o755))
        .and_then(|()| {
            crate::fsutil::write_atomic(f, format!("{}\n", std::process::id()).as_bytes(), 0o644)
        })
        .map_err(|source| ServeError::PidFile {
            path: f.to_owned(),
            source,
        })
}
