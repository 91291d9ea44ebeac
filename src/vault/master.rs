//! The master key: where it comes from, and the subkeys derived from it.
//!
//! `keystore.json` in the state dir records how the master key is obtained
//! (a 0600 `master.key` file, or argon2id over a passphrase with the salt
//! and cost stored here) and a check value, so a wrong passphrase or a
//! swapped key file is refused at start instead of corrupting anything.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::hkdf;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::{self, random_bytes};
use crate::config::vault::MasterKeySource;
use crate::fsutil;

const META_FILE: &str = "keystore.json";
const KEY_FILE: &str = "master.key";
const CHECK_LABEL: &[u8] = b"vaultgate master check v1";

/// Why the master key is not available.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}", path = .path.display())]
    Bad { path: PathBuf, message: String },
    #[error("environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("no passphrase on standard input")]
    MissingStdin,
    #[error("the master key does not match this keystore (wrong passphrase or key file)")]
    Mismatch,
    #[error("keystore was created with master_key = {stored:?}, but {given:?} was given")]
    WrongSource { stored: String, given: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    format: u32,
    /// "file" or "argon2id".
    kdf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m_cost_kib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t_cost: Option<u32>,
    /// HMAC of a fixed label under the derived check key, hex.
    check: String,
}

/// Argon2id cost for new keystores (OWASP's first recommended setting).
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;

/// The subkeys the vault works with. The master key itself is dropped
/// (and zeroized) once these are derived.
pub struct Subkeys {
    /// Wraps key material at rest.
    pub wrap: ring::aead::LessSafeKey,
    /// Authenticates key records' metadata.
    pub record_mac: ring::hmac::Key,
    /// Chains the audit log.
    pub audit_mac: ring::hmac::Key,
    /// Authenticates the keystore manifest.
    pub manifest_mac: ring::hmac::Key,
}

impl Subkeys {
    pub fn derive(master: &[u8]) -> Result<Subkeys, keys::KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"vaultgate").extract(master);
        let expand = |label: &[u8]| -> Result<Zeroizing<[u8; 32]>, keys::KeyError> {
            let mut out = Zeroizing::new([0u8; 32]);
            prk.expand(&[label], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out[..]))
                .map_err(|_| keys::KeyError::Material(crate::protocol::KeyType::Aes256))?;
            Ok(out)
        };
        Ok(Subkeys {
            wrap: keys::aes_key(&expand(b"wrap v1")?[..])?,
            record_mac: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &expand(b"record mac v1")?[..],
            ),
            audit_mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &expand(b"audit mac v1")?[..]),
            manifest_mac: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &expand(b"manifest mac v1")?[..],
            ),
        })
    }
}

impl Subkeys {
    /// The value every node of a cluster must derive from its master key
    /// (kept in the shared store): never the key, and not a value that
    /// opens anything.
    pub fn cluster_check(&self) -> String {
        hex::encode(ring::hmac::sign(
            &self.manifest_mac,
            b"vaultgate cluster master check v1",
        ))
    }
}

fn check_value(master: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master);
    hex::encode(ring::hmac::sign(&key, CHECK_LABEL))
}

/// Obtains the master key of an existing keystore; never creates one.
pub fn obtain_existing(
    state_dir: &Path,
    source: &MasterKeySource,
) -> Result<Zeroizing<Vec<u8>>, MasterError> {
    let meta_path = state_dir.join(META_FILE);
    // `exists` would call an unreadable dir "no keystore": say what it is.
    match meta_path.try_exists() {
        Ok(true) => {}
        Ok(false) => {
            return Err(MasterError::Io {
                path: meta_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no keystore here"),
            })
        }
        Err(source) => {
            return Err(MasterError::Io {
                path: meta_path,
                source,
            })
        }
    }
    obtain(state_dir, source)
}

/// Obtains the master key for `state_dir`, creating it (and the keystore
/// metadata) on first start.
pub fn obtain(
    state_dir: &Path,
    source: &MasterKeySource,
) -> Result<Zeroizing<Vec<u8>>, MasterError> {
    let meta_path = state_dir.join(META_FILE);
    let meta: Option<Meta> = match std::fs::read(&meta_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| MasterError::Bad {
                path: meta_path.clone(),
                message: format!("does not parse: {e}"),
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(MasterError::Io {
                path: meta_path,
                source,
            })
        }
    };
    let given = match source {
        MasterKeySource::File => "file",
        _ => "argon2id",
    };
    match meta {
        Some(meta) => {
            if meta.kdf != given {
                return Err(MasterError::WrongSource {
                    stored: meta.kdf,
                    given: given.to_owned(),
                });
            }
            let master = match source {
                MasterKeySource::File => read_key_file(state_dir)?,
                _ => {
                    let pass = passphrase(source)?;
                    let salt = meta
                        .salt
                        .as_deref()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .ok_or_else(|| MasterError::Bad {
                            path: meta_path.clone(),
                            message: "salt missing or not base64".into(),
                        })?;
                    stretch(
                        &pass,
                        &salt,
                        meta.m_cost_kib.unwrap_or(M_COST_KIB),
                        meta.t_cost.unwrap_or(T_COST),
                    )
                    .map_err(|message| MasterError::Bad {
                        path: meta_path.clone(),
                        message,
                    })?
                }
            };
            if check_value(&master) != meta.check {
                return Err(MasterError::Mismatch);
            }
            Ok(master)
        }
        None => create(state_dir, source, &meta_path),
    }
}

fn create(
    state_dir: &Path,
    source: &MasterKeySource,
    meta_path: &Path,
) -> Result<Zeroizing<Vec<u8>>, MasterError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| MasterError::Io { path, source }
    };
    let rand_err = |_| MasterError::Bad {
        path: meta_path.to_owned(),
        message: "no randomness available".into(),
    };
    let (master, meta) = match source {
        MasterKeySource::File => {
            let master = random_bytes(32).map_err(rand_err)?;
            let key_path = state_dir.join(KEY_FILE);
            fsutil::write_atomic(&key_path, &master, 0o600).map_err(io(&key_path))?;
            let meta = Meta {
                format: 1,
                kdf: "file".into(),
                salt: None,
                m_cost_kib: None,
                t_cost: None,
                check: check_value(&master),
            };
            (master, meta)
        }
        _ => {
            let pass = passphrase(source)?;
            let salt = random_bytes(16).map_err(rand_err)?;
            let master =
                stretch(&pass, &salt, M_COST_KIB, T_COST).map_err(|message| MasterError::Bad {
                    path: meta_path.to_owned(),
                    message,
                })?;
            let meta = Meta {
                format: 1,
                kdf: "argon2id".into(),
                salt: Some(base64::engine::general_purpose::STANDARD.encode(&salt[..])),
                m_cost_kib: Some(M_COST_KIB),
                t_cost: Some(T_COST),
                check: check_value(&master),
            };
            (master, meta)
        }
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| MasterError::Bad {
        path: meta_path.to_owned(),
        message: e.to_string(),
    })?;
    fsutil::write_atomic(meta_path, &json, 0o600).map_err(io(meta_path))?;
    Ok(master)
}

fn read_key_file(state_dir: &Path) -> Result<Zeroizing<Vec<u8>>, MasterError> {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(KEY_FILE);
    let meta = std::fs::metadata(&path).map_err(|source| MasterError::Io {
        path: path.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(MasterError::Bad {
            path,
            message: format!(
                "mode {:o} lets others read the master key; chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    let bytes = Zeroizing::new(std::fs::read(&path).map_err(|source| MasterError::Io {
        path: path.clone(),
        source,
    })?);
    if bytes.len() != 32 {
        return Err(MasterError::Bad {
            path,
            message: format!("expected 32 bytes, found {}", bytes.len()),
        });
    }
    Ok(bytes)
}

fn passphrase(source: &MasterKeySource) -> Result<Zeroizing<Vec<u8>>, MasterError> {
    match source {
        MasterKeySource::PassphraseEnv(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Zeroizing::new(v.into_bytes())),
            _ => Err(MasterError::MissingEnv(var.clone())),
        },
        MasterKeySource::PassphraseStdin => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|_| MasterError::MissingStdin)?;
            let trimmed = line.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(MasterError::MissingStdin);
            }
            Ok(Zeroizing::new(trimmed.as_bytes().to_vec()))
        }
        MasterKeySource::File => Err(MasterError::MissingStdin),
    }
}

/// argon2id(passphrase, salt) → 32 bytes.
pub fn stretch(
    pass: &[u8],
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let params = argon2::Params::new(m_cost_kib, t_cost, 1, Some(32)).map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new(vec![0u8; 32]);
    argon
        .hash_password_into(pass, salt, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Argon2id cost used for backup passphrases (same as the master key).
pub fn stretch_default(pass: &[u8], salt: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    stretch(pass, salt, M_COST_KIB, T_COST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_key_is_created_once_then_reused_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = obtain(dir.path(), &MasterKeySource::File).unwrap();
        let b = obtain(dir.path(), &MasterKeySource::File).unwrap();
        assert_eq!(&a[..], &b[..]);
        std::fs::write(dir.path().join(KEY_FILE), [7u8; 32]).unwrap();
        assert!(matches!(
            obtain(dir.path(), &MasterKeySource::File),
            Err(MasterError::Mismatch)
        ));
        assert!(matches!(
            obtain(dir.path(), &MasterKeySource::PassphraseEnv("X".into())),
            Err(MasterError::WrongSource { .. })
        ));
    }

    #[test]
    fn passphrase_key_is_stretched_and_a_wrong_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let var = "VAULTGATE_TEST_MASTER_PW";
        std::env::set_var(var, "correct horse");
        let src = MasterKeySource::PassphraseEnv(var.into());
        let a = obtain(dir.path(), &src).unwrap();
        assert_eq!(&obtain(dir.path(), &src).unwrap()[..], &a[..]);
        std::env::set_var(var, "battery staple");
        assert!(matches!(
            obtain(dir.path(), &src),
            Err(MasterError::Mismatch)
        ));
    }
}
