//! `vaultgate vault`: settings from the config file, overridden by flags.

use std::io::Write;
use std::process::ExitCode;

use super::args::VaultArgs;
use super::fail;
use crate::config::{self, vault::VaultSettings, ConfigError};

/// Why the config file and the flags give no settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--master-key: {0}")]
    MasterKey(String),
    #[error("--group: {0}")]
    Group(String),
    #[error("--user: {0}")]
    User(String),
    #[error("invalid --metrics-listen {value:?}: {source}")]
    MetricsListen {
        value: String,
        source: std::net::AddrParseError,
    },
}

pub fn main(args: VaultArgs) -> ExitCode {
    crate::telemetry::init_tracing();
    let initial = match settings(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // SIGHUP re-reads the file with the same flags on top.
    let reload = args.config.clone().map(|config| {
        let args = args.clone();
        crate::vault::Reload {
            config,
            read: Box::new(move || settings(&args).map_err(Into::into)),
        }
    });
    // No-new-privileges is per thread and inherited: set before the
    // runtime starts its threads, so it covers every one of them (the
    // switch to the user, after binding, sets it again).
    if initial.user.is_some() {
        if let Err(e) = crate::os::forbid_privilege_gain() {
            return fail(format!("cannot set no-new-privileges: {e}"));
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let ready_line = args.ready_line;
    let result = rt.block_on(crate::vault::run(initial, reload, |s| {
        if ready_line {
            println!("ready {}", s.socket.display());
            let _ = std::io::stdout().flush();
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The config file's `[vault]` settings with the flags on top.
fn settings(args: &VaultArgs) -> Result<VaultSettings, SettingsError> {
    let mut settings = match &args.config {
        Some(path) => {
            let loaded = config::load(path)?;
            let log = config::log::LogSettings::from_loaded(&loaded)?;
            let settings = VaultSettings::from_loaded(&loaded)?;
            crate::telemetry::apply_log_settings(&log);
            settings
        }
        None => VaultSettings::default(),
    };
    if let Some(s) = &args.socket {
        settings.socket = s.clone();
    }
    if let Some(d) = &args.state_dir {
        settings.state_dir = d.clone();
    }
    if let Some(m) = &args.master_key {
        settings.master_key = m.parse().map_err(SettingsError::MasterKey)?;
    }
    if let Some(u) = &args.user {
        let gid = match &args.group {
            Some(g) => Some(config::user::resolve_group(g).map_err(SettingsError::Group)?),
            None => None,
        };
        settings.user = Some(config::user::resolve_user(u, gid).map_err(SettingsError::User)?);
    }
    if let Some(m) = &args.metrics_listen {
        settings.metrics_listen =
            Some(m.parse().map_err(|source| SettingsError::MetricsListen {
                value: m.clone(),
                source,
            })?);
    }
    Ok(settings)
}
