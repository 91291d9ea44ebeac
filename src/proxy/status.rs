//! The status page, as HAProxy's stats page is for HAProxy: on the
//! metrics listener, read-only, `/status` (one self-contained HTML page,
//! no outside assets) and its data at `/status.json` — listeners,
//! upstreams and their backends' health, certificates with their expiry
//! and the key version serving them, the vault connections. Rates,
//! latencies and the live charts come from `/metrics`, which the page
//! reads too, so the page and Prometheus never disagree.

use std::sync::Arc;

use serde_json::{json, Value};

use super::listeners::Listeners;
use super::Proxy;
use crate::config::proxy::{Balance, HostPattern};

/// The page and its JSON for this proxy.
pub fn page(proxy: Arc<Proxy>, listeners: Arc<Listeners>) -> crate::telemetry::StatusPage {
    let started = std::time::SystemTime::now();
    crate::telemetry::StatusPage {
        html: include_str!("status.html"),
        json: Arc::new(move || snapshot(&proxy, &listeners, started).to_string()),
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn snapshot(proxy: &Proxy, listeners: &Listeners, started: std::time::SystemTime) -> Value {
    let live = proxy.live.load_full();
    let settings = &live.settings;
    let listening: Vec<Value> = listeners
        .configured()
        .iter()
        .zip(listeners.local())
        .map(|(configured, local)| json!({"configured": configured.to_string(), "local": local.to_string()}))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started": unix(started),
        "now": unix(std::time::SystemTime::now()),
        "config": proxy.config_path.as_ref().map(|p| p.display().to_string()),
        "max_connections": settings.limits.max_connections,
        "listeners": listening,
        "routes": settings.routes.iter().map(|r| json!({
            "host": match &r.host {
                HostPattern::Any => "*".to_owned(),
                HostPattern::Exact(h) => h.clone(),
                HostPattern::Wildcard(s) => format!("*{s}"),
            },
            "path": r.path_prefix,
            "upstream": r.upstream,
        })).collect::<Vec<_>>(),
        "upstreams": upstreams(&live.forwarder),
        "certs": certs(proxy),
        "vault": vault(proxy),
    })
}

fn upstreams(fwd: &super::forward::Forwarder) -> Vec<Value> {
    let mut ups: Vec<&Arc<super::forward::upstream::Upstream>> = fwd.upstreams().collect();
    ups.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    ups.into_iter()
        .map(|u| {
            let backends: Vec<Value> = u
                .backends
                .iter()
                .map(|b| {
                    let healthy = b.healthy.load(std::sync::atomic::Ordering::Relaxed);
                    let state = match (healthy, u.is_available(b)) {
                        (true, true) => "up",
                        (false, _) => "down",
                        (true, false) => "ejected",
                    };
                    json!({
                        "addr": b.addr.to_string(),
                        "weight": b.weight,
                        "state": state,
                        "active": b.active.load(std::sync::atomic::Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": u.spec.name,
                "balance": match &u.spec.balance {
                    Balance::RoundRobin => "round-robin".to_owned(),
                    Balance::LeastConn => "least-conn".to_owned(),
                    Balance::HashClientIp => "hash:client-ip".to_owned(),
                    Balance::HashHeader(h) => format!("hash:header:{h}"),
                },
                "protocol": if u.spec.h2c { "h2c" } else { "http/1.1" },
                "health_check": u.spec.health.as_ref().map(|h| h.path.clone()),
                "backends": backends,
            })
        })
        .collect()
}

fn certs(proxy: &Proxy) -> Vec<Value> {
    let store = proxy.store.load_full();
    store
        .served
        .iter()
        .map(|s| {
            json!({
                "names": s.names,
                "cert": s.cert.display().to_string(),
                "key": s.key,
                "version": s.version,
                "algorithm": format!("{:?}", s.algorithm),
                "not_after": s.not_after,
            })
        })
        .collect()
}

fn vault(proxy: &Proxy) -> Value {
    let Some(pool) = &proxy.pool else {
        return Value::Null;
    };
    let errors = pool.socket_states();
    let sockets: Vec<Value> = pool
        .connections()
        .into_iter()
        .map(|(path, up)| {
            let error = errors
                .iter()
                .find(|s| s.path == path)
                .and_then(|s| s.error.as_ref())
                .map(|e| e.to_string());
            json!({"path": path.to_string(), "up": up, "error": if up > 0 { None } else { error }})
        })
        .collect();
    json!({"connections_per_socket": pool.connections_per_socket(), "sockets": sockets})
}
