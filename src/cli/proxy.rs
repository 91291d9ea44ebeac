//! `vaultgate proxy` (being built: issue 3).

use std::process::ExitCode;

use super::args::ConfigArg;

pub fn main(_args: ConfigArg) -> ExitCode {
    eprintln!("vaultgate proxy: not built yet");
    ExitCode::FAILURE
}
