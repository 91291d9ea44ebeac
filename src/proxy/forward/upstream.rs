//! Upstreams: their backends, live health state and balancing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::config::proxy::{Balance, UpstreamSpec};
use crate::proxy::origin::Pool;

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Set by the active health check (always true without one).
    pub healthy: AtomicBool,
    /// Passive ejection: out until this many ms after `epoch`.
    down_until_ms: AtomicU64,
    /// Requests in flight, for least-conn.
    pub active: AtomicUsize,
    /// Keep-alive connections to it, shared by every client.
    pub pool: Arc<Pool>,
}

impl Backend {
    pub fn available(&self, epoch: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && epoch.elapsed().as_millis() as u64 >= self.down_until_ms.load(Ordering::Relaxed)
    }
}

/// Pool keep-alive connections kept per backend (nginx's `keepalive` is
/// per worker; this is per proxy).
const MAX_IDLE: usize = 256;

/// A named group of backends with its balancing policy and client.
pub struct Upstream {
    pub spec: UpstreamSpec,
    pub backends: Vec<Arc<Backend>>,
    /// Connections for `h2c` upstreams.
    pub h2c: crate::proxy::origin::h2c::H2cPool,
    /// Time to the answer's head, per request (the handle is looked up
    /// once, not per request).
    pub upstream_seconds: metrics::Histogram,
    /// Index into `backends` per weight unit: weighted round robin.
    schedule: Vec<usize>,
    rr: AtomicUsize,
    ring: Option<pingora_ketama::Continuum>,
    epoch: Instant,
}

impl Upstream {
    /// Whether `b` (one of this upstream's) takes requests now: healthy
    /// and not ejected.
    pub fn is_available(&self, b: &Backend) -> bool {
        b.available(self.epoch)
    }

    pub fn new(spec: UpstreamSpec) -> Upstream {
        let backends: Vec<Arc<Backend>> = spec
            .backends
            .iter()
            .map(|b| {
                Arc::new(Backend {
                    addr: b.addr,
                    weight: b.weight,
                    healthy: AtomicBool::new(true),
                    down_until_ms: AtomicU64::new(0),
                    active: AtomicUsize::new(0),
                    pool: Arc::new(Pool::new(b.addr, spec.connect_timeout, None, MAX_IDLE)),
                })
            })
            .collect();
        let mut schedule = Vec::new();
        // Interleave weights (a b a b a) rather than runs (a a a b b).
        let max = spec.backends.iter().map(|b| b.weight).max().unwrap_or(1);
        for round in 0..max {
            for (i, b) in spec.backends.iter().enumerate() {
                if b.weight > round {
                    schedule.push(i);
                }
            }
        }
        let ring = match spec.balance {
            Balance::HashClientIp | Balance::HashHeader(_) => {
                let buckets: Vec<_> = spec
                    .backends
                    .iter()
                    .map(|b| pingora_ketama::Bucket::new(b.addr, b.weight))
                    .collect();
                Some(pingora_ketama::Continuum::new(&buckets))
            }
            _ => None,
        };
        let upstream_seconds = metrics::histogram!("vaultgate_proxy_upstream_seconds", "upstream" => spec.name.clone());
        Upstream {
            upstream_seconds,
            spec,
            backends,
            h2c: Default::default(),
            schedule,
            rr: AtomicUsize::new(0),
            ring,
            epoch: Instant::now(),
        }
    }

    /// Chooses an available backend, skipping `exclude` (one that just
    /// failed). `hash_key` is the client IP or header value for hashing.
    pub fn pick(
        &self,
        client_ip: IpAddr,
        header_value: Option<&[u8]>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let ok = |i: usize| Some(i) != exclude && self.backends[i].available(self.epoch);
        match &self.spec.balance {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| self.schedule[(start + k) % n])
                    .find(|&i| ok(i))
            }
            Balance::LeastConn => (0..self.backends.len())
                .filter(|&i| ok(i))
                .min_by_key(|&i| {
                    let b = &self.backends[i];
                    // Compare active/weight without division: scale by the
                    // product of the other weights is overkill; 1000x suffices.
                    b.active.load(Ordering::Relaxed) * 1000 / b.weight.max(1) as usize
                }),
            Balance::HashClientIp | Balance::HashHeader(_) => {
                let ring = self.ring.as_ref()?;
                let ip_text;
                let key: &[u8] = match (&self.spec.balance, header_value) {
                    (Balance::HashHeader(_), Some(v)) => v,
                    _ => {
                        ip_text = client_ip.to_string();
                        ip_text.as_bytes()
                    }
                };
                // Each weight unit is 160 points on the ring; walking that
                // many visits every backend at least once.
                let points = 160
                    * self
                        .spec
                        .backends
                        .iter()
                        .map(|b| b.weight as usize)
                        .sum::<usize>();
                ring.node_iter(key)
                    .take(points + 1)
                    .filter_map(|addr| self.backends.iter().position(|b| b.addr == *addr))
                    .find(|&i| ok(i))
            }
        }
    }

    /// Closes idle backend connections that expired or were closed by
    /// their backend; called now and then so a quiet proxy lets them go.
    pub fn prune_idle(&self) {
        for b in &self.backends {
            b.pool.prune();
        }
    }

    /// Passive ejection after a connect failure. With an active health
    /// check the backend stays out until the check passes again; without,
    /// for `fail_timeout`.
    pub fn eject(&self, i: usize, why: &str) {
        let b = &self.backends[i];
        let until = self.epoch.elapsed() + self.spec.fail_timeout;
        b.down_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        if self.spec.health.is_some() {
            b.healthy.store(false, Ordering::Relaxed);
            // The health check decides when it is back.
            b.down_until_ms.store(0, Ordering::Relaxed);
        }
        metrics::counter!("vaultgate_proxy_backend_ejections_total", "upstream" => self.spec.name.clone(), "backend" => b.addr.to_string()).increment(1);
        metrics::gauge!("vaultgate_proxy_backend_up", "upstream" => self.spec.name.clone(), "backend" => b.addr.to_string()).set(0.0);
        tracing::warn!(upstream = %self.spec.name, backend = %b.addr, reason = why, "backend ejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::BackendSpec;
    use std::time::Duration;

    fn upstream(balance: Balance, weights: &[u32]) -> Upstream {
        Upstream::new(UpstreamSpec {
            name: "t".into(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendSpec {
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: *w,
                })
                .collect(),
            balance,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            fail_timeout: Duration::from_secs(60),
            ..UpstreamSpec::default()
        })
    }

    fn ip() -> IpAddr {
        IpAddr::from([10, 0, 0, 1])
    }

    #[tokio::test]
    async fn weighted_round_robin_skips_ejected_backends() {
        let u = upstream(Balance::RoundRobin, &[2, 1]);
        let picks: Vec<_> = (0..6).map(|_| u.pick(ip(), None, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4);
        u.eject(0, "test");
        assert!((0..5).all(|_| u.pick(ip(), None, None) == Some(1)));
        u.eject(1, "test");
        assert_eq!(u.pick(ip(), None, None), None);
    }

    #[tokio::test]
    async fn hashing_is_sticky_and_fails_over() {
        let u = upstream(Balance::HashHeader("x-user".into()), &[1, 1, 1]);
        let first = u.pick(ip(), Some(b"alice"), None).unwrap();
        assert!((0..10).all(|_| u.pick(ip(), Some(b"alice"), None) == Some(first)));
        let other = u.pick(ip(), Some(b"alice"), Some(first)).unwrap();
        assert_ne!(other, first);
    }

    #[tokio::test]
    async fn least_conn_prefers_the_idle_backend() {
        let u = upstream(Balance::LeastConn, &[1, 1]);
        u.backends[0].active.store(3, Ordering::Relaxed);
        assert_eq!(u.pick(ip(), None, None), Some(1));
    }
}
