//! `[log]`: what the process log lets through. Read by whichever process
//! the file configures (the proxy, the vault, `run`), at start and again
//! on every reload.
//!
//! ```toml
//! [log]
//! level = "info,vaultgate::access=warn"
//! ```

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, Loaded};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// A level (`"debug"`) or `tracing` directives, as `RUST_LOG` takes
    /// them (`"info,vaultgate::access=off"`).
    pub level: Option<Spanned<String>>,
}

/// The validated `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Filter directives, checked to parse.
    pub level: String,
}

/// Every `[log]` default in one place (docs/configuration.md lists them).
impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".to_owned(),
        }
    }
}

impl LogSettings {
    /// Validates `[log]` (absent: the defaults).
    pub fn from_loaded(loaded: &Loaded) -> Result<LogSettings, ConfigError> {
        let src = loaded.source();
        let d = LogSettings::default();
        let Some(level) = loaded.file.log.as_ref().and_then(|l| l.level.as_ref()) else {
            return Ok(d);
        };
        let text = level.get_ref();
        let invalid = |why: String| {
            src.error(
                level.span(),
                format!(
                    "invalid log level {text:?}: {why} (a level such as \"info\" or \"debug\", or directives such as \"info,vaultgate::access=off\")"
                ),
            )
        };
        // tracing reads a bare word as a target name, so "loud" would
        // quietly mean "everything from target loud": a bare word must be
        // a level here.
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !directive.contains('=')
                && directive
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .is_err()
            {
                return Err(invalid(format!(
                    "{directive:?} is not a level (error, warn, info, debug, trace, off); a target takes one as TARGET=LEVEL"
                )));
            }
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(text)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(LogSettings {
            level: level.get_ref().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<LogSettings, ConfigError> {
        let loaded = crate::config::parse(std::path::Path::new("t.toml"), text.to_owned())?;
        LogSettings::from_loaded(&loaded)
    }

    #[test]
    fn a_missing_section_is_the_default() {
        assert_eq!(settings("").unwrap(), LogSettings::default());
    }

    #[test]
    fn directives_are_accepted_and_nonsense_is_located() {
        let ok = settings("[log]\nlevel = \"warn,vaultgate::access=off\"\n").unwrap();
        assert_eq!(ok.level, "warn,vaultgate::access=off");
        let e = settings("[log]\nlevel = \"loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:2:9: invalid log level \"loud\""),
            "{e}"
        );
    }
}
