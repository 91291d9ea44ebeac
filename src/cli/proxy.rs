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
    let proxy = match Proxy::build(settings) {
        Ok(mut p) => {
            p.config_path = Some(config_path(&args));
            Arc::new(p)
        }
        Err(e) => return super::fail(e),
    };
    let rt = match server::runtime(&proxy.settings) {
        Ok(rt) => rt,
        Err(e) => return super::fail(format!("cannot start the runtime: {e}")),
    };
    match server::run_until_signal(&rt, proxy, |_| {}) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => super::fail(e),
    }
}

fn config_path(args: &ConfigArg) -> std::path::PathBuf {
    args.config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_PATH))
}
