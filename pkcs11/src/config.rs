//! Where the module finds the vault.
//!
//! In order: `VAULTGATE_SOCKET` (as for the CLI); the `socket` of the
//! config file named by `VAULTGATE_PKCS11_CONFIG`, or of
//! `/etc/vaultgate/pkcs11.toml` if that exists; the vault's default socket.
//! The file may also narrow the keys the token shows (`keys`).
//! A file is needed where the environment is not passed on: nginx gives
//! its workers only the variables its `env` directive names, and a child
//! that re-initialises the module must still find the vault (a forked
//! child keeps its parent's settings anyway, see `module`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const SOCKET_ENV: &str = "VAULTGATE_SOCKET";
pub const CONFIG_ENV: &str = "VAULTGATE_PKCS11_CONFIG";
pub const LOG_ENV: &str = "VAULTGATE_PKCS11_LOG";
pub const DEFAULT_CONFIG: &str = "/etc/vaultgate/pkcs11.toml";
/// The vault's own default (`[vault] socket`).
pub const DEFAULT_SOCKET: &str = vaultgate::config::vault::DEFAULT_SOCKET;
/// A vault that has not answered in this long is taken for gone: the
/// operation fails rather than hold a web server's worker forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub timeout: Duration,
    /// Append a line here for every failure (nothing is ever printed).
    pub log: Option<PathBuf>,
    /// Name patterns (`*`, `?`) of the vault keys the token shows, of
    /// those the uid may use; default all. Debian 12's libp11 engine
    /// (0.4.12) gives up on a token holding a key type it does not know
    /// (Ed25519): `keys = ["tls-*"]` keeps such keys out of its sight.
    pub keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    socket: Option<PathBuf>,
    timeout: Option<String>,
    log: Option<PathBuf>,
    keys: Option<Vec<String>>,
}

impl Config {
    /// Reads the environment and the config file.
    pub fn load() -> Result<Config> {
        let named = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let file = match &named {
            Some(p) => Some(read(p)?),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(read(Path::new(DEFAULT_CONFIG))?),
            None => None,
        };
        let path = named.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        Config::from_parts(
            std::env::var_os(SOCKET_ENV).map(PathBuf::from),
            std::env::var_os(LOG_ENV).map(PathBuf::from),
            file,
            &path,
        )
    }

    fn from_parts(
        socket_env: Option<PathBuf>,
        log_env: Option<PathBuf>,
        file: Option<File>,
        path: &Path,
    ) -> Result<Config> {
        let (file_socket, timeout, file_log, keys) = match file {
            Some(f) => (f.socket, f.timeout, f.log, f.keys),
            None => (None, None, None, None),
        };
        let timeout = match timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(&t).map_err(|source| Error::ConfigTimeout {
                path: path.to_owned(),
                value: t.clone(),
                source,
            })?,
        };
        Ok(Config {
            socket: socket_env
                .filter(|s| !s.as_os_str().is_empty())
                .or(file_socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            timeout,
            log: log_env.or(file_log),
            keys: keys.unwrap_or_else(|| vec!["*".to_owned()]),
        })
    }
}

impl Config {
    /// Whether the token shows the vault key `name`.
    pub fn shows(&self, name: &str) -> bool {
        self.keys
            .iter()
            .any(|p| wildmatch::WildMatch::new(p).matches(name))
    }
}

fn read(path: &Path) -> Result<File> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::ConfigParse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> File {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_environment_wins_then_the_file_then_the_default() {
        let p = Path::new("/etc/vaultgate/pkcs11.toml");
        let f = || Some(file("socket = \"/f.sock\"\ntimeout = \"2s\"\n"));
        let c = Config::from_parts(Some("/env.sock".into()), None, f(), p).unwrap();
        assert_eq!(c.socket, Path::new("/env.sock"));
        assert_eq!(c.timeout, Duration::from_secs(2));
        let c = Config::from_parts(None, None, f(), p).unwrap();
        assert_eq!(c.socket, Path::new("/f.sock"));
        let c = Config::from_parts(None, None, None, p).unwrap();
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.keys, ["*"]);
        let c = Config::from_parts(None, None, Some(file("keys = [\"tls-*\"]")), p).unwrap();
        assert!(c.shows("tls-web") && !c.shows("ssh-host"));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        assert!(toml::from_str::<File>("sockett = \"/x\"").is_err());
        let e = Config::from_parts(
            None,
            None,
            Some(file("timeout = \"soon\"")),
            Path::new("/etc/x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file /etc/x.toml: timeout \"soon\""),
            "{e}"
        );
    }
}
