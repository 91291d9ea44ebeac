//! `vaultgate vault`: settings from the config file, overridden by flags.

use std::io::Write;
use std::process::ExitCode;

use super::args::VaultArgs;
use super::fail;
use crate::config::{self, vault::VaultSettings};

pub fn main(args: VaultArgs) -> ExitCode {
    crate::telemetry::init_tracing();
    let mut settings = match &args.config {
        Some(path) => match config::load(path).and_then(|l| VaultSettings::from_loaded(&l)) {
            Ok(s) => s,
            Err(e) => return fail(e),
        },
        None => VaultSettings::default(),
    };
    if let Some(s) = args.socket {
        settings.socket = s;
    }
    if let Some(d) = args.state_dir {
        settings.state_dir = d;
    }
    if let Some(m) = &args.master_key {
        match m.parse() {
            Ok(m) => settings.master_key = m,
            Err(e) => return fail(e),
        }
    }
    if let Some(m) = &args.metrics_listen {
        match m.parse() {
            Ok(a) => settings.metrics_listen = Some(a),
            Err(e) => return fail(format!("invalid --metrics-listen {m:?}: {e}")),
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let ready_line = args.ready_line;
    let result = rt.block_on(crate::vault::run(settings, |s| {
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
