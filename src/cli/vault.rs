//! `vaultgate vault`: settings from the config file, overridden by flags.

use std::io::Write;
use std::process::ExitCode;

use super::args::VaultArgs;
use super::fail;
use crate::config::{self, vault::VaultSettings};

pub fn main(args: VaultArgs) -> ExitCode {
    crate::telemetry::init_tracing();
    let initial = match settings(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // SIGHUP re-reads the file with the same flags on top.
    let reload: Option<crate::vault::Reloader> = args.config.is_some().then(|| {
        let args = args.clone();
        Box::new(move || settings(&args)) as crate::vault::Reloader
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
fn settings(args: &VaultArgs) -> Result<VaultSettings, String> {
    let mut settings = match &args.config {
        Some(path) => config::load(path)
            .and_then(|l| VaultSettings::from_loaded(&l))
            .map_err(|e| e.to_string())?,
        None => VaultSettings::default(),
    };
    if let Some(s) = &args.socket {
        settings.socket = s.clone();
    }
    if let Some(d) = &args.state_dir {
        settings.state_dir = d.clone();
    }
    if let Some(m) = &args.master_key {
        settings.master_key = m.parse()?;
    }
    if let Some(u) = &args.user {
        let gid = match &args.group {
            Some(g) => Some(config::user::resolve_group(g).map_err(|e| format!("--group: {e}"))?),
            None => None,
        };
        settings.user =
            Some(config::user::resolve_user(u, gid).map_err(|e| format!("--user: {e}"))?);
    }
    if let Some(m) = &args.metrics_listen {
        settings.metrics_listen = Some(
            m.parse()
                .map_err(|e| format!("invalid --metrics-listen {m:?}: {e}"))?,
        );
    }
    Ok(settings)
}
