//! The access log: one structured line per request, written when the
//! response body ends (so sizes and total time are final), plus the
//! per-request metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
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
    /// `None` when `access_log = false`.
    pub log: Option<Arc<super::access_log::AccessLog>>,
    pub conn: Arc<ConnInfo>,
    pub method: Method,
    pub host: String,
    pub path: PathAndQuery,
    pub version: hyper::Version,
    /// The client's `X-Request-Id`, or one made for the request; the
    /// backend is sent the same.
    pub request_id: HeaderValue,
    /// Kept only when there is an access log.
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
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
        let Some(log) = &self.log else {
            return;
        };
        let c = &self.conn;
        log.write(&super::access_log::Line {
            time: std::time::SystemTime::now(),
            request_id: self.request_id.as_bytes(),
            client: c.client,
            sni: c.sni.as_deref(),
            method: self.method.as_str(),
            host: &self.host,
            path: self.path.as_str(),
            version: self.version,
            status: self.status,
            bytes_in: self.body.bytes.load(Ordering::Relaxed),
            bytes_out,
            referer: self.referer.as_ref().map(HeaderValue::as_bytes),
            user_agent: self.user_agent.as_ref().map(HeaderValue::as_bytes),
            upstream: self.upstream_name(),
            backend: self.backend.as_ref().map(|b| b.addr),
            upstream_time: self.upstream_time,
            total,
            tls: &c.tls_version,
            cipher: &c.cipher,
            alpn: c.alpn.as_deref(),
            resumed: c.resumed,
        });
    }
}

/// The header a request id travels in, to the backend and from a client
/// (or a balancer in front) that already made one.
pub const REQUEST_ID: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-request-id");

/// The client's `X-Request-Id` when it is a plausible id (1 to 128
/// visible ASCII characters, no quotes or backslashes), so a request is
/// traced under one id across the balancer, the proxy and the backend;
/// otherwise a new one, 32 hex digits of randomness (as nginx's
/// `$request_id`).
pub fn request_id(headers: &hyper::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        let plausible = (1..=128).contains(&b.len())
            && b.iter()
                .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\');
        if plausible {
            return v.clone();
        }
    }
    let id: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, byte) in id.to_be_bytes().iter().enumerate() {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex[2 * i] = DIGITS[usize::from(byte >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}
