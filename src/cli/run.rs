//! `vaultgate run`: the embedded default for one machine. Starts the vault
//! as a child process (the same binary, its own address space), bootstraps
//! a dev CA, keys and certificates on first start, runs the proxy, and
//! restarts the vault if it dies (the proxy's signer reconnects by itself).

use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::args::ConfigArg;
use crate::config::proxy::{KeyRef, ProxySettings};
use crate::config::run::RunSettings;
use crate::config::vault::VaultSettings;
use crate::config::{self};
use crate::devca::{self, DevCa, DevCaError};
use crate::pki;
use crate::proxy::{server, Proxy};
use crate::signer::{PoolOptions, SignerError, VaultKey, VaultPool};

/// The config `run` starts from, each section validated; `[proxy] user`
/// refused (below, why).
fn settings(
    args: ConfigArg,
) -> Result<(PathBuf, VaultSettings, ProxySettings, RunSettings), ExitCode> {
    let path = match args.config {
        Some(p) => p,
        None => {
            // Away from a checkout: the built-in default, as a file of its
            // own (kept once written, so it can be edited and reloaded).
            let p = config::default_path();
            match config::materialize_default(&p) {
                Ok(true) => println!("config {} (written from the built-in default)", p.display()),
                Ok(false) => {}
                Err(e) => return Err(super::fail(format!("{}: {e}", p.display()))),
            }
            p
        }
    };
    let loaded = match config::load(&path) {
        Ok(l) => l,
        Err(e) => return Err(super::fail(e)),
    };
    // A proxy that has switched users could no longer start the vault
    // child, which has to begin as root to bind its socket and switch to
    // its own user; and `run` restarts that child whenever it dies. A
    // privilege-separated `run` would need a process that stays root just
    // to restart the vault (a keeper, started before the proxy switches,
    // told to stop by the end of a pipe since the proxy's user cannot
    // signal it). Until that exists, a `[proxy] user` here is refused
    // rather than ignored (which would leave the proxy root): the two
    // services, `vaultgate vault` and `vaultgate proxy`, each take a
    // `user`. `[vault] user` works: `run` stays root and can restart it.
    if let Some(u) = loaded.file.proxy.as_ref().and_then(|p| p.user.as_ref()) {
        return Err(super::fail(loaded.source().error(
            u.span(),
            "`vaultgate run` does not switch the proxy to a user (it could not restart the vault afterwards); \
             run `vaultgate vault` and `vaultgate proxy` as two services, each with its user, or leave [proxy] user out",
        )));
    }
    let (vault, proxy_settings, run) = match (
        VaultSettings::from_loaded(&loaded),
        ProxySettings::from_loaded(&loaded),
        RunSettings::from_loaded(&loaded),
    ) {
        (Ok(v), Ok(p), Ok(r)) => (v, p, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(super::fail(e)),
    };
    Ok((path, vault, proxy_settings, run))
}

/// The host name the printed `curl` line uses: `localhost` if a
/// certificate names it, else the first certificate's first name.
fn curl_host(settings: &ProxySettings) -> String {
    settings
        .certs
        .iter()
        .flat_map(|c| c.names.iter())
        .find(|n| *n == "localhost")
        .or_else(|| settings.certs.first().and_then(|c| c.names.first()))
        .cloned()
        .unwrap_or_else(|| "localhost".into())
}

pub fn main(args: ConfigArg) -> ExitCode {
    crate::telemetry::init_tracing();
    let _ = crate::telemetry::install_recorder();
    let (path, vault, proxy_settings, run) = match settings(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    crate::telemetry::apply_log_settings(&proxy_settings.log);
    if let Some(dir) = vault.socket.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return super::fail(format!("{}: {e}", dir.display()));
        }
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let child = match spawn_vault(&path, &run) {
        Ok(c) => c,
        Err(e) => return super::fail(e),
    };
    let mut vault_pid = child.id();
    println!("vault pid {vault_pid} on {}", vault.socket.display());

    let (pool, ca) = match bootstrap(&vault, &proxy_settings, &run) {
        Ok(v) => v,
        Err(e) => {
            stop_child(vault_pid);
            return super::fail(format!("bootstrap: {e}"));
        }
    };
    let curl_host = curl_host(&proxy_settings);
    let proxy = match Proxy::build(proxy_settings) {
        Ok(mut p) => {
            p.config_path = Some(path.clone());
            Arc::new(p)
        }
        Err(e) => {
            stop_child(vault_pid);
            return super::fail(e);
        }
    };
    let rt = match server::runtime(&proxy.settings) {
        Ok(rt) => rt,
        Err(e) => {
            stop_child(vault_pid);
            return super::fail(format!("cannot start the runtime: {e}"));
        }
    };
    let (pid_tx, pid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let supervisor = {
        let stopping = stopping.clone();
        let run = run.clone();
        std::thread::Builder::new()
            .name("vault-supervisor".into())
            .spawn(move || {
                supervise(child, &path, &run, &stopping, &pid_tx);
                let _ = done_tx.send(());
            })
    };
    if let Err(e) = supervisor {
        stop_child(vault_pid);
        return super::fail(format!("cannot start the supervisor: {e}"));
    }
    if let Some(addr) = run.demo_backend {
        rt.spawn(super::demo_backend::serve(addr));
    }
    if run.auto_issue {
        rt.spawn(watch_rotations(
            vault.socket.clone(),
            pool,
            Arc::new(ca),
            proxy.clone(),
            run.clone(),
        ));
    }
    let ca = tidy(&run.dev_ca);
    let result = server::run_until_signal(&rt, proxy, None, move |addr| {
        println!(
            "try: curl --cacert {} https://{curl_host}:{}/",
            ca.display(),
            addr.port()
        );
    });
    stopping.store(true, Ordering::Release);
    while let Ok(pid) = pid_rx.try_recv() {
        vault_pid = pid;
    }
    stop_child(vault_pid);
    // The supervisor reaps the child; give the vault a moment to close its
    // socket and audit log cleanly before we exit.
    if done_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vault_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => super::fail(e),
    }
}

/// Starts `vaultgate vault --config FILE --ready-line` and waits for its
/// `ready` line.
fn spawn_vault(config: &Path, run: &RunSettings) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("vault")
        .arg("--config")
        .arg(config)
        .arg("--ready-line")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The kernel stops the vault if `run` dies (no orphan holding the
    // socket); its own process group keeps a terminal's Ctrl-C from
    // reaching it: `run` stops it after the proxy has drained, since
    // draining handshakes still need it.
    crate::os::die_with_parent_in_own_group(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the vault: {e}"))?;
    let stdout = child.stdout.take().ok_or("vault has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after `ready` so the vault never blocks on stdout.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(run.vault_start_timeout) {
            Ok(line) if line.starts_with("ready") => return Ok(child),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!(
                    "the vault did not become ready ({status}); see its messages above"
                ));
            }
        }
    }
}

/// Waits on the vault child; restarts it when it dies (not when we stop).
fn supervise(
    mut child: Child,
    config: &Path,
    run: &RunSettings,
    stopping: &AtomicBool,
    pids: &mpsc::Sender<u32>,
) {
    loop {
        let status = child.wait();
        if stopping.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(status = ?status.map(|s| s.to_string()), "vault child died; restarting it");
        metrics::counter!("vaultgate_run_vault_restarts_total").increment(1);
        loop {
            std::thread::sleep(run.restart_backoff);
            if stopping.load(Ordering::Acquire) {
                return;
            }
            match spawn_vault(config, run) {
                Ok(c) => {
                    child = c;
                    let _ = pids.send(child.id());
                    tracing::info!(pid = child.id(), "vault restarted");
                    break;
                }
                Err(e) => tracing::error!(error = %e, "vault restart failed"),
            }
        }
    }
}

fn stop_child(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// First-run setup: the dev CA, and a key and certificate for every
/// `[[proxy.cert]]` with a `vault:` key whose certificate is missing or
/// no longer matches the vault (its state was reset).
fn bootstrap(
    vault: &VaultSettings,
    proxy: &ProxySettings,
    run: &RunSettings,
) -> Result<(VaultPool, DevCa), DevCaError> {
    let pool = VaultPool::start(PoolOptions {
        sockets: vec![crate::signer::Endpoint::Unix(vault.socket.clone())],
        tls: None,
        connections_per_socket: 1,
        timeout: Duration::from_secs(10),
        plain_wait: Duration::from_millis(1),
    });
    if !pool.wait_connected(run.vault_start_timeout) {
        return Err(DevCaError::Vault(SignerError::Unavailable));
    }
    let (ca, ca_new) = devca::ensure_dev_ca(&pool, &run.ca_key, &run.dev_ca)?;
    if ca_new {
        println!(
            "created dev CA {} (key vault:{})",
            tidy(&run.dev_ca).display(),
            run.ca_key
        );
    }
    for spec in &proxy.certs {
        let KeyRef::Vault(name) = &spec.key else {
            continue;
        };
        let current = !ca_new
            && pki::read_pem_certs(&spec.cert)
                .ok()
                .and_then(|c| pki::cert_spki(&c[0]).ok().map(<[u8]>::to_vec))
                .is_some_and(|spki| VaultKey::load(&pool, name, Some(&spki), "-").is_ok());
        if current {
            continue;
        }
        if devca::ensure_key(&pool, name, run.key_type)? {
            println!("created key vault:{name} ({})", run.key_type);
        }
        let pem = devca::issue_leaf(&ca, &pool, name, &spec.names, run.cert_validity)?;
        pki::write_file(&spec.cert, pem.as_bytes())?;
        println!(
            "issued {} for {} (key vault:{name})",
            tidy(&spec.cert).display(),
            spec.names.join(", ")
        );
    }
    Ok((pool, ca))
}

/// Issues a new certificate from the dev CA for every `vault:` key whose
/// primary version no longer matches its certificate file (it rotated) or
/// whose certificate expires within `renew_before`, writes it, and swaps
/// the proxy's certificate store. Returns whether
/// anything changed.
/// Why a rotated or expiring key's certificate was not re-issued.
#[derive(Debug, thiserror::Error)]
enum ReissueError {
    #[error("key {key}: {source}")]
    Key { key: String, source: SignerError },
    #[error(transparent)]
    DevCa(#[from] DevCaError),
    #[error(transparent)]
    Reload(#[from] crate::proxy::tls::TlsError),
}

fn reissue_rotated(
    pool: &VaultPool,
    ca: &DevCa,
    proxy: &Proxy,
    certs: &[crate::config::proxy::CertSpec],
    run: &RunSettings,
) -> Result<bool, ReissueError> {
    let mut changed = false;
    for spec in certs {
        let KeyRef::Vault(name) = &spec.key else {
            continue;
        };
        let (_, primary, spki) =
            crate::signer::key::public_key(pool, name, None).map_err(|source| {
                ReissueError::Key {
                    key: name.clone(),
                    source,
                }
            })?;
        let on_disk = pki::read_pem_certs(&spec.cert)
            .ok()
            .and_then(|c| pki::cert_spki(&c[0]).ok().map(<[u8]>::to_vec));
        let expiring = pki::seconds_to_expiry(&spec.cert)
            .map_or(true, |left| left < run.renew_before.as_secs() as i64);
        if on_disk.as_deref() == Some(spki.as_slice()) && !expiring {
            continue;
        }
        let pem = devca::issue_leaf(ca, pool, name, &spec.names, run.cert_validity)?;
        pki::write_file(&spec.cert, pem.as_bytes()).map_err(DevCaError::from)?;
        tracing::info!(key = %name, version = primary, cert = %spec.cert.display(), expiring, "issued a new certificate");
        println!(
            "re-issued {} for vault:{name} version {primary}",
            tidy(&spec.cert).display()
        );
        changed = true;
    }
    if changed {
        proxy.reload_certs()?;
    }
    Ok(changed)
}

/// Follows the vault's key-change events (reconnecting after a vault
/// restart) and re-issues certificates of rotated keys as they happen, and
/// of expiring ones before they expire.
async fn watch_rotations(
    socket: PathBuf,
    pool: VaultPool,
    ca: Arc<DevCa>,
    proxy: Arc<Proxy>,
    run: RunSettings,
) {
    let certs: Arc<Vec<_>> = Arc::new(proxy.live.load().settings.certs.clone());
    let ours = |key: &str| {
        key == "*"
            || certs
                .iter()
                .any(|c| matches!(&c.key, KeyRef::Vault(n) if n == key))
    };
    let check = || {
        let (pool, ca, proxy, certs, run) = (
            pool.clone(),
            ca.clone(),
            proxy.clone(),
            certs.clone(),
            run.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = reissue_rotated(&pool, &ca, &proxy, &certs, &run) {
                tracing::error!(error = %e, "re-issuing a certificate after a rotation failed");
            }
        })
    };
    // Expiry is checked on a timer; rotations arrive as events.
    let every = (run.renew_before / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut renew = tokio::time::interval(every);
    // Only while subscribed: with the vault away (being restarted) every
    // check would fail and log.
    let subscribed = std::sync::atomic::AtomicBool::new(false);
    let timer = async {
        loop {
            renew.tick().await;
            if subscribed.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = check().await;
            }
        }
    };
    let why = "certificates of rotated keys are not re-issued";
    let events =
        crate::client::follow_key_events(vec![socket], run.restart_backoff, why, |followed| {
            use crate::client::Followed;
            subscribed.store(
                !matches!(followed, Followed::Lost),
                std::sync::atomic::Ordering::Relaxed,
            );
            let catch_up = match followed {
                // Subscribed: anything that rotated while we were not listening.
                Followed::Subscribed { .. } => true,
                Followed::Event(e) => ours(&e.key),
                Followed::Lost => false,
            };
            let job = catch_up.then(check);
            async move {
                if let Some(job) = job {
                    let _ = job.await;
                }
            }
        });
    tokio::join!(timer, events);
}

/// `config/../certs/x.pem` → `certs/x.pem`, for messages people copy.
fn tidy(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
