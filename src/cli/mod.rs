//! Subcommand implementations. Each returns an exit code; errors are one
//! line on stderr.
//!
//! - [`args`]: the command line (clap)
//! - [`vault`], [`proxy`], [`run`]: the long-running commands
//! - [`admin`]: `key`, `data`, `cert`, `audit`, `backup`, through the vault socket
//! - [`check`]: `check`, which validates a config and its files (`reload`
//!   itself is here, below)
//! - [`demo_backend`]: the page `run` serves until a real backend listens

pub mod admin;
pub mod args;
pub mod check;
pub mod demo_backend;
pub mod proxy;
pub mod run;
pub mod vault;

use std::process::ExitCode;

use args::{Cli, Command};

pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Vault(a) => vault::main(a),
        Command::Proxy(a) => proxy::main(a),
        Command::Run(a) => run::main(a),
        Command::Check(a) => check::main(a),
        Command::Reload(a) => reload(a),
        Command::Key(c) => admin::key(c),
        Command::Data(c) => admin::data(c),
        Command::Cert(c) => admin::cert(c),
        Command::Audit(c) => admin::audit(c),
        Command::Backup(c) => admin::backup(c),
    }
}

/// Prints `vaultgate: message` on stderr and returns failure.
pub fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vaultgate: {message}");
    ExitCode::FAILURE
}

/// Loads the config named by `--config`, or the embedded default.
pub fn load_config(args: &args::ConfigArg) -> Result<crate::config::Loaded, ExitCode> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_PATH));
    crate::config::load(&path).map_err(fail)
}

/// `vaultgate reload`: refuses an invalid config here, with its location,
/// rather than have the running process refuse it in its log.
fn reload(args: args::ConfigArg) -> ExitCode {
    let loaded = match load_config(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let settings = match crate::config::proxy::ProxySettings::from_loaded(&loaded) {
        Ok(s) => s,
        Err(e) => return fail(format!("{e}; nothing was reloaded")),
    };
    let Some(pid_file) = settings.pid_file else {
        return fail(format!(
            "{}: no [proxy] pid_file, so the running process cannot be found; send it SIGHUP yourself",
            loaded.path.display()
        ));
    };
    let pid = match std::fs::read_to_string(&pid_file) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => pid,
            _ => return fail(format!("{}: not a pid", pid_file.display())),
        },
        Err(e) => {
            return fail(format!(
                "{}: {e} (is vaultgate running with this config?)",
                pid_file.display()
            ))
        }
    };
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => {
            println!("sent SIGHUP to {pid}: the config is re-read (see its log)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!(
            "cannot signal pid {pid} from {}: {e}",
            pid_file.display()
        )),
    }
}
