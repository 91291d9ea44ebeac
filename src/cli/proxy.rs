//! `vaultgate proxy`: the TLS-terminating reverse proxy alone, against a
//! vault that runs elsewhere.

use std::process::ExitCode;
use std::sync::Arc;

use super::args::ConfigArg;
use crate::config::proxy::ProxySettings;
use crate::proxy::{server, Proxy};

pub fn main(args: ConfigArg) -> ExitCode {
    crate::telemetry::init_tracing();
    let _ = crate::telemetry::install_recorder();
    let settings = match super::load_config(&args).map(|l| ProxySettings::from_loaded(&l)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return super::fail(e),
        Err(code) => return code,
    };
    crate::telemetry::apply_log_settings(&settings.log);
    if let Some(u) = &settings.user {
        if let Err(e) = crate::os::check_can_become(u) {
            return super::fail(e);
        }
        // Per thread and inherited: set before the runtime's threads start.
        if let Err(e) = crate::os::forbid_privilege_gain() {
            return super::fail(format!("cannot set no-new-privileges: {e}"));
        }
    }
    let rt = match server::runtime(&settings) {
        Ok(rt) => rt,
        Err(e) => return super::fail(format!("cannot start the runtime: {e}")),
    };
    // Bind (ports below 1024 need root) and write the pid file, then
    // switch users before anything else: the vault records a caller's uid
    // when it connects (SO_PEERCRED), so the proxy must reach it as its
    // user, and certificate and key files are read as that user from the
    // first start on, as every reload will read them.
    let config = config_path(&args);
    let bound = match rt.block_on(server::bind(&settings, Some(&config))) {
        Ok(b) => b,
        Err(e) => return super::fail(e),
    };
    if let Some(u) = &settings.user {
        if let Err(e) = crate::os::log_switch("proxy", u, crate::os::become_user(u)) {
            return super::fail(e);
        }
    }
    let proxy = match Proxy::build(settings) {
        Ok(mut p) => {
            p.config_path = Some(config);
            Arc::new(p)
        }
        Err(e) => return super::fail(e),
    };
    match server::run_until_signal(&rt, proxy, Some(bound), |_| {}) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => super::fail(e),
    }
}

fn config_path(args: &ConfigArg) -> std::path::PathBuf {
    args.config
        .clone()
        .unwrap_or_else(crate::config::default_path)
}
