//! Configuration: serde file structs ([`file`](mod@file)) checked into validated
//! settings ([`vault::VaultSettings`], …). Errors name file, line and column.
//!
//! Relative paths in a config file are resolved against the directory the
//! file is in, so a config means the same thing from any working directory.

pub mod duration;
pub mod error;
pub mod file;
pub mod proxy;
pub mod run;
pub mod user;
pub mod vault;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Location, Source};
pub use file::ConfigFile;

/// The config file used when none is named: the embedded default.
pub const DEFAULT_PATH: &str = "config/vaultgate.toml";

/// A config file read from disk, parsed but not yet validated section by
/// section (each command validates the sections it uses).
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub file: ConfigFile,
}

impl Loaded {
    pub fn source(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
        }
    }

    /// The directory relative paths are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// `p` resolved against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir().join(p)
        }
    }
}

/// Reads and parses a config file. Syntax errors, unknown keys and wrong
/// types are reported with their location.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, text)
}

/// Parses config text that claims to come from `path`.
pub fn parse(path: &Path, text: String) -> Result<Loaded, ConfigError> {
    let file: ConfigFile = {
        let src = Source { path, text: &text };
        toml::from_str(&text).map_err(|e| src.toml_error(e))?
    };
    Ok(Loaded {
        path: path.to_owned(),
        text,
        file,
    })
}

/// Fuzz entry point: parse arbitrary bytes as a config file and validate
/// its `[vault]` section. Must never panic.
pub fn fuzz_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = parse(Path::new("fuzz.toml"), text.to_owned()) {
        let _ = vault::VaultSettings::from_loaded(&loaded);
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::fuzz_parse(&data);
        }

        #[test]
        fn random_vault_sections_never_panic(
            key in "(socket|socket_mode|state_dir|master_key|min_deletion_wait|sign_grace|metrics_listen)",
            value in "[ -~]{0,40}",
        ) {
            let text = format!("[vault]\n{key} = {value:?}\n[[vault.grant]]\nprincipal = {value:?}\nkeys = [{value:?}]\nops = [{value:?}]\n");
            super::fuzz_parse(text.as_bytes());
        }
    }
}
