//! Active health checks: a GET of the configured path on every backend at
//! an interval; `unhealthy` failures in a row take a backend out,
//! `healthy` successes in a row bring it back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::upstream::Upstream;

/// Spawns one checker task per backend of `up` (none without a health
/// section). The tasks end when the returned handles are aborted.
pub fn spawn(up: Arc<Upstream>) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(spec) = up.spec.health.clone() else {
        return Vec::new();
    };
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(spec.timeout));
    // A fresh connection per probe: a pooled one could hide a dead listener.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http);
    (0..up.backends.len())
        .map(|i| {
            let up = up.clone();
            let client = client.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                let b = up.backends[i].clone();
                let labels = [("upstream", up.spec.name.clone()), ("backend", b.addr.to_string())];
                metrics::gauge!("vaultgate_proxy_backend_up", &labels).set(1.0);
                let (mut ok_run, mut fail_run) = (0u32, 0u32);
                let mut tick = tokio::time::interval(spec.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let uri = format!("http://{}{}", b.addr, spec.path);
                    let result = match uri.parse::<hyper::Uri>() {
                        Ok(uri) => tokio::time::timeout(spec.timeout, client.get(uri)).await,
                        Err(_) => return,
                    };
                    let passed = matches!(&result, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection());
                    let healthy = b.healthy.load(Ordering::Relaxed);
                    if passed {
                        ok_run += 1;
                        fail_run = 0;
                        if !healthy && ok_run >= spec.healthy {
                            b.healthy.store(true, Ordering::Relaxed);
                            metrics::gauge!("vaultgate_proxy_backend_up", &labels).set(1.0);
                            tracing::info!(upstream = %up.spec.name, backend = %b.addr, "backend healthy again");
                        }
                    } else {
                        fail_run += 1;
                        ok_run = 0;
                        if healthy && fail_run >= spec.unhealthy {
                            b.healthy.store(false, Ordering::Relaxed);
                            metrics::gauge!("vaultgate_proxy_backend_up", &labels).set(0.0);
                            let why = match result {
                                Ok(Ok(r)) => format!("status {}", r.status()),
                                Ok(Err(e)) => super::error_chain(&e),
                                Err(_) => "timeout".to_owned(),
                            };
                            tracing::warn!(upstream = %up.spec.name, backend = %b.addr, reason = %why, "backend unhealthy");
                        }
                    }
                }
            })
        })
        .collect()
}
