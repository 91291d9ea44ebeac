//! `[run]`: what `vaultgate run` bootstraps on first start and how it
//! supervises the vault child.
//!
//! Certificates are not listed here: every `[[proxy.cert]]` with a `vault:`
//! key whose certificate file is missing is issued by the dev CA on start.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{duration, ConfigError, Loaded};
use crate::protocol::KeyType;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// The dev CA certificate (PEM) written on first run.
    pub dev_ca: Option<Spanned<String>>,
    /// Vault key name of the dev CA's key.
    pub ca_key: Option<Spanned<String>>,
    /// Type of TLS keys created for certificates that need one.
    pub key_type: Option<Spanned<String>>,
    /// How long certificates issued by the dev CA are valid.
    pub cert_validity: Option<Spanned<String>>,
    /// Wait at least this long between restarts of a vault child that died.
    pub restart_backoff: Option<Spanned<String>>,
    /// How long to wait for a (re)started vault to answer.
    pub vault_start_timeout: Option<Spanned<String>>,
    /// Serve a small demo page here when nothing else listens there, so
    /// the embedded default answers out of the box.
    pub demo_backend: Option<Spanned<String>>,
    /// When a `vault:` key rotates, issue its new version a certificate
    /// from the dev CA (same names) and serve it. On by default.
    pub auto_issue: Option<bool>,
    /// Re-issue a dev certificate when it expires within this; shorter
    /// than `cert_validity`.
    pub renew_before: Option<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    pub dev_ca: PathBuf,
    pub ca_key: String,
    pub key_type: KeyType,
    pub cert_validity: Duration,
    pub restart_backoff: Duration,
    pub vault_start_timeout: Duration,
    pub demo_backend: Option<std::net::SocketAddr>,
    pub auto_issue: bool,
    pub renew_before: Duration,
}

/// Every `[run]` default in one place (docs/configuration.md lists them).
/// `dev_ca` is relative to the config file's directory.
impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            dev_ca: PathBuf::from("../certs/dev-ca.pem"),
            ca_key: "dev-ca".to_owned(),
            key_type: KeyType::EcdsaP256,
            cert_validity: Duration::from_secs(90 * 86400),
            restart_backoff: Duration::from_secs(1),
            vault_start_timeout: Duration::from_secs(30),
            demo_backend: None,
            auto_issue: true,
            renew_before: Duration::from_secs(30 * 86400),
        }
    }
}

impl RunSettings {
    /// Validates `[run]` (missing section: defaults, relative to the config).
    pub fn from_loaded(loaded: &Loaded) -> Result<RunSettings, ConfigError> {
        let src = loaded.source();
        let d = RunSettings::default();
        let empty = RunFile::default();
        let r = loaded.file.run.as_ref().unwrap_or(&empty);
        let ca_key = match &r.ca_key {
            Some(k)
                if k.get_ref().is_empty()
                    || !k.get_ref().chars().all(super::vault::is_name_char) =>
            {
                return Err(src.error(k.span(), format!("invalid key name {:?}", k.get_ref())))
            }
            Some(k) => k.get_ref().clone(),
            None => d.ca_key,
        };
        let key_type = match &r.key_type {
            None => d.key_type,
            Some(t) => match KeyType::from_name(t.get_ref()) {
                Some(k) if k.is_signing() => k,
                _ => {
                    return Err(src.error(
                        t.span(),
                        format!("invalid key_type {:?}: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519", t.get_ref()),
                    ))
                }
            },
        };
        let settings = RunSettings {
            dev_ca: loaded.resolve(
                r.dev_ca
                    .as_ref()
                    .map_or(d.dev_ca.as_path(), |p| p.get_ref().as_ref()),
            ),
            ca_key,
            key_type,
            cert_validity: duration::parse_opt(&src, &r.cert_validity)?.unwrap_or(d.cert_validity),
            restart_backoff: duration::parse_opt(&src, &r.restart_backoff)?
                .unwrap_or(d.restart_backoff),
            vault_start_timeout: duration::parse_opt(&src, &r.vault_start_timeout)?
                .unwrap_or(d.vault_start_timeout),
            auto_issue: r.auto_issue.unwrap_or(d.auto_issue),
            renew_before: duration::parse_opt(&src, &r.renew_before)?.unwrap_or(d.renew_before),
            demo_backend: match &r.demo_backend {
                None => None,
                Some(a) => Some(a.get_ref().parse().map_err(|e| {
                    src.error(
                        a.span(),
                        format!("invalid demo_backend {:?}: {e}", a.get_ref()),
                    )
                })?),
            },
        };
        if settings.renew_before >= settings.cert_validity {
            let span = r.renew_before.as_ref().map_or(0..0, |d| d.span());
            return Err(src.error(
                span,
                "renew_before must be shorter than cert_validity (or every check would re-issue)",
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_and_errors() {
        let loaded = super::super::parse(Path::new("/x/config/v.toml"), String::new()).unwrap();
        let s = RunSettings::from_loaded(&loaded).unwrap();
        assert_eq!(s.dev_ca, PathBuf::from("/x/config/../certs/dev-ca.pem"));
        assert_eq!(s.key_type, KeyType::EcdsaP256);
        let loaded = super::super::parse(
            Path::new("v.toml"),
            "[run]\nkey_type = \"aes-256\"\n".into(),
        )
        .unwrap();
        let e = RunSettings::from_loaded(&loaded).unwrap_err().to_string();
        assert!(e.starts_with("v.toml:2:12: invalid key_type"), "{e}");
    }
}
