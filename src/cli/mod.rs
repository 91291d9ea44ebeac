//! Subcommand implementations. Each returns an exit code; errors are one
//! line on stderr.
//!
//! - [`args`]: the command line (clap)
//! - [`vault`], [`proxy`], [`run`]: the long-running commands
//! - [`admin`]: `key`, `data`, `cert`, `audit`, `backup`, through the vault socket
//! - [`store`]: `store migrate`, a single node's keystore into a cluster
//! - [`cluster`]: `cluster status`, read from etcd directly
//! - [`check`]: `check`, which validates a config and its files (`reload`
//!   itself is here, below)
//! - [`demo_backend`]: the page `run` serves until a real backend listens

pub mod admin;
pub mod args;
pub mod check;
pub mod cluster;
pub mod demo_backend;
pub mod proxy;
pub mod run;
pub mod store;
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
        Command::Store(c) => store::main(c),
        Command::Cluster(c) => cluster::main(c),
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
        .unwrap_or_else(crate::config::default_path);
    crate::config::load(&path).map_err(fail)
}

/// `vaultgate reload`: refuses an invalid config here, with its location,
/// rather than have the running process refuse it in its log; then asks
/// each running process the config names a pid file for (the proxy, the
/// vault) to reload, and waits for its verdict: non-zero when the reload
/// failed there (the process keeps its running config).
fn reload(args: args::ConfigArg) -> ExitCode {
    let loaded = match load_config(&args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut pid_files = Vec::new();
    if loaded.file.proxy.is_some() {
        match crate::config::proxy::ProxySettings::from_loaded(&loaded) {
            Ok(s) => pid_files.extend(s.pid_file.map(|f| ("proxy", f))),
            Err(e) => return fail(format!("{e}; nothing was reloaded")),
        }
    }
    if loaded.file.vault.is_some() {
        match crate::config::vault::VaultSettings::from_loaded(&loaded) {
            Ok(s) => pid_files.extend(s.pid_file.map(|f| ("vault", f))),
            Err(e) => return fail(format!("{e}; nothing was reloaded")),
        }
    }
    // The whole check (certificates, keys, as the service's user), as
    // `vaultgate check` does: what it refuses, the process would.
    if !check::passes(&loaded) {
        return fail("the check failed; nothing was reloaded");
    }
    if pid_files.is_empty() {
        return fail(format!(
            "{}: neither [proxy] nor [vault] names a pid_file, so the running process cannot be found; send it SIGHUP yourself",
            loaded.path.display()
        ));
    }
    let mut failed = false;
    for (what, pid_file) in pid_files {
        match crate::control::reload(&pid_file, &loaded.path, RELOAD_WAIT) {
            Ok(status) => println!("{what} (pid {}) reloaded its config", status.pid),
            Err(e) => {
                eprintln!("vaultgate: {what}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How long `reload` waits for a process's verdict: a reload that loads
/// certificates through the vault takes well under a second.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
