//! The certificate store: every configured certificate with its key,
//! indexed by host name. Built whole, then published through an `ArcSwap`
//! so a reload replaces it atomically while handshakes keep reading the
//! old one.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::{CertifiedKey, SigningKey};
use rustls::SignatureAlgorithm;

use super::FileKeyError;
use super::TlsError;
use crate::config::proxy::{CertSpec, KeyRef, ProxySettings};
use crate::pki;
use crate::signer::{VaultKey, VaultPool};

/// One certificate chain with its key, and what it was loaded from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub certified: Arc<CertifiedKey>,
    pub algorithm: SignatureAlgorithm,
    /// The key, when the vault holds it.
    pub vault: Option<VaultKey>,
}

/// Certificates by name. Each name may have several entries (an ECDSA and
/// an RSA one); ECDSA comes first, as it is cheaper to sign with.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Vec<Entry>>,
    /// (".suffix", entries), longest suffix first.
    wildcard: Vec<(String, Vec<Entry>)>,
    /// For clients without SNI, or with a name nothing matches.
    default: Vec<Entry>,
    /// Every certificate as loaded, in config order: what the status page
    /// and the expiry metrics show.
    pub served: Vec<Served>,
}

/// One configured certificate as it is being served.
#[derive(Debug, Clone)]
pub struct Served {
    pub names: Vec<String>,
    pub cert: std::path::PathBuf,
    /// `vault:NAME` or `file:PATH`.
    pub key: String,
    /// The vault key version that signs (`None` for `file:` keys).
    pub version: Option<u32>,
    pub algorithm: SignatureAlgorithm,
    /// The leaf's notAfter (Unix seconds): the chain served, which after a
    /// rotation is the one bound in the vault, not always the file's.
    pub not_after: Option<i64>,
}

impl CertStore {
    /// Loads every `[[proxy.cert]]`. `vault:` keys need `pool`.
    pub fn load(settings: &ProxySettings, pool: Option<&VaultPool>) -> Result<CertStore, TlsError> {
        let mut entries = Vec::new();
        for spec in &settings.certs {
            entries.push((spec, load_entry(spec, pool)?));
        }
        let served = entries
            .iter()
            .map(|(spec, e)| Served {
                names: spec.names.clone(),
                cert: spec.cert.clone(),
                key: spec.key.to_string(),
                version: e.vault.as_ref().map(VaultKey::version),
                algorithm: e.algorithm,
                not_after: e
                    .certified
                    .cert
                    .first()
                    .and_then(|c| pki::cert_not_after(c).ok()),
            })
            .collect();
        let mut store = CertStore {
            served,
            ..CertStore::default()
        };
        for (spec, entry) in &entries {
            for name in &spec.names {
                match name.strip_prefix('*') {
                    Some(suffix) => match store.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, v)) => v.push(entry.clone()),
                        None => store
                            .wildcard
                            .push((suffix.to_owned(), vec![entry.clone()])),
                    },
                    None => store
                        .exact
                        .entry(name.clone())
                        .or_default()
                        .push(entry.clone()),
                }
            }
        }
        store
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let default_name = settings.default_server_name.clone().or_else(|| {
            settings
                .certs
                .first()
                .and_then(|c| c.names.first().cloned())
        });
        if let Some(name) = default_name {
            store.default = store.lookup(Some(&name)).to_vec();
        }
        for v in store
            .exact
            .values_mut()
            .chain(store.wildcard.iter_mut().map(|(_, v)| v))
        {
            v.sort_by_key(|e| e.algorithm != SignatureAlgorithm::ECDSA);
        }
        store
            .default
            .sort_by_key(|e| e.algorithm != SignatureAlgorithm::ECDSA);
        Ok(store)
    }

    /// Every vault key the store signs with, once each.
    pub fn vault_keys(&self) -> Vec<VaultKey> {
        let mut keys: Vec<VaultKey> = Vec::new();
        let all = self
            .exact
            .values()
            .chain(self.wildcard.iter().map(|(_, v)| v))
            .chain(std::iter::once(&self.default));
        for key in all.flatten().filter_map(|e| e.vault.as_ref()) {
            let known = keys
                .iter()
                .any(|k| k.name() == key.name() && k.version() == key.version());
            if !known {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// The candidates for a server name (lower case), falling back to the
    /// default certificate.
    pub fn lookup(&self, sni: Option<&str>) -> &[Entry] {
        if let Some(name) = sni {
            if let Some(v) = self.exact.get(name) {
                return v;
            }
            for (suffix, v) in &self.wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                    return v;
                }
            }
        }
        &self.default
    }
}

/// Loads one certificate and its key, and refuses a key whose public half
/// is not the certificate's.
pub fn load_entry(spec: &CertSpec, pool: Option<&VaultPool>) -> Result<Entry, TlsError> {
    let certs = pki::read_pem_certs(&spec.cert).map_err(|source| TlsError::Cert {
        at: spec.cert_at.to_string(),
        source,
    })?;
    let cert_spki = pki::cert_spki(&certs[0])
        .map_err(|source| TlsError::Cert {
            at: spec.cert_at.to_string(),
            source,
        })?
        .to_vec();
    let label = spec.cert.display().to_string();
    let mut vault = None;
    let (certs, key): (_, Arc<dyn SigningKey>) = match &spec.key {
        KeyRef::Vault(name) => {
            let pool = pool.ok_or_else(|| TlsError::NoVault {
                key: name.clone(),
                sockets: Vec::new(),
            })?;
            let vault_err = |source| TlsError::Vault {
                at: spec.key_at.to_string(),
                key: name.clone(),
                source,
            };
            let found = crate::signer::key::public_key(pool, name, None).map_err(vault_err)?;
            let (_, primary, primary_spki) = &found;
            let primary = *primary;
            let (certs, spki) = if cert_spki == *primary_spki {
                (certs, cert_spki)
            } else {
                match bound_to(pool, name, primary, primary_spki) {
                    Some(bound) => (bound, primary_spki.clone()),
                    None => (certs, cert_spki),
                }
            };
            let key =
                VaultKey::load_from(pool, name, found, Some(&spki), &label).map_err(vault_err)?;
            if key.version() != primary {
                tracing::warn!(
                    key = %name,
                    serving = key.version(),
                    primary,
                    cert = %label,
                    "the key's primary version has no certificate: serving the older version until its signing grace ends; bind one with `vaultgate cert issue` or `vaultgate cert install`"
                );
            }
            vault = Some(key.clone());
            (certs, Arc::new(key))
        }
        KeyRef::File(path) => {
            let key = load_file_key(path).map_err(|source| TlsError::FileKey {
                at: spec.key_at.to_string(),
                path: path.clone(),
                source,
            })?;
            let matches = key
                .public_key()
                .is_some_and(|k| k.as_ref() == cert_spki.as_slice());
            if !matches {
                return Err(TlsError::Mismatch {
                    at: spec.key_at.to_string(),
                    cert: label,
                    key: spec.key.to_string(),
                });
            }
            (certs, key)
        }
    };
    let algorithm = key.algorithm();
    Ok(Entry {
        certified: Arc::new(CertifiedKey::new(certs, key)),
        algorithm,
        vault,
    })
}

/// The chain bound in the vault to `name` version `version`, if there is
/// one and its leaf is that version's key. After a rotation this is how
/// the proxy serves the new version without anyone rewriting its files:
/// `vaultgate cert issue` or `cert install` binds it, the vault's event
/// makes the proxy reload.
fn bound_to(
    pool: &VaultPool,
    name: &str,
    version: u32,
    spki: &[u8],
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = crate::signer::key::bound_chain(pool, name, version)?;
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let leaf = certs.first()?;
    (pki::cert_spki(leaf).ok()? == spki).then_some(certs)
}

/// An in-process key from a PEM file: the comparison/migration path.
fn load_file_key(path: &std::path::Path) -> Result<Arc<dyn SigningKey>, FileKeyError> {
    let data = std::fs::read(path)?;
    let der = rustls_pemfile::private_key(&mut data.as_slice())?.ok_or(FileKeyError::NoKey)?;
    Ok(rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?)
}
