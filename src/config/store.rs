//! `[vault.store]`: where the vault keeps its keystore. `local` (the
//! default) is the state dir; `etcd` is a keystore shared by every vault
//! node of a cluster.

use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, Loaded};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// "local" or "etcd".
    pub kind: Option<Spanned<String>>,
    /// etcd members, `http://host:port` or `https://host:port`.
    pub endpoints: Option<Spanned<Vec<String>>>,
    /// Every etcd key the vault writes is under it.
    pub prefix: Option<Spanned<String>>,
    /// This node's name, unique in the cluster.
    pub node: Option<Spanned<String>>,
    /// etcd client TLS: the CA that signed the members' certificates,
    /// and this node's client certificate and key.
    pub tls_ca: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreSettings {
    /// `state_dir/keys`.
    #[default]
    Local,
    Etcd(EtcdStore),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStore {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node: String,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

pub const DEFAULT_PREFIX: &str = "/vaultgate/";

impl EtcdStore {
    /// The etcd client's settings for this store.
    pub fn client_config(&self) -> crate::etcd::EtcdConfig {
        crate::etcd::EtcdConfig {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

impl StoreSettings {
    pub fn from_file(loaded: &Loaded, f: &StoreFile) -> Result<StoreSettings, ConfigError> {
        let src = loaded.source();
        let kind = f.kind.as_ref().map_or("local", |k| k.get_ref().as_str());
        match kind {
            "local" => {
                let etcd_only = [
                    ("endpoints", f.endpoints.as_ref().map(Spanned::span)),
                    ("prefix", f.prefix.as_ref().map(Spanned::span)),
                    ("node", f.node.as_ref().map(Spanned::span)),
                    ("tls_ca", f.tls_ca.as_ref().map(Spanned::span)),
                    ("tls_cert", f.tls_cert.as_ref().map(Spanned::span)),
                    ("tls_key", f.tls_key.as_ref().map(Spanned::span)),
                ];
                if let Some((key, Some(span))) = etcd_only.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(src.error(
                        span,
                        format!("{key} is for kind = \"etcd\"; the local store is the state dir"),
                    ));
                }
                Ok(StoreSettings::Local)
            }
            "etcd" => etcd(loaded, f),
            other => Err(src.error(
                f.kind.as_ref().map_or(0..0, Spanned::span),
                format!("invalid store kind {other:?}: expected \"local\" or \"etcd\""),
            )),
        }
    }
}

/// `[vault.store]` with `kind = "etcd"`.
fn etcd(loaded: &Loaded, f: &StoreFile) -> Result<StoreSettings, ConfigError> {
    let src = loaded.source();
    let kind_span = f.kind.as_ref().map_or(0..0, Spanned::span);
    let Some(endpoints) = &f.endpoints else {
        return Err(src.error(
            kind_span,
            "kind = \"etcd\" needs endpoints = [\"http://host:2379\", …]",
        ));
    };
    if endpoints.get_ref().is_empty() {
        return Err(src.error(endpoints.span(), "endpoints is empty"));
    }
    let tls = f.tls_ca.is_some() || f.tls_cert.is_some();
    for e in endpoints.get_ref() {
        let scheme_ok = if tls {
            e.starts_with("https://")
        } else {
            e.starts_with("http://") || e.starts_with("https://")
        };
        let rest = e.split_once("://").map_or("", |(_, r)| r);
        if !scheme_ok || rest.is_empty() || rest.contains('/') {
            let want = if tls {
                "https://host:port (TLS is configured)"
            } else {
                "http://host:port or https://host:port"
            };
            return Err(src.error(
                endpoints.span(),
                format!("invalid etcd endpoint {e:?}: expected {want}"),
            ));
        }
    }
    let prefix = match &f.prefix {
        Some(p) => {
            let v = p.get_ref();
            if !v.starts_with('/') || !v.ends_with('/') || v.len() < 2 {
                return Err(src.error(
                        p.span(),
                        format!("invalid prefix {v:?}: a path that starts and ends with '/', e.g. \"{DEFAULT_PREFIX}\""),
                    ));
            }
            v.clone()
        }
        None => DEFAULT_PREFIX.to_owned(),
    };
    let Some(node) = &f.node else {
        return Err(src.error(
            kind_span,
            "kind = \"etcd\" needs node = \"NAME\", this node's name, unique in the cluster",
        ));
    };
    let n = node.get_ref();
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(src.error(
            node.span(),
            format!("invalid node name {n:?}: 1-64 of A-Z a-z 0-9 . _ -"),
        ));
    }
    if f.tls_cert.is_some() != f.tls_key.is_some() {
        let span = f
            .tls_cert
            .as_ref()
            .or(f.tls_key.as_ref())
            .map_or(0..0, Spanned::span);
        return Err(src.error(span, "tls_cert and tls_key go together"));
    }
    let path =
        |p: &Option<Spanned<String>>| p.as_ref().map(|p| loaded.resolve(p.get_ref().as_ref()));
    Ok(StoreSettings::Etcd(EtcdStore {
        endpoints: endpoints.get_ref().clone(),
        prefix,
        node: n.clone(),
        tls_ca: path(&f.tls_ca),
        tls_cert: path(&f.tls_cert),
        tls_key: path(&f.tls_key),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::vault::VaultSettings;

    fn store(text: &str) -> Result<StoreSettings, ConfigError> {
        let loaded = super::super::parse(Path::new("/etc/vg/v.toml"), text.to_owned())?;
        VaultSettings::from_loaded(&loaded).map(|s| s.store)
    }

    #[test]
    fn an_etcd_store_validates_and_resolves_its_files() {
        let s = store(
            r#"
[vault.store]
kind = "etcd"
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
node = "vault-a"
tls_ca = "etcd-ca.pem"
tls_cert = "/etc/vg/a.pem"
tls_key = "/etc/vg/a.key"
"#,
        )
        .unwrap();
        let StoreSettings::Etcd(e) = s else {
            panic!("not etcd: {s:?}")
        };
        assert_eq!(e.prefix, DEFAULT_PREFIX);
        assert_eq!(e.node, "vault-a");
        assert_eq!(e.tls_ca, Some(PathBuf::from("/etc/vg/etcd-ca.pem")));
        assert_eq!(store("[vault]\n").unwrap(), StoreSettings::Local);
        assert_eq!(
            store("[vault.store]\nkind = \"local\"\n").unwrap(),
            StoreSettings::Local
        );
    }

    #[test]
    fn a_bad_store_is_refused_at_its_line_and_column() {
        let etcd = "[vault.store]\nkind = \"etcd\"\n";
        for (text, line, says) in [
            (
                "[vault.store]\nkind = \"zookeeper\"\n".to_owned(),
                2,
                "invalid store kind",
            ),
            (format!("{etcd}node = \"a\"\n"), 2, "needs endpoints"),
            (
                format!("{etcd}endpoints = [\"127.0.0.1:2379\"]\nnode = \"a\"\n"),
                3,
                "invalid etcd endpoint",
            ),
            (
                format!("{etcd}endpoints = [\"http://e:2379\"]\n"),
                2,
                "needs node",
            ),
            (
                format!("{etcd}endpoints = [\"http://e:2379\"]\nnode = \"a b\"\n"),
                4,
                "invalid node name",
            ),
            (
                format!("{etcd}endpoints = [\"http://e:2379\"]\nnode = \"a\"\nprefix = \"vg\"\n"),
                5,
                "invalid prefix",
            ),
            (
                format!(
                    "{etcd}endpoints = [\"http://e:2379\"]\nnode = \"a\"\ntls_ca = \"ca.pem\"\n"
                ),
                3,
                "https://",
            ),
            (
                format!(
                    "{etcd}endpoints = [\"https://e:2379\"]\nnode = \"a\"\ntls_cert = \"c.pem\"\n"
                ),
                5,
                "go together",
            ),
            (
                "[vault.store]\nendpoints = [\"http://e:2379\"]\n".to_owned(),
                2,
                "is for kind = \"etcd\"",
            ),
        ] {
            let e = store(&text).expect_err(&text).to_string();
            assert!(
                e.contains(&format!("v.toml:{line}:")) && e.contains(says),
                "{text:?}: {e}"
            );
        }
    }
}
