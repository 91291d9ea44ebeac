//! The `vaultgate` binary: parse the command line, call the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vaultgate::cli::dispatch(vaultgate::cli::args::Cli::parse())
}
