//! `vaultgate check`: validates a config without starting anything, like
//! `nginx -t`. It reports the first problem of each section (`[vault]`,
//! `[run]`, `[proxy]`, at file:line:column), and once `[proxy]` is valid,
//! every certificate or key that does not load or match; the exit code is
//! non-zero if there was any.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::args::ConfigArg;
use crate::config::proxy::{KeyRef, ProxySettings};
use crate::config::run::RunSettings;
use crate::config::vault::VaultSettings;
use crate::config::Loaded;
use crate::proxy::tls::store::load_entry;
use crate::signer::{PoolOptions, VaultPool};

pub fn main(args: ConfigArg) -> ExitCode {
    let loaded = match super::load_config(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (errors, notes) = check(&loaded);
    for n in &notes {
        eprintln!("vaultgate: note: {n}");
    }
    for e in &errors {
        eprintln!("vaultgate: {e}");
    }
    if errors.is_empty() {
        println!("{}: ok", loaded.path.display());
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "vaultgate: {}: {} error(s)",
            loaded.path.display(),
            errors.len()
        );
        ExitCode::FAILURE
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
                    display_sockets(&settings.vault_sockets)
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
        sockets: settings.vault_sockets.clone(),
        connections_per_socket: 1,
        timeout: Duration::from_secs(5),
        plain_wait: Duration::from_millis(1),
    });
    pool.wait_connected(Duration::from_millis(500))
        .then_some(pool)
}

fn display_sockets(s: &[PathBuf]) -> String {
    s.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
