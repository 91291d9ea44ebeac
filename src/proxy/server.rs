//! The accept loop and per-connection work: connection limit, TLS
//! handshake with a deadline, HTTP/1.1 + HTTP/2 serving, idle keep-alive
//! timeout, and graceful shutdown (stop accepting, let in-flight requests
//! finish, up to a deadline).
//!
//! Every connection task holds a receiver of one `watch` channel: sending
//! on it asks each connection to finish gracefully (HTTP/2 GOAWAY, HTTP/1
//! close after the current response), and the sender's `closed()` resolves
//! once the last connection is gone: that is the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::forward::access::ConnInfo;
use super::forward::{self, Forwarder};
use super::Proxy;

/// Serves `listener` until `shutdown` resolves, then drains. Returns
/// whether every connection finished within the shutdown deadline.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let limits = proxy.settings.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Rebuilt only when a reload replaces the live generation.
    let mut generation = proxy.live.load_full();
    let mut acceptor = TlsAcceptor::from(generation.tls.clone());
    let mut http = Arc::new(http_builder(&generation.settings));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait and retry
                    // rather than end the server.
                    tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let live = proxy.live.load_full();
        if !Arc::ptr_eq(&live, &generation) {
            acceptor = TlsAcceptor::from(live.tls.clone());
            http = Arc::new(http_builder(&live.settings));
            generation = live;
        }
        tokio::spawn(connection(
            tcp,
            peer,
            acceptor.clone(),
            http.clone(),
            generation.forwarder.clone(),
            generation.settings.limits.clone(),
            permit,
            drain_rx.clone(),
        ));
    }
    drop(listener);
    drop(drain_rx);
    tracing::info!("shutting down: no longer accepting; draining connections");
    let _ = drain_tx.send(true);
    match tokio::time::timeout(limits.shutdown_timeout, drain_tx.closed()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                "shutdown deadline {:?} passed with connections still open",
                limits.shutdown_timeout
            );
            false
        }
    }
}

fn http_builder(settings: &crate::config::proxy::ProxySettings) -> auto::Builder<TokioExecutor> {
    let l = &settings.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper runs this timer whenever it waits for a request head, which
    // includes an idle keep-alive connection: it is the HTTP/1 idle timeout too.
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

#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    http: Arc<auto::Builder<TokioExecutor>>,
    fwd: Arc<Forwarder>,
    limits: crate::config::proxy::Limits,
    permit: OwnedSemaphorePermit,
    mut drain: watch::Receiver<bool>,
) {
    let _permit = permit;
    let _open = OpenGauge::new();
    let Ok(local) = tcp.local_addr() else { return };
    let start = Instant::now();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => failure_reason(&e)).increment(1);
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("vaultgate_proxy_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
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
    let service = {
        let info = info.clone();
        hyper::service::service_fn(move |req| forward::handle(req, fwd.clone(), info.clone()))
    };
    let conn = http.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    // Checked a few times per timeout period: exactness is not needed,
    // closing idle connections eventually is.
    let mut idle_check =
        tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut closing = *drain.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = drain.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle_check.tick(), if !closing => {
                if info.idle_for() >= limits.idle_timeout {
                    closing = true;
                    metrics::counter!("vaultgate_proxy_idle_closes_total").increment(1);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

fn failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(m)) if m.starts_with("vault") => "vault",
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
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

/// [`run`] until SIGTERM/SIGINT, from outside the runtime. The accept loop
/// runs on a worker thread rather than the calling one, so the connection
/// tasks it spawns go to that worker's own queue without a cross-thread
/// wake-up.
pub fn run_until_signal(
    rt: &tokio::runtime::Runtime,
    proxy: Arc<Proxy>,
    on_listen: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<bool, ServeError> {
    let task = rt.spawn(run(proxy, crate::os::shutdown_signal(), on_listen));
    rt.block_on(task)
        .map_err(|e| ServeError::Task(e.to_string()))?
}

/// Binds the proxy's listener (and the metrics listener, if configured),
/// prints `listen ADDR` / `metrics ADDR` on stdout (the addresses actually
/// bound, so port 0 works), starts health checks and serves until
/// `shutdown`. Returns whether the drain finished in time.
pub async fn run(
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<bool, ServeError> {
    let addr = proxy.settings.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let mut tasks = Vec::new();
    if let Some(maddr) = proxy.settings.metrics_listen {
        let ml = TcpListener::bind(maddr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: maddr,
                source,
            })?;
        let mlocal = ml.local_addr().map_err(|source| ServeError::Bind {
            addr: maddr,
            source,
        })?;
        println!("metrics {mlocal}");
        tasks.push(tokio::spawn(crate::telemetry::serve_metrics(
            ml,
            crate::telemetry::install_recorder(),
        )));
    }
    proxy.restart_health_checks();
    tasks.push(tokio::spawn(reload_on_sighup(proxy.clone())));
    tasks.push(tokio::spawn(reload_on_file_change(proxy.clone())));
    tasks.push(tokio::spawn(watch_expiry(proxy.clone())));
    let pid_file = proxy.settings.pid_file.clone();
    if let Some(f) = &pid_file {
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty());
        dir.map_or(Ok(()), |d| crate::fsutil::ensure_dir(d, 0o755))
            .and_then(|()| {
                crate::fsutil::write_atomic(
                    f,
                    format!("{}\n", std::process::id()).as_bytes(),
                    0o644,
                )
            })
            .map_err(|source| ServeError::PidFile {
                path: f.clone(),
                source,
            })?;
    }
    println!("listen {local}");
    tracing::info!(%local, "proxy listening");
    on_listen(local);
    let clean = serve(proxy.clone(), listener, shutdown).await;
    for t in tasks {
        t.abort();
    }
    proxy.stop_health_checks();
    if let Some(f) = &pid_file {
        let _ = std::fs::remove_file(f);
    }
    Ok(clean)
}

/// SIGHUP reloads the certificates (files and vault key lookups) and swaps
/// the store; a failed reload keeps the old store and says why.
async fn reload_on_sighup(proxy: Arc<Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if proxy.config_path.is_some() {
            reload_config(&proxy).await;
        } else {
            reload_certs(&proxy, "SIGHUP").await;
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
/// error (file, line, column) is logged and counted.
async fn reload_config(proxy: &Arc<Proxy>) {
    let p = proxy.clone();
    match tokio::task::spawn_blocking(move || p.reload_config()).await {
        Ok(Ok(ignored)) => {
            metrics::counter!("vaultgate_proxy_config_reloads_total", "result" => "ok")
                .increment(1);
            if !ignored.is_empty() {
                tracing::warn!(?ignored, "these settings change only on restart");
            }
            tracing::info!("config reloaded");
        }
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_config_reloads_total", "result" => "error")
                .increment(1);
            tracing::error!(error = %e, "config reload failed; the running config stays");
        }
        Err(e) => tracing::error!(error = %e, "config reload task failed"),
    }
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
