//! `vaultgate proxy`: the TLS-terminating reverse proxy alone, against a
//! vault that runs elsewhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::args::ConfigArg;
use crate::config::{self, proxy::ProxySettings};
use crate::proxy::{server, Proxy};

pub fn main(args: ConfigArg) -> ExitCode {
    crate::telemetry::init_tracing();
    let _ = crate::telemetry::install_recorder();
    let path = args
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let settings = match config::load(&path).and_then(|l| ProxySettings::from_loaded(&l)) {
        Ok(s) => s,
        Err(e) => return super::fail(e),
    };
    let proxy = match Proxy::build(settings) {
        Ok(p) => Arc::new(p),
        Err(e) => return super::fail(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return super::fail(format!("cannot start the runtime: {e}")),
    };
    match server::run_until_signal(&rt, proxy, |_| {}) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => super::fail(e),
    }
}
