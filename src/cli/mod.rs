//! Subcommand implementations. Each returns an exit code; errors are one
//! line on stderr.

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
