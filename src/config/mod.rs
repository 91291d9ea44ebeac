//! Configuration: serde file structs ([`file`](mod@file)) checked into validated
//! settings ([`vault::VaultSettings`], …). Errors name file, line and column.
//!
//! Relative paths in a config file are resolved against the directory the
//! file is in, so a config means the same thing from any working directory.
//!
//! - [`file`](mod@file): the whole file as serde reads it
//! - [`proxy`], [`run`], [`vault`]: one section each, validated into its
//!   settings, every default in the settings type's `impl Default`
//! - [`log`]: `[log]`, the process log's level, for whichever process reads the file
//! - [`store`]: `[vault.store]`, where the keystore is kept (local or etcd)
//! - [`duration`], [`size`], [`user`]: values several sections share
//! - `keys`: the keys each section accepts; unknown ones found, and a near one suggested
//! - [`error`]: errors located at file, line and column

pub mod duration;
pub mod error;
pub mod file;
mod keys;
pub mod log;
pub mod proxy;
pub mod run;
pub mod size;
pub mod store;
pub mod user;
pub mod vault;

#[cfg(test)]
mod reference;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Location, Source};
pub use file::ConfigFile;

/// The config file used when none is named, in a checkout of the
/// repository: the embedded default.
pub const DEFAULT_PATH: &str = "config/vaultgate.toml";

/// The embedded default, built in: what `vaultgate run` uses away from a
/// checkout (see [`default_path`]).
pub const BUILTIN: &str = include_str!("../../config/vaultgate.toml");

/// Where the built-in default lives away from a checkout: its config file
/// is `HOME/config/vaultgate.toml`, so its relative paths put the vault's
/// state in `HOME/var` and the dev certificates in `HOME/certs`. HOME is
/// `$VAULTGATE_HOME`, else `$XDG_STATE_HOME/vaultgate`, else
/// `~/.local/state/vaultgate`, else (no home at all) `/var/lib/vaultgate-run`.
pub fn default_home() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("VAULTGATE_HOME")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("vaultgate")))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/vaultgate")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/vaultgate-run"))
}

/// The config file a command uses when none is named: `config/vaultgate.toml`
/// in the current directory (a checkout), else the built-in default's file
/// under [`default_home`] (which [`materialize_default`] writes).
pub fn default_path() -> PathBuf {
    let here = PathBuf::from(DEFAULT_PATH);
    if here.exists() {
        return here;
    }
    default_home().join("config/vaultgate.toml")
}

/// Writes the built-in default to `path` unless a file is there already
/// (an edited one is kept), so `run` has a real file to re-read on
/// SIGHUP and to hand to its vault. Returns whether it wrote it.
pub fn materialize_default(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, BUILTIN.as_bytes(), 0o644)?;
    Ok(true)
}

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
        toml::from_str(&text)
            .map_err(|e| keys::unknown_key(&src).unwrap_or_else(|| src.toml_error(e)))?
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
mod default_tests {
    use super::*;

    #[test]
    fn the_built_in_default_is_written_once_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/vaultgate.toml");
        assert!(materialize_default(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), BUILTIN);
        let loaded = load(&path).unwrap();
        let vault = vault::VaultSettings::from_loaded(&loaded).unwrap();
        assert_eq!(vault.state_dir, dir.path().join("config/../var/vault"));
        proxy::ProxySettings::from_loaded(&loaded).unwrap();
        // An edited file is kept.
        std::fs::write(&path, "# mine\n").unwrap();
        assert!(!materialize_default(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
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
