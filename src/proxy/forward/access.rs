//! The access log: one structured line per request, written when the
//! response body ends (so sizes and total time are final), plus the
//! per-request metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::http::uri::PathAndQuery;
use hyper::Method;

use super::upstream::{Backend, Upstream};

/// Facts about the TLS connection a request came on, and its private
/// backend connections (PROXY protocol upstreams).
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The client's address as forwarding headers carry it.
    pub client_ip: super::headers::ClientIp,
    /// The proxy's address the client connected to.
    pub local: SocketAddr,
    pub sni: Option<String>,
    pub tls_version: String,
    pub cipher: String,
    pub alpn: Option<String>,
    pub resumed: bool,
    pub per_client: crate::proxy::origin::per_client::PerClientPools,
    pub activity: Activity,
}

/// Requests in flight on a connection and when the last one started or
/// ended, for the idle keep-alive timeout.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicU64,
    /// Whether any request has begun on the connection.
    started: std::sync::atomic::AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard is dropped, which
    /// happens however the request ends (a cancelled HTTP/2 stream drops
    /// the handler without finishing it).
    pub fn begin(conn: &Arc<ConnInfo>) -> InFlight {
        conn.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.activity.started.store(true, Ordering::Relaxed);
        conn.activity.touch();
        InFlight(conn.clone())
    }
}

/// See [`Activity::begin`].
pub struct InFlight(Arc<ConnInfo>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.activity.touch();
    }
}

impl ConnInfo {
    /// How long the connection has had no request in flight (zero while
    /// one is).
    /// Whether a request has begun on this connection: until then a
    /// client that sends nothing whole is held to the header timeout.
    pub fn any_request(&self) -> bool {
        self.activity.started.load(Ordering::Relaxed)
    }

    pub fn idle_for(&self) -> Duration {
        let a = &self.activity;
        if a.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        a.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(a.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a finished request. The metric handles are looked up once per
/// thread and status, not per request (a lookup formats the label and
/// hashes the key).
fn count_request(status: u16, total: Duration) {
    thread_local! {
        static BY_STATUS: std::cell::RefCell<Vec<(u16, metrics::Counter)>> =
            const { std::cell::RefCell::new(Vec::new()) };
        static SECONDS: metrics::Histogram = metrics::histogram!("vaultgate_proxy_request_seconds");
    }
    BY_STATUS.with_borrow_mut(|known| match known.iter().find(|(s, _)| *s == status) {
        Some((_, c)) => c.increment(1),
        None => {
            let c =
                metrics::counter!("vaultgate_proxy_requests_total", "status" => status.to_string());
            c.increment(1);
            known.push((status, c));
        }
    });
    SECONDS.with(|h| h.record(total.as_secs_f64()));
}

/// What the request body did, as it streamed to the backend.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    /// The client's body broke (a bad chunk, a reset stream).
    pub failed: std::sync::atomic::AtomicBool,
}

/// Everything about one request but its response size. Cheap to build:
/// the method, path and upstream are shared, not copied.
pub struct AccessRecord {
    pub enabled: bool,
    pub conn: Arc<ConnInfo>,
    pub method: Method,
    pub host: String,
    pub path: PathAndQuery,
    pub status: u16,
    pub body: Arc<BodyStats>,
    pub upstream: Option<Arc<Upstream>>,
    pub backend: Option<Arc<Backend>>,
    pub upstream_time: Option<Duration>,
    pub start: Instant,
    /// Held for its `Drop`: the connection counts the request until the
    /// record is dropped.
    pub _in_flight: InFlight,
}

impl AccessRecord {
    pub fn upstream_name(&self) -> &str {
        self.upstream.as_ref().map_or("-", |u| u.spec.name.as_str())
    }

    pub fn finish(self, bytes_out: u64) {
        if let Some(b) = &self.backend {
            b.active.fetch_sub(1, Ordering::Relaxed);
        }
        let total = self.start.elapsed();
        count_request(self.status, total);
        if !self.enabled {
            return;
        }
        let c = &self.conn;
        tracing::info!(
            target: "vaultgate::access",
            client = %c.client,
            sni = c.sni.as_deref().unwrap_or("-"),
            // Client-controlled text is quoted and escaped (Debug), so a
            // crafted path cannot forge fields or lines in the log.
            method = ?self.method.as_str(),
            host = ?self.host,
            path = ?self.path.as_str(),
            status = self.status,
            bytes_in = self.body.bytes.load(Ordering::Relaxed),
            bytes_out,
            upstream = %self.upstream_name(),
            backend = %self.backend.as_ref().map_or("-".to_owned(), |b| b.addr.to_string()),
            upstream_ms = self.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
            total_ms = total.as_secs_f64() * 1000.0,
            tls = %c.tls_version,
            cipher = %c.cipher,
            alpn = c.alpn.as_deref().unwrap_or("-"),
            resumed = c.resumed,
            "request"
        );
    }
}
