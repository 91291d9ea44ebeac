//! Serving: per-connection work (TLS handshake with a deadline, HTTP/1.1 +
//! HTTP/2, idle keep-alive timeout, graceful close), the proxy's lifetime
//! (listeners, pid file, metrics, health checks, shutdown) and what
//! changes it while it runs: SIGHUP reloads, certificate file changes,
//! vault key events, certificate expiry. The accept loops are in
//! [`super::listeners`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, OptionFuture};
use futures_util::FutureExt;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

use super::forward::access::ConnInfo;
use super::forward::Forwarder;
use super::listeners::{self, Listeners};
use super::Proxy;
use crate::sync::Locked;

/// hyper's builder for one `h2` connection, with `exec` running its
/// streams (see [`super::h2`]).
pub(super) fn http_builder<E>(l: &crate::config::proxy::Limits, exec: E) -> auto::Builder<E> {
    let mut b = auto::Builder::new(exec);
    // hyper's HTTP/1 serves only HTTP/1 bytes on an `h2` connection (to
    // refuse them with a 400); the proxy's own driver serves HTTP/1.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_timeout.min(l.idle_timeout))
        .max_buf_size(l.max_header_size)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(l.max_header_size as u32)
        .keep_alive_interval(Some(l.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// What serves the connections accepted under one config generation,
/// shared by all of them.
pub(super) struct Serving {
    pub acceptor: TlsAcceptor,
    pub fwd: Arc<Forwarder>,
    pub limits: crate::config::proxy::Limits,
}

impl Serving {
    pub fn new(live: &super::Live) -> Serving {
        Serving {
            acceptor: TlsAcceptor::from(live.tls.clone()),
            fwd: live.forwarder.clone(),
            limits: live.settings.limits.clone(),
        }
    }
}

/// One client connection, from the TLS handshake to the close.
///
/// Built from combinators rather than as an `async fn`: the task keeps
/// room for its largest state for its whole life, and an async fn would
/// keep the handshake's state and a second copy of the serving future
/// next to the serving future itself. The handshake (and the TLS stream
/// it makes) lives in a box until it hands over the serving future, so
/// an idle HTTP/1 connection holds only that.
pub(super) fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    permit: OwnedSemaphorePermit,
    drain: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let open = OpenGauge::new();
    Box::pin(accept(tcp, peer, serving, drain))
        .then(OptionFuture::from)
        .map(move |_| drop((permit, open)))
}

/// The TLS handshake, then what serves the protocol ALPN agreed on.
async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    drain: watch::Receiver<bool>,
) -> Option<impl Future<Output = ()> + Send> {
    let local = tcp.local_addr().ok()?;
    let start = Instant::now();
    let handshake = tokio::time::timeout(
        serving.limits.handshake_timeout,
        serving.acceptor.accept(tcp),
    );
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => failure_reason(&e)).increment(1);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return None;
        }
    };
    let (_, session) = tls.get_ref();
    let resumed = matches!(
        session.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let kind = if resumed { "resumed" } else { "full" };
    metrics::counter!("vaultgate_proxy_handshakes_total", "kind" => kind).increment(1);
    metrics::histogram!("vaultgate_proxy_handshake_seconds", "kind" => kind)
        .record(start.elapsed().as_secs_f64());
    let info = Arc::new(ConnInfo {
        client: peer,
        client_ip: super::forward::headers::ClientIp::new(peer.ip()),
        local,
        sni: session.server_name().map(str::to_owned),
        tls_version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned(),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-")
            .to_owned(),
        alpn: session
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        resumed,
        private: Default::default(),
        activity: Default::default(),
    });
    // The protocol is the one ALPN agreed on: HTTP/2 goes to hyper; HTTP/1
    // (agreed, or no protocol named) to the proxy's own driver. A client
    // that named none and sends the HTTP/2 preface gets a 400, as from
    // nginx, which takes HTTP/2 without ALPN on cleartext ports only.
    Some(if info.alpn.as_deref() != Some("h2") {
        let (fwd, limits) = (serving.fwd.clone(), serving.limits.clone());
        Either::Left(super::h1::serve(tls, fwd, info, limits, drain))
    } else {
        Either::Right(Box::pin(super::h2::serve(tls, peer, info, serving, drain)))
    })
}

fn failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(m)) if m.starts_with("vault") => "vault",
        // The resolver had no certificate for the name (rustls's words).
        Some(rustls::Error::General(m)) if m.starts_with("no server certificate") => {
            "no_certificate"
        }
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "tls",
        None => "io",
    }
}

/// Keeps `vaultgate_proxy_connections_open` right however a connection ends.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        metrics::gauge!("vaultgate_proxy_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("vaultgate_proxy_connections_open").decrement(1.0);
    }
}

/// Why the proxy could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the proxy task failed: {0}")]
    Task(String),
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
    rt.block_on(task)
        .map_err(|e| ServeError::Task(e.to_string()))?
}

/// What the proxy binds and writes before serving anything: every
/// `listen` address, the metrics listener and the pid file. Separate from
/// [`run`] so that a proxy with a `user` can do it as root (ports below
/// 1024) and switch users before it connects to the vault.
pub struct Bound {
    listen: Vec<(SocketAddr, TcpListener)>,
    metrics: Option<(SocketAddr, TcpListener)>,
}

/// Binds everything before serving anything: a bad address fails the
/// start, not half of it. Then writes the pid file.
pub async fn bind(settings: &crate::config::proxy::ProxySettings) -> Result<Bound, ServeError> {
    let mut listen = Vec::new();
    for &addr in &settings.listen {
        listen.push((addr, listeners::bind(addr).await?));
    }
    let metrics = match settings.metrics_listen {
        Some(a) => Some((a, listeners::bind(a).await?)),
        None => None,
    };
    if let Some(f) = &settings.pid_file {
        write_pid_file(f)?;
    }
    Ok(Bound { listen, metrics })
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
        None => bind(&settings).await?,
    };
    let metrics = MetricsListener::default();
    metrics.replace(bound.metrics)?;
    let pid_file = settings.pid_file.clone();
    let listeners = Arc::new(Listeners::new(proxy.clone()));
    let mut first = None;
    for (addr, l) in bound.listen {
        let local = listeners
            .start(addr, l)
            .map_err(|source| ServeError::Bind { addr, source })?;
        first.get_or_insert(local);
    }
    proxy.restart_upstream_tasks();
    let reloads = Reloads {
        proxy: proxy.clone(),
        listeners: listeners.clone(),
        metrics,
    };
    let tasks = [
        tokio::spawn(reload_on_sighup(reloads)),
        tokio::spawn(reload_on_file_change(proxy.clone())),
        tokio::spawn(watch_expiry(proxy.clone())),
        tokio::spawn(follow_vault_events(proxy.clone())),
    ];
    if let Some(local) = first {
        on_listen(local);
    }
    shutdown.await;
    let clean = listeners
        .shutdown(proxy.live.load().settings.limits.shutdown_timeout)
        .await;
    for t in tasks {
        t.abort();
    }
    proxy.stop_upstream_tasks();
    if let Some(f) = &pid_file {
        let _ = std::fs::remove_file(f);
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

/// The Prometheus listener, replaced when a reload changes its address.
#[derive(Default)]
struct MetricsListener {
    current: std::sync::Mutex<Option<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl MetricsListener {
    /// The configured address being served.
    fn current(&self) -> Option<SocketAddr> {
        let cur = self.current.locked();
        cur.as_ref().map(|(a, _)| *a)
    }

    /// Serves metrics on `next` (bound by the caller, so a failure to bind
    /// changes nothing) and stops the previous listener.
    fn replace(&self, next: Option<(SocketAddr, TcpListener)>) -> Result<(), ServeError> {
        let next = match next {
            None => None,
            Some((addr, l)) => {
                let local = l
                    .local_addr()
                    .map_err(|source| ServeError::Bind { addr, source })?;
                println!("metrics {local}");
                let task = tokio::spawn(crate::telemetry::serve_metrics(
                    l,
                    crate::telemetry::install_recorder(),
                ));
                Some((addr, task))
            }
        };
        let old = std::mem::replace(&mut *self.current.locked(), next);
        if let Some((_, task)) = old {
            task.abort();
        }
        Ok(())
    }
}

/// Binds `addr` if it is not what is served already: `Ok(None)` means
/// nothing to change.
async fn bind_metrics(
    metrics: &MetricsListener,
    addr: Option<SocketAddr>,
) -> Result<Option<Option<(SocketAddr, TcpListener)>>, ServeError> {
    if metrics.current() == addr {
        return Ok(None);
    }
    Ok(Some(match addr {
        Some(a) => Some((a, listeners::bind(a).await?)),
        None => None,
    }))
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        if let Some((_, task)) = self.current.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// What a config reload changes besides the live generation.
struct Reloads {
    proxy: Arc<Proxy>,
    listeners: Arc<Listeners>,
    metrics: MetricsListener,
}

/// SIGHUP re-reads the config file (or, for a proxy started without one,
/// the certificates); a failed reload keeps what runs and says why.
async fn reload_on_sighup(reloads: Reloads) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if reloads.proxy.config_path.is_some() {
            reload_config(&reloads).await;
        } else {
            reload_certs(&reloads.proxy, "SIGHUP").await;
        }
    }
}

/// Watches the certificate files: a file replaced (new inode, as an atomic
/// rename makes) or rewritten (size, mtime) reloads the store within about
/// a second, without a signal. Polling a handful of paths costs nothing
/// and needs no inotify.
async fn reload_on_file_change(proxy: Arc<Proxy>) {
    use std::os::unix::fs::MetadataExt;
    let files = |p: &Proxy| -> Vec<std::path::PathBuf> {
        p.live
            .load()
            .settings
            .certs
            .iter()
            .map(|c| c.cert.clone())
            .collect()
    };
    let stamp = |files: &[std::path::PathBuf]| {
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
            })
            .collect::<Vec<_>>()
    };
    let mut last = stamp(&files(&proxy));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&files(&proxy));
        if now != last {
            // Remember it even if the reload fails: retry on the next change.
            last = now;
            reload_certs(&proxy, "certificate file changed").await;
        }
    }
}

/// Follows the vault's key events (pushed, no polling): when a key the
/// proxy serves changes — rotated, a certificate bound to a version,
/// enabled or disabled — the certificates reload, so a chain bound in the
/// vault to the new primary version is served at once. Reconnects (and
/// catches up) after the vault restarts; tries each socket in order.
async fn follow_vault_events(proxy: Arc<Proxy>) {
    if proxy.pool.is_none() {
        return;
    }
    let serves = |proxy: &Proxy, key: &str| {
        key == "*"
            || proxy
                .live
                .load()
                .settings
                .certs
                .iter()
                .any(|c| matches!(&c.key, crate::config::proxy::KeyRef::Vault(n) if n == key))
    };
    let sockets = proxy.settings.vault_sockets.clone();
    let why = "new certificates arrive by file change or SIGHUP only (\"cert-get\" is needed too)";
    crate::client::follow_key_events(sockets, Duration::from_secs(5), why, |followed| {
        let proxy = proxy.clone();
        async move {
            use crate::client::Followed;
            match followed {
                // Whatever changed while nobody listened.
                Followed::Subscribed { again: true } => {
                    reload_certs(&proxy, "vault reconnected").await
                }
                Followed::Event(e) if serves(&proxy, &e.key) => {
                    reload_certs(&proxy, "vault key changed").await
                }
                _ => {}
            }
        }
    })
    .await
}

/// Publishes each certificate's seconds to expiry
/// (`vaultgate_proxy_cert_expiry_seconds{cert}`) and warns, at most hourly
/// per certificate, while one expires within `cert_expiry_warning`.
async fn watch_expiry(proxy: Arc<Proxy>) {
    let mut warned: std::collections::HashMap<std::path::PathBuf, Instant> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let live = proxy.live.load_full();
        for spec in &live.settings.certs {
            let Ok(left) = crate::pki::seconds_to_expiry(&spec.cert) else {
                continue;
            };
            let label = spec.cert.display().to_string();
            metrics::gauge!("vaultgate_proxy_cert_expiry_seconds", "cert" => label.clone())
                .set(left as f64);
            let window = live.settings.cert_expiry_warning.as_secs() as i64;
            let due = warned
                .get(&spec.cert)
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
            if left < window && due {
                tracing::warn!(cert = %label, names = ?spec.names, seconds_left = left, "certificate expires soon");
                warned.insert(spec.cert.clone(), Instant::now());
            }
        }
    }
}

/// Re-reads the whole config; an invalid one changes nothing, and the
/// error (file, line, column) is logged and counted. New listen addresses
/// are bound before anything changes, so an address in use refuses the
/// reload as a bad file would; removed ones stop accepting and drain.
async fn reload_config(r: &Reloads) {
    let outcome = apply_reload(r).await;
    let result = if outcome.is_ok() { "ok" } else { "error" };
    metrics::counter!("vaultgate_proxy_config_reloads_total", "result" => result).increment(1);
    match outcome {
        Ok(ignored) => {
            if !ignored.is_empty() {
                tracing::warn!(?ignored, "these settings change only on restart");
            }
            tracing::info!("config reloaded");
        }
        Err(e) => tracing::error!(error = %e, "config reload failed; the running config stays"),
    }
}

async fn apply_reload(r: &Reloads) -> Result<Vec<&'static str>, String> {
    let p = r.proxy.clone();
    let new = tokio::task::spawn_blocking(move || p.read_config())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let open = r.listeners.configured();
    let mut added = Vec::new();
    for &addr in new.listen.iter().filter(|a| !open.contains(a)) {
        added.push((
            addr,
            listeners::bind(addr).await.map_err(|e| e.to_string())?,
        ));
    }
    let removed: Vec<SocketAddr> = open
        .into_iter()
        .filter(|a| !new.listen.contains(a))
        .collect();
    let metrics = bind_metrics(&r.metrics, new.metrics_listen)
        .await
        .map_err(|e| e.to_string())?;
    let max_connections = new.limits.max_connections;
    let drain = new.limits.shutdown_timeout;
    let p = r.proxy.clone();
    let ignored = tokio::task::spawn_blocking(move || p.apply_config(new))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    r.proxy.restart_upstream_tasks();
    if let Some(m) = metrics {
        r.metrics.replace(m).map_err(|e| e.to_string())?;
    }
    for (addr, l) in added {
        if let Err(e) = r.listeners.start(addr, l) {
            tracing::error!(%addr, error = %e, "cannot serve a new listener");
        }
    }
    for addr in removed {
        r.listeners.stop(addr, drain);
    }
    r.listeners.resize(max_connections);
    Ok(ignored)
}

async fn reload_certs(proxy: &Arc<Proxy>, why: &'static str) {
    let p = proxy.clone();
    match tokio::task::spawn_blocking(move || p.reload_certs()).await {
        Ok(Ok(())) => {
            metrics::counter!("vaultgate_proxy_cert_reloads_total", "result" => "ok").increment(1);
            tracing::info!(why, "certificates reloaded");
        }
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_cert_reloads_total", "result" => "error")
                .increment(1);
            tracing::error!(why, error = %e, "certificate reload failed; keeping the current certificates");
        }
        Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
    }
}

#[cfg(test)]
mod tests {
    fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_holds_little_more_than_its_tls_stream() {
        // The TLS stream is 1.2 KB of it; hyper's connection took 4.7 KB.
        let size = returned_size(super::connection);
        eprintln!("connection future: {size} bytes");
        assert!(size < 2560, "{size} bytes");
    }
}
