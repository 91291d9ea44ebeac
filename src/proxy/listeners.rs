//! The set of listening sockets and their accept loops.
//!
//! Each listener has one `watch` channel: its accept loop and every
//! connection it accepted hold a receiver. Sending `true` stops the accept
//! loop and asks those connections to finish gracefully (HTTP/2 GOAWAY,
//! HTTP/1 close after the current response); the sender's `closed()`
//! resolves once the last of them is gone, which is the drain. A reload
//! that removes an address drains that listener alone; shutdown drains
//! them all. The connection limit is one semaphore across listeners, so it
//! holds however many addresses are configured; a connection accepted
//! while it is exhausted is reset at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::connection::{connection, Serving};
use super::Proxy;
use crate::sync::Locked;

/// The listeners being served, by the address the config names (so
/// `127.0.0.1:0` stays the same listener across reloads).
pub struct Listeners {
    proxy: Arc<Proxy>,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    open: Vec<Listening>,
    max_connections: usize,
}

struct Listening {
    configured: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// An address that could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr`; `SO_REUSEADDR` as every server sets it, so a restart
/// does not wait for `TIME_WAIT`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

impl Listeners {
    pub fn new(proxy: Arc<Proxy>) -> Listeners {
        let max_connections = proxy.live.load().settings.limits.max_connections;
        Listeners {
            proxy,
            permits: Arc::new(Semaphore::new(max_connections)),
            state: Mutex::new(State {
                open: Vec::new(),
                max_connections,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// The addresses actually bound, in the order they were started.
    pub fn local(&self) -> Vec<SocketAddr> {
        self.state().open.iter().map(|l| l.local).collect()
    }

    /// The configured addresses being served.
    pub fn configured(&self) -> Vec<SocketAddr> {
        self.state().open.iter().map(|l| l.configured).collect()
    }

    /// Starts accepting on a bound listener; prints `listen ADDR` (the
    /// address actually bound, so port 0 can be found) and returns it.
    pub fn start(
        &self,
        configured: SocketAddr,
        listener: TcpListener,
    ) -> std::io::Result<SocketAddr> {
        let local = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            self.proxy.clone(),
            listener,
            self.permits.clone(),
            stop_rx,
        ));
        self.state().open.push(Listening {
            configured,
            local,
            stop,
        });
        println!("listen {local}");
        tracing::info!(%local, "proxy listening");
        Ok(local)
    }

    /// Stops accepting on `configured` and drains its connections in the
    /// background, up to `deadline`.
    pub fn stop(&self, configured: SocketAddr, deadline: Duration) {
        let gone = {
            let mut st = self.state();
            let at = st.open.iter().position(|l| l.configured == configured);
            at.map(|i| st.open.remove(i))
        };
        let Some(l) = gone else { return };
        let _ = l.stop.send(true);
        tracing::info!(local = %l.local, "listener removed; draining its connections");
        tokio::spawn(async move {
            if tokio::time::timeout(deadline, l.stop.closed())
                .await
                .is_err()
            {
                tracing::warn!(local = %l.local, "listener drain deadline {deadline:?} passed with connections still open");
            }
        });
    }

    /// Follows a new `max_connections`: more permits at once; fewer as
    /// connections close (the connections already open are not cut).
    pub fn resize(&self, max: usize) {
        let old = std::mem::replace(&mut self.state().max_connections, max);
        if max > old {
            self.permits.add_permits(max - old);
        } else if max < old {
            let fewer = u32::try_from(old - max).unwrap_or(u32::MAX);
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(fewer).await {
                    p.forget();
                }
            });
        }
    }

    /// Stops every listener and waits, up to `deadline`, for every
    /// connection to finish. Returns whether they all did.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let all = std::mem::take(&mut self.state().open);
        for l in &all {
            let _ = l.stop.send(true);
        }
        tracing::info!("shutting down: no longer accepting; draining connections");
        let drained = async {
            for l in &all {
                l.stop.closed().await;
            }
        };
        match tokio::time::timeout(deadline, drained).await {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!("shutdown deadline {deadline:?} passed with connections still open");
                false
            }
        }
    }
}

/// Accepts until told to stop. A reload that swaps the live generation
/// changes the TLS config and HTTP settings of the connections accepted
/// after it.
async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut generation = proxy.live.load_full();
    let mut serving = Arc::new(Serving::new(&generation));
    let mut backoff = Duration::from_millis(5);
    let mut shed_warned: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
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
            _ = stop.changed() => break,
        };
        // At the limit, a new connection is reset at once (as nginx does
        // when worker_connections run out, and Envoy past its limit)
        // rather than left in the listen queue, where a client would wait
        // for a slot behind every flood connection and learn nothing.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shed(tcp, &mut shed_warned);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let live = proxy.live.load_full();
        if !Arc::ptr_eq(&live, &generation) {
            serving = Arc::new(Serving::new(&live));
            generation = live;
        }
        tokio::spawn(connection(tcp, peer, serving.clone(), permit, stop.clone()));
    }
}

/// Closes a connection accepted beyond `max_connections` with a reset
/// (zero linger: no FIN handshake, no TIME_WAIT held on our side), counts
/// it and warns at most once a minute.
fn shed(tcp: tokio::net::TcpStream, warned: &mut Option<std::time::Instant>) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
    metrics::counter!("vaultgate_proxy_connections_shed_total").increment(1);
    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
        *warned = Some(std::time::Instant::now());
        tracing::warn!("max_connections reached: new connections are being reset");
    }
}

/// The Prometheus listener (and the status page), replaced when a reload
/// changes its address.
pub(crate) struct MetricsListener {
    current: std::sync::Mutex<Option<(SocketAddr, tokio::task::JoinHandle<()>)>>,
    status: Option<crate::telemetry::StatusPage>,
}

impl MetricsListener {
    pub fn new(status: Option<crate::telemetry::StatusPage>) -> MetricsListener {
        MetricsListener {
            current: std::sync::Mutex::new(None),
            status,
        }
    }

    /// The configured address being served.
    pub fn current(&self) -> Option<SocketAddr> {
        let cur = self.current.locked();
        cur.as_ref().map(|(a, _)| *a)
    }

    /// Serves metrics on `next` (bound by the caller, so a failure to bind
    /// changes nothing) and stops the previous listener.
    pub fn replace(&self, next: Option<(SocketAddr, TcpListener)>) -> Result<(), BindError> {
        let next = match next {
            None => None,
            Some((addr, l)) => {
                let local = l
                    .local_addr()
                    .map_err(|source| BindError { addr, source })?;
                println!("metrics {local}");
                let task = tokio::spawn(crate::telemetry::serve_metrics(
                    l,
                    crate::telemetry::install_recorder(),
                    crate::telemetry::Process::Proxy,
                    self.status.clone(),
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

impl Drop for MetricsListener {
    fn drop(&mut self) {
        if let Some((_, task)) = self.current.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Binds `addr` if it is not what is served already: `Ok(None)` means
/// nothing to change.
pub(crate) async fn bind_metrics(
    metrics: &MetricsListener,
    addr: Option<SocketAddr>,
) -> Result<Option<Option<(SocketAddr, TcpListener)>>, BindError> {
    if metrics.current() == addr {
        return Ok(None);
    }
    Ok(Some(match addr {
        Some(a) => Some((a, bind(a).await?)),
        None => None,
    }))
}
