//! What changes a running proxy: SIGHUP re-reads the config (or the
//! certificates), SIGUSR1 reopens the access log files, certificate files
//! that change on disk, the vault's key events, and the expiry watch. Each runs as its own task for the
//! proxy's life; a failed reload keeps what runs and says why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::listeners::{self, bind_metrics, Listeners, MetricsListener};
use super::{Proxy, ReloadError};
use crate::control::StatusFile;

/// Starts the watchers; the caller aborts them at shutdown. The signal
/// handlers are installed before this returns, so a SIGHUP or SIGUSR1
/// sent as soon as the proxy says it is ready (to systemd, or by its pid
/// file) is handled, not the end of the process (their default action).
pub(crate) fn spawn(
    proxy: &Arc<Proxy>,
    listeners: Arc<Listeners>,
    metrics: MetricsListener,
    status: Option<Arc<StatusFile>>,
) -> [tokio::task::JoinHandle<()>; 6] {
    let reloads = Reloads {
        proxy: proxy.clone(),
        listeners,
        metrics,
        status,
    };
    use tokio::signal::unix::{signal, SignalKind};
    let hup = signal(SignalKind::hangup()).ok();
    let usr1 = signal(SignalKind::user_defined1()).ok();
    [
        tokio::spawn(reload_on_sighup(hup, reloads)),
        tokio::spawn(reload_on_file_change(proxy.clone())),
        tokio::spawn(watch_expiry(proxy.clone())),
        tokio::spawn(follow_vault_events(proxy.clone())),
        tokio::spawn(follow_dns(proxy.clone())),
        tokio::spawn(reopen_logs_on_sigusr1(usr1)),
    ]
}

/// SIGUSR1 reopens the access log files by name, as nginx does: logrotate
/// renames a file, then signals, and the lines after go to a new file.
async fn reopen_logs_on_sigusr1(usr1: Option<tokio::signal::unix::Signal>) {
    let Some(mut usr1) = usr1 else { return };
    while usr1.recv().await.is_some() {
        let failed = tokio::task::spawn_blocking(super::forward::access_log::reopen_all)
            .await
            .unwrap_or_default();
        if failed.is_empty() {
            tracing::info!("SIGUSR1: access log files reopened");
        }
        for e in failed {
            tracing::error!(error = %e, "SIGUSR1: cannot reopen; lines still go to the old file");
        }
    }
}

/// What a config reload changes besides the live generation.
struct Reloads {
    proxy: Arc<Proxy>,
    listeners: Arc<Listeners>,
    metrics: MetricsListener,
    /// Where a SIGHUP's verdict goes, for `vaultgate reload`.
    status: Option<Arc<StatusFile>>,
}

/// SIGHUP re-reads the config file (or, for a proxy started without one,
/// the certificates); a failed reload keeps what runs and says why.
async fn reload_on_sighup(hup: Option<tokio::signal::unix::Signal>, reloads: Reloads) {
    let Some(mut hup) = hup else { return };
    while hup.recv().await.is_some() {
        crate::notify::reloading();
        let outcome = if reloads.proxy.config_path.is_some() {
            reload_config(&reloads).await
        } else {
            let outcome = reload_certs(&reloads.proxy, "SIGHUP").await;
            if let Some(s) = &reloads.status {
                s.record(outcome.as_ref().map(|_| ()));
            }
            outcome.map(|()| Vec::new())
        };
        crate::notify::ready(&match outcome {
            Ok(_) => "serving; config reloaded".to_owned(),
            Err(e) => format!("serving; the last reload failed: {e}"),
        });
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
            let _ = reload_certs(&proxy, "certificate file changed").await;
        }
    }
}

/// Follows the vault's key events (pushed, no polling): when a key the
/// proxy serves changes — rotated, a certificate bound to a version,
/// enabled or disabled — the certificates reload, so a chain bound in the
/// vault to the new primary version is served at once. A served key
/// disabled, scheduled for deletion or deleted ends resumption (see
/// [`super::tls::resumption`]) before anything else: the reload that
/// follows fails, the vault refusing the key, and keeps the certificates.
/// Reconnects (and catches up) after the vault restarts; tries each
/// socket in order.
async fn follow_vault_events(proxy: Arc<Proxy>) {
    if proxy.pool.is_none() {
        return;
    }
    let serves =
        |proxy: &Proxy, key: &str| key == "*" || served_vault_keys(proxy).iter().any(|k| k == key);
    // Key events are followed on the Unix sockets only.
    let sockets = proxy.settings.vault_unix_sockets();
    let why = "new certificates arrive by file change or SIGHUP only, and a disabled key's sessions keep resuming (\"cert-get\" is needed too)";
    crate::client::follow_key_events(sockets, Duration::from_secs(5), why, |followed| {
        let proxy = proxy.clone();
        async move {
            use crate::client::Followed;
            match followed {
                // Whatever changed while nobody listened.
                Followed::Subscribed { again: true } => {
                    end_resumption_if_any_withdrawn(&proxy).await;
                    let _ = reload_certs(&proxy, "vault reconnected").await;
                }
                Followed::Event(e) if e.key == "*" => {
                    end_resumption_if_any_withdrawn(&proxy).await;
                    let _ = reload_certs(&proxy, "vault key events were missed").await;
                }
                Followed::Event(e) if serves(&proxy, &e.key) => {
                    if let Some(state) = withdrawn_state(&e.json) {
                        end_resumption(&proxy, &e.key, &state);
                    }
                    let _ = reload_certs(&proxy, "vault key changed").await;
                }
                _ => {}
            }
        }
    })
    .await
}

/// The vault keys the live certificates name.
fn served_vault_keys(proxy: &Proxy) -> Vec<String> {
    use crate::config::proxy::KeyRef;
    let mut keys: Vec<String> = Vec::new();
    for c in &proxy.live.load().settings.certs {
        if let KeyRef::Vault(name) = &c.key {
            if !keys.contains(name) {
                keys.push(name.clone());
            }
        }
    }
    keys
}

/// The state a key event's describe JSON reports, unless it is
/// `enabled`: `deleted` for the `null` of a deleted key. An event that
/// cannot be read counts as a withdrawal: ending resumption costs
/// handshakes, keeping it could serve a withdrawn key's site.
fn withdrawn_state(json: &str) -> Option<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Some("unreadable".into());
    };
    if value.is_null() {
        return Some("deleted".into());
    }
    match value.get("state").and_then(serde_json::Value::as_str) {
        Some("enabled") => None,
        Some(state) => Some(state.to_owned()),
        None => Some("unreadable".into()),
    }
}

fn end_resumption(proxy: &Proxy, key: &str, state: &str) {
    proxy.resumption.end();
    metrics::counter!("vaultgate_proxy_resumption_ended_total").increment(1);
    tracing::warn!(key, state, "a served vault key was withdrawn: no session made before resumes, and full handshakes with it fail while the vault refuses it");
}

/// After events may have been missed: asks the vault about each served
/// key, and ends resumption if it refuses one as disabled, pending
/// deletion or gone. A vault that does not answer ends nothing:
/// resumption is what keeps sites up while it is away.
async fn end_resumption_if_any_withdrawn(proxy: &Arc<Proxy>) {
    use crate::protocol::ErrorCode;
    use crate::signer::SignerError;
    let p = proxy.clone();
    let withdrawn = tokio::task::spawn_blocking(move || {
        let pool = p.pool.as_ref()?;
        served_vault_keys(&p).into_iter().find_map(|key| {
            match crate::signer::key::public_key(pool, &key, None) {
                Err(SignerError::Vault { code, .. })
                    if matches!(
                        code,
                        ErrorCode::Disabled | ErrorCode::PendingDeletion | ErrorCode::NotFound
                    ) =>
                {
                    Some((key, code))
                }
                _ => None,
            }
        })
    })
    .await;
    if let Ok(Some((key, code))) = withdrawn {
        end_resumption(proxy, &key, &code.to_string());
    }
}

/// Resolves the backends given by host name again, each upstream every
/// `resolve_every`. When an upstream's addresses changed, the forwarder is
/// rebuilt with them, as a reload of the upstreams alone would: new
/// requests go to the new addresses, those in flight finish where they
/// are. A name that no longer resolves keeps the addresses it had.
async fn follow_dns(proxy: Arc<Proxy>) {
    let mut last: std::collections::HashMap<String, Instant> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let live = proxy.live.load_full();
        let due: Vec<crate::config::proxy::UpstreamSpec> = live
            .settings
            .upstreams
            .values()
            .filter(|u| !u.named.is_empty())
            .filter(|u| {
                last.get(&u.name)
                    .is_none_or(|t| t.elapsed() >= u.resolve_every)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            continue;
        }
        for u in &due {
            last.insert(u.name.clone(), Instant::now());
        }
        let Ok(resolved) = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|u| {
                    let r = u.resolved_backends();
                    (u.name, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            continue;
        };
        let mut next = (*live.settings).clone();
        let mut changed = false;
        for (name, result) in resolved {
            let Some(spec) = next.upstreams.get_mut(&name) else {
                continue;
            };
            match result {
                Ok(b) if !b.is_empty() && b != spec.backends => {
                    let addrs = |v: &[crate::config::proxy::BackendSpec]| {
                        v.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>()
                    };
                    tracing::info!(upstream = %name, was = ?addrs(&spec.backends), now = ?addrs(&b), "backend addresses changed");
                    spec.backends = b;
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "cannot resolve a backend; keeping the addresses it has")
                }
            }
        }
        // Only over the generation it read: a reload that came meanwhile
        // resolved for itself, and wins.
        if changed && proxy.replace_upstreams(&live, next) {
            proxy.restart_upstream_tasks();
        }
    }
}

/// Publishes when each served certificate expires
/// (`vaultgate_proxy_cert_not_after_timestamp_seconds{cert,key}`, the
/// blackbox exporter's convention: alert on `... - time() < 14 * 86400`)
/// and the key version serving it, and warns, at most hourly per
/// certificate, while one expires within `cert_expiry_warning`.
async fn watch_expiry(proxy: Arc<Proxy>) {
    let mut warned: std::collections::HashMap<std::path::PathBuf, Instant> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let window = proxy.live.load().settings.cert_expiry_warning.as_secs() as i64;
        let store = proxy.store.load_full();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for served in &store.served {
            let Some(not_after) = served.not_after else {
                continue;
            };
            let labels = [
                ("cert", served.cert.display().to_string()),
                ("key", served.key.clone()),
            ];
            metrics::gauge!("vaultgate_proxy_cert_not_after_timestamp_seconds", &labels)
                .set(not_after as f64);
            if let Some(v) = served.version {
                metrics::gauge!("vaultgate_proxy_cert_key_version", &labels).set(f64::from(v));
            }
            let left = not_after - now;
            let due = warned
                .get(&served.cert)
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
            if left < window && due {
                tracing::warn!(cert = %served.cert.display(), names = ?served.names, seconds_left = left, "certificate expires soon");
                warned.insert(served.cert.clone(), Instant::now());
            }
        }
    }
}

/// Re-reads the whole config; an invalid one changes nothing, and the
/// error (file, line, column) is logged and counted. New listen addresses
/// are bound before anything changes, so an address in use refuses the
/// reload as a bad file would; removed ones stop accepting and drain.
async fn reload_config(r: &Reloads) -> Result<Vec<&'static str>, ReloadError> {
    let outcome = apply_reload(r).await;
    if let Some(s) = &r.status {
        s.record(outcome.as_ref().map(|_| ()));
    }
    let result = if outcome.is_ok() { "ok" } else { "error" };
    metrics::counter!("vaultgate_proxy_config_reloads_total", "result" => result).increment(1);
    match &outcome {
        Ok(ignored) => {
            if !ignored.is_empty() {
                tracing::warn!(?ignored, "these settings change only on restart");
            }
            tracing::info!("config reloaded");
        }
        Err(e) => tracing::error!(error = %e, "config reload failed; the running config stays"),
    }
    outcome
}

async fn apply_reload(r: &Reloads) -> Result<Vec<&'static str>, ReloadError> {
    let p = r.proxy.clone();
    let new = tokio::task::spawn_blocking(move || p.read_config()).await??;
    let open = r.listeners.configured();
    let mut added = Vec::new();
    for &addr in new.listen.iter().filter(|a| !open.contains(a)) {
        added.push((addr, listeners::bind(addr).await?));
    }
    let removed: Vec<SocketAddr> = open
        .into_iter()
        .filter(|a| !new.listen.contains(a))
        .collect();
    let metrics = bind_metrics(&r.metrics, new.metrics_listen).await?;
    let max_connections = new.limits.max_connections;
    let log = new.log.clone();
    let drain = new.limits.shutdown_timeout;
    let p = r.proxy.clone();
    let ignored = tokio::task::spawn_blocking(move || p.apply_config(new)).await??;
    r.proxy.restart_upstream_tasks();
    if let Some(m) = metrics {
        r.metrics.replace(m)?;
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
    crate::telemetry::apply_log_settings(&log);
    Ok(ignored)
}

/// Reloads the certificates (the error is logged and returned).
async fn reload_certs(proxy: &Arc<Proxy>, why: &'static str) -> Result<(), ReloadError> {
    let p = proxy.clone();
    match tokio::task::spawn_blocking(move || p.reload_certs()).await {
        Ok(Ok(())) => {
            metrics::counter!("vaultgate_proxy_cert_reloads_total", "result" => "ok").increment(1);
            tracing::info!(why, "certificates reloaded");
            Ok(())
        }
        Ok(Err(e)) => {
            metrics::counter!("vaultgate_proxy_cert_reloads_total", "result" => "error")
                .increment(1);
            tracing::error!(why, error = %e, "certificate reload failed; keeping the current certificates");
            Err(e.into())
        }
        Err(e) => {
            tracing::error!(error = %e, "certificate reload task failed");
            Err(e.into())
        }
    }
}
