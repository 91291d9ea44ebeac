//! The config file as written: serde structs, one per section. Unknown keys
//! are errors, so a typo is reported rather than ignored.

use serde::Deserialize;

use super::vault::VaultFile;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub vault: Option<VaultFile>,
    /// `[proxy]`: validated by the proxy layer.
    pub proxy: Option<super::proxy::ProxyFile>,
    /// `[run]`: settings of the embedded default.
    pub run: Option<super::run::RunFile>,
    /// `[log]`: the process log, for whichever process reads the file.
    pub log: Option<super::log::LogFile>,
}
