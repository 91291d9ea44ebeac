//! `vaultgate check`: validates a config without starting anything, like
//! `nginx -t`. It reports the first problem of each section (`[vault]`,
//! `[run]`, `[proxy]`, at file:line:column), and once `[proxy]` is valid,
//! every certificate or key that does not load or match; the exit code is
//! non-zero if there was any.

use std::process::ExitCode;
use std::time::Duration;

use super::args::ConfigArg;
use crate::config::proxy::{KeyRef, ProxySettings};
use crate::config::run::RunSettings;
use crate::config::vault::VaultSettings;
use crate::config::Loaded;
use crate::proxy::tls::store::load_entry;
use crate::signer::{PoolOptions, VaultPool};

/// Set in a `check` re-run as the service's user, so it does not re-run.
const AS_USER_ENV: &str = "VAULTGATE_CHECK_AS_USER";

pub fn main(args: ConfigArg) -> ExitCode {
    let loaded = match super::load_config(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if passes(&loaded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The whole check of a loaded config, its findings printed; `reload`
/// runs it too, so `check`, `reload` and the running process agree.
pub fn passes(loaded: &Loaded) -> bool {
    // Run as root for a service that switches users, the check must read
    // what the service will read, as the service will read it: again, as
    // that user.
    if nix::unistd::geteuid().is_root() && std::env::var_os(AS_USER_ENV).is_none() {
        if let Some(user) = service_user(loaded) {
            return check_as(&loaded.path, &user);
        }
    }
    let (errors, notes) = check(loaded);
    for n in &notes {
        eprintln!("vaultgate: note: {n}");
    }
    for e in &errors {
        eprintln!("vaultgate: {e}");
    }
    if errors.is_empty() {
        println!("{}: ok", loaded.path.display());
        true
    } else {
        eprintln!(
            "vaultgate: {}: {} error(s)",
            loaded.path.display(),
            errors.len()
        );
        false
    }
}

/// The user the config's service switches to: `[proxy] user`, else
/// `[vault] user`. An invalid section yields none here; the check itself
/// reports it.
fn service_user(loaded: &Loaded) -> Option<crate::config::user::RunAs> {
    if loaded.file.proxy.is_some() {
        if let Ok(Some(u)) = ProxySettings::from_loaded(loaded).map(|s| s.user) {
            return Some(u);
        }
    }
    VaultSettings::from_loaded(loaded).ok().and_then(|s| s.user)
}

/// `vaultgate check` again, as `user`, with its output; whether it passed.
fn check_as(config: &std::path::Path, user: &crate::config::user::RunAs) -> bool {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "vaultgate: cannot find this program to re-run it as {}: {e}",
                user.name
            );
            return false;
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .env(AS_USER_ENV, &user.name);
    if let Err(e) = crate::os::run_child_as(&mut cmd, user) {
        eprintln!("vaultgate: cannot run the check as {}: {e}", user.name);
        return false;
    }
    eprintln!(
        "vaultgate: checking as {} (uid {}), the user the service runs as",
        user.name, user.uid
    );
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("vaultgate: cannot run the check as {}: {e}", user.name);
            false
        }
    }
}

/// All errors and notes for a loaded config.
pub fn check(loaded: &Loaded) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let f = &loaded.file;
    if f.vault.is_none() && f.proxy.is_none() && f.run.is_none() {
        errors.push(format!(
            "{}: no [vault], [proxy] or [run] section",
            loaded.path.display()
        ));
    }
    if let Err(e) = VaultSettings::from_loaded(loaded) {
        errors.push(e.to_string());
    }
    let run = match (&f.run, RunSettings::from_loaded(loaded)) {
        (Some(_), Ok(r)) => Some(r),
        (_, Err(e)) => {
            errors.push(e.to_string());
            None
        }
        (None, Ok(_)) => None,
    };
    if f.proxy.is_none() {
        return (errors, notes);
    }
    let settings = match ProxySettings::from_loaded(loaded) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e.to_string());
            return (errors, notes);
        }
    };
    if let Err(e) = settings.vault_client_tls() {
        errors.push(format!("[proxy.vault_tls]: {e}"));
    }
    let mut pool: Option<Option<VaultPool>> = None;
    for spec in &settings.certs {
        if let KeyRef::Vault(name) = &spec.key {
            if run.is_some() && !spec.cert.exists() {
                notes.push(format!(
                    "{}: {} does not exist yet; `vaultgate run` issues it for vault:{name}",
                    spec.cert_at,
                    spec.cert.display()
                ));
                continue;
            }
            let p = pool.get_or_insert_with(|| connect(&settings));
            let Some(p) = p else {
                // The certificate itself can still be checked.
                if let Err(e) = crate::pki::read_pem_certs(&spec.cert)
                    .and_then(|c| crate::pki::cert_spki(&c[0]).map(|_| ()))
                {
                    errors.push(format!("{}: certificate: {e}", spec.cert_at));
                }
                notes.push(format!(
                    "{}: vault not reachable at {}: vault:{name} not compared with its certificate",
                    spec.key_at,
                    display_sockets(&settings.vaults)
                ));
                continue;
            };
            if let Err(e) = load_entry(spec, Some(p)) {
                errors.push(e.to_string());
            }
        } else if let Err(e) = load_entry(spec, None) {
            errors.push(e.to_string());
        }
    }
    (errors, notes)
}

fn connect(settings: &ProxySettings) -> Option<VaultPool> {
    let pool = VaultPool::start(PoolOptions {
        sockets: settings.vaults.clone(),
        tls: settings.vault_client_tls().ok().flatten(),
        connections_per_socket: 1,
        timeout: Duration::from_secs(5),
        plain_wait: Duration::from_millis(1),
    });
    pool.wait_connected(Duration::from_millis(500))
        .then_some(pool)
}

fn display_sockets(s: &[crate::signer::Endpoint]) -> String {
    s.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
