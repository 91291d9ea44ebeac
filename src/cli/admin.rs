//! Admin and use commands: `key`, `data`, `audit`, `backup`. Each talks to
//! the vault over its socket as the invoking user, subject to its grants.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use super::args::{AuditCommand, BackupCommand, CertCommand, Conn, DataCommand, KeyCommand};
use super::fail;
use crate::client::{ClientError, VaultClient};
use crate::config::{self, vault::VaultSettings, ConfigError};
use crate::protocol::{scheme, KeyType, Op, Request};
use crate::vault::backup;
use crate::vault::keys;

type CmdResult = Result<ExitCode, AdminError>;

/// Why an admin or use command failed; printed as `vaultgate: …`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vault(#[from] ClientError),
    /// One key or backup entry of several failed.
    #[error("{what}: {source}")]
    Entry { what: String, source: ClientError },
    #[error("{path}: {source}", path = .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Stdio {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid duration {value:?}: {source} (examples: 7d, 30s)")]
    Duration {
        value: String,
        source: humantime::DurationError,
    },
    #[error("unknown scheme {0:?} (ecdsa-p256-sha256, ecdsa-p384-sha384, rsa-pkcs1-sha256, rsa-pss-sha256, ed25519, …)")]
    Scheme(String),
    #[error("unknown key type {0:?}; one of: {names}", names = key_type_names())]
    KeyType(String),
    #[error("the vault answered {0} with an unexpected response")]
    Unexpected(Op),
    #[error("give both --plaintext-out and --ciphertext-out, or neither")]
    DataKeyOutputs,
    #[error("environment variable {0} is not set")]
    PassphraseEnv(String),
    #[error("backup passphrase must be at least 8 bytes")]
    PassphraseTooShort,
    #[error("{path}: {source}", path = .path.display())]
    Backup {
        path: PathBuf,
        source: crate::vault::backup::BackupError,
    },
    #[error("{0} is not base64")]
    Base64(String),
    #[error(transparent)]
    Key(#[from] crate::vault::keys::KeyError),
    #[error(transparent)]
    Master(#[from] crate::vault::master::MasterError),
    #[error(transparent)]
    Audit(#[from] crate::vault::audit::AuditError),
    #[error("encoding the backup: {0}")]
    Encode(serde_json::Error),
    #[error("cannot make the client key or its CSR: {0}")]
    ClientKey(rcgen::Error),
}

fn key_type_names() -> String {
    KeyType::ALL
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the socket: `--socket`/`VAULTGATE_SOCKET`, else the config's
/// `[vault] socket` (`--config`, or `config/vaultgate.toml` if present).
pub fn socket_path(conn: &Conn) -> Result<PathBuf, ConfigError> {
    if let Some(s) = &conn.socket {
        return Ok(s.clone());
    }
    let path = match &conn.config {
        Some(p) => p.clone(),
        None if config::default_path().exists() => config::default_path(),
        None => return Ok(PathBuf::from(config::vault::DEFAULT_SOCKET)),
    };
    let loaded = config::load(&path)?;
    Ok(VaultSettings::from_loaded(&loaded)?.socket)
}

fn block_on<F: std::future::Future<Output = CmdResult>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(AdminError::Runtime(e)),
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

async fn connect(conn: &Conn) -> Result<VaultClient, AdminError> {
    let path = socket_path(conn)?;
    Ok(VaultClient::connect(&path).await?)
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, AdminError> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|source| AdminError::Stdio {
            what: "reading stdin",
            source,
        })?;
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<(), AdminError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|source| AdminError::Stdio {
            what: "writing stdout",
            source,
        })
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A describe document as people read it: times (Unix seconds on the
/// wire) as RFC 3339, the rotation period as `365d`.
fn for_people(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                match (k.as_str(), field.as_u64()) {
                    ("created" | "rotated" | "deletion_at" | "retire_at", Some(t)) => {
                        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
                        *field = Value::String(humantime::format_rfc3339_seconds(when).to_string());
                    }
                    ("rotate_every", Some(secs)) => {
                        *field = Value::String(crate::config::duration::format(
                            std::time::Duration::from_secs(secs),
                        ));
                    }
                    _ => for_people(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(for_people),
        _ => {}
    }
}

fn parse_duration(s: &str) -> Result<u64, AdminError> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|source| AdminError::Duration {
            value: s.to_owned(),
            source,
        })
}

fn parse_scheme(s: &str) -> Result<u16, AdminError> {
    scheme::from_name(s).ok_or_else(|| AdminError::Scheme(s.to_owned()))
}

/// A file's bytes, its path named if it cannot be read.
fn read_file(path: &Path) -> Result<Vec<u8>, AdminError> {
    std::fs::read(path).map_err(|source| AdminError::File {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), AdminError> {
    crate::fsutil::write_atomic(path, data, mode).map_err(|source| AdminError::File {
        path: path.to_owned(),
        source,
    })
}

async fn key_create(
    name: String,
    key_type: String,
    rotate_every: Option<String>,
    conn: &Conn,
) -> CmdResult {
    let key_type = KeyType::from_name(&key_type).ok_or(AdminError::KeyType(key_type))?;
    let rotate_every = rotate_every.as_deref().map(parse_duration).transpose()?;
    let c = connect(conn).await?;
    let v = c
        .json(&Request::Create {
            key: name.clone(),
            key_type,
            rotate_every,
        })
        .await?;
    println!("created {name} ({key_type}), version {}", v["primary"]);
    Ok(ExitCode::SUCCESS)
}

async fn key_import(name: String, pem: &Path, new_version: bool, conn: &Conn) -> CmdResult {
    let bytes = if pem == Path::new("-") {
        read_stdin()?
    } else {
        Zeroizing::new(read_file(pem)?)
    };
    let c = connect(conn).await?;
    let v = c
        .json(&Request::Import {
            key: name.clone(),
            pem: bytes,
            new_version,
        })
        .await?;
    println!(
        "imported {name} ({}), version {}",
        v["type"].as_str().unwrap_or("?"),
        v["primary"]
    );
    Ok(ExitCode::SUCCESS)
}

async fn key_schedule_deletion(name: String, wait: Option<String>, conn: &Conn) -> CmdResult {
    let wait_secs = wait.as_deref().map(parse_duration).transpose()?;
    let c = connect(conn).await?;
    let v = c
        .json(&Request::ScheduleDeletion {
            key: name.clone(),
            wait_secs,
        })
        .await?;
    let at = v["deletion_at"].as_u64().unwrap_or(0);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
    println!(
        "{name} will be deleted at {}",
        humantime::format_rfc3339_seconds(when)
    );
    Ok(ExitCode::SUCCESS)
}

/// `key list` as a table, one key a line.
fn print_key_table(v: &serde_json::Value) {
    println!(
        "{:<24} {:<11} {:<17} {:>7} {:>8}",
        "NAME", "TYPE", "STATE", "PRIMARY", "VERSIONS"
    );
    for k in v.as_array().into_iter().flatten() {
        let s = |f: &str| k[f].as_str().unwrap_or("-").to_owned();
        let n = |f: &str| k[f].as_u64().map_or("-".into(), |x| x.to_string());
        println!(
            "{:<24} {:<11} {:<17} {:>7} {:>8}",
            s("name"),
            s("type"),
            s("state"),
            n("primary"),
            n("versions")
        );
    }
}

pub fn key(cmd: KeyCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            KeyCommand::Create {
                name,
                key_type,
                rotate_every,
                conn,
            } => key_create(name, key_type, rotate_every, &conn).await,
            KeyCommand::Import {
                name,
                pem,
                new_version,
                conn,
            } => key_import(name, &pem, new_version, &conn).await,
            KeyCommand::List { json, conn } => {
                let c = connect(&conn).await?;
                let v = c.json(&Request::List).await?;
                if json {
                    println!("{}", pretty(&v));
                } else {
                    print_key_table(&v);
                }
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Describe { name, conn } => {
                let c = connect(&conn).await?;
                let mut v = c.json(&Request::Describe { key: name }).await?;
                for_people(&mut v);
                println!("{}", pretty(&v));
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Public {
                name,
                version,
                conn,
            } => {
                let c = connect(&conn).await?;
                let (_, _, spki) = c.public_key(&name, version).await?;
                print!("{}", keys::spki_pem(&spki));
                println!("spki-sha256: {}", keys::spki_sha256(&spki));
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Rotate { name, conn } => {
                let c = connect(&conn).await?;
                let v = c.json(&Request::Rotate { key: name.clone() }).await?;
                println!("rotated {name}: primary version {}", v["primary"]);
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Enable { name, conn } => {
                state_change(&conn, Request::Enable { key: name }).await
            }
            KeyCommand::Disable { name, conn } => {
                state_change(&conn, Request::Disable { key: name }).await
            }
            KeyCommand::CancelDeletion { name, conn } => {
                state_change(&conn, Request::CancelDeletion { key: name }).await
            }
            KeyCommand::ScheduleDeletion { name, wait, conn } => {
                key_schedule_deletion(name, wait, &conn).await
            }
            KeyCommand::Sign {
                name,
                scheme,
                version,
                conn,
            } => {
                let scheme = parse_scheme(&scheme)?;
                let message = read_stdin()?;
                let c = connect(&conn).await?;
                let (_, sig) = c.sign(&name, version, scheme, &message).await?;
                write_stdout(&sig)?;
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Verify {
                name,
                scheme,
                signature,
                version,
                conn,
            } => {
                let scheme = parse_scheme(&scheme)?;
                let sig = read_file(&signature)?;
                let message = read_stdin()?;
                let c = connect(&conn).await?;
                let ok = c.verify(&name, version, scheme, &message, &sig).await?;
                if ok {
                    println!("valid");
                    Ok(ExitCode::SUCCESS)
                } else {
                    println!("invalid");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    })
}

async fn state_change(conn: &Conn, req: Request) -> CmdResult {
    let c = connect(conn).await?;
    let v = c.json(&req).await?;
    println!(
        "{}: {}",
        v["name"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn data(cmd: DataCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            DataCommand::Encrypt { key, context, conn } => {
                let plaintext = read_stdin()?;
                let c = connect(&conn).await?;
                let blob = c.encrypt(&key, &plaintext, context.as_bytes()).await?;
                write_stdout(&blob)?;
            }
            DataCommand::Decrypt { context, conn } => {
                let blob = read_stdin()?;
                let c = connect(&conn).await?;
                let (_, _, plaintext) = c.decrypt(&blob, context.as_bytes()).await?;
                write_stdout(&plaintext)?;
            }
            DataCommand::GenerateKey {
                key,
                bytes,
                context,
                plaintext_out,
                ciphertext_out,
                conn,
            } => {
                let c = connect(&conn).await?;
                let (plain, wrapped) = c.generate_data_key(&key, bytes, context.as_bytes()).await?;
                match (&plaintext_out, &ciphertext_out) {
                    (Some(p), Some(w)) => {
                        write_file(p, &plain, 0o600)?;
                        write_file(w, &wrapped, 0o644)?;
                    }
                    (None, None) => {
                        let v = serde_json::json!({
                            "plaintext": B64.encode(&plain[..]),
                            "ciphertext": B64.encode(&wrapped),
                        });
                        println!("{v}");
                    }
                    _ => return Err(AdminError::DataKeyOutputs),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn cert(cmd: CertCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            CertCommand::Install {
                key,
                chain,
                version,
                conn,
            } => {
                let pem = std::fs::read_to_string(&chain).map_err(|source| AdminError::File {
                    path: chain.clone(),
                    source,
                })?;
                let c = connect(&conn).await?;
                c.json(&Request::CertInstall {
                    key: key.clone(),
                    version,
                    chain_pem: pem,
                })
                .await?;
                let (v, _) = c.cert_get(&key, version).await?;
                println!("installed certificate for {key} version {v}");
            }
            CertCommand::Csr {
                key,
                names,
                common_name,
                version,
                out,
                conn,
            } => {
                let params =
                    serde_json::json!({"names": names, "common_name": common_name}).to_string();
                let c = connect(&conn).await?;
                let resp = c
                    .call(&Request::CertCsr {
                        key,
                        version,
                        params,
                    })
                    .await?;
                let crate::protocol::Response::Certificate { chain_pem, .. } = resp else {
                    return Err(AdminError::Unexpected(Op::CertCsr));
                };
                match out {
                    Some(path) => write_file(&path, chain_pem.as_bytes(), 0o644)?,
                    None => print!("{chain_pem}"),
                }
            }
            CertCommand::Issue {
                key,
                ca,
                names,
                common_name,
                days,
                is_ca,
                path_len,
                version,
                conn,
            } => {
                let params = serde_json::json!({
                    "ca": ca,
                    "names": names,
                    "common_name": common_name,
                    "days": days,
                    "is_ca": is_ca,
                    "path_len": path_len,
                })
                .to_string();
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::CertIssue {
                        key: key.clone(),
                        version,
                        params,
                    })
                    .await?;
                let issued = version.unwrap_or(v["primary"].as_u64().unwrap_or(0) as u32);
                println!("issued a certificate for {key} version {issued}");
            }
            CertCommand::IssueClient {
                name,
                ca,
                uris,
                names,
                days,
                out_dir,
                conn,
            } => {
                issue_client(&name, &ca, &uris, &names, days, &out_dir, &conn).await?;
            }
            CertCommand::Show { key, version, conn } => {
                let c = connect(&conn).await?;
                let (_, pem) = c.cert_get(&key, version).await?;
                print!("{pem}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `cert issue-client`: the key is made here, so only its public half
/// (in a CSR) reaches the vault; nothing is written unless the vault signed.
async fn issue_client(
    name: &str,
    ca: &str,
    uris: &[String],
    names: &[String],
    days: u32,
    out_dir: &Path,
    conn: &Conn,
) -> CmdResult {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(AdminError::ClientKey)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(AdminError::ClientKey)?;
    let params = serde_json::json!({
        "csr": csr,
        "uris": uris,
        "names": names,
        "days": days,
    })
    .to_string();
    let c = connect(conn).await?;
    let resp = c
        .call(&Request::CertSign {
            key: ca.to_owned(),
            version: None,
            params,
        })
        .await?;
    let crate::protocol::Response::Certificate { chain_pem, .. } = resp else {
        return Err(AdminError::Unexpected(Op::CertSign));
    };
    let (key_path, cert_path) = (
        out_dir.join(format!("{name}.key")),
        out_dir.join(format!("{name}.pem")),
    );
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, chain_pem.as_bytes(), 0o644)?;
    println!("key {}", key_path.display());
    println!("certificate {}", cert_path.display());
    for uri in uris {
        println!("identity cert:{uri}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(cmd: AuditCommand) -> ExitCode {
    let (state_dir, master_key, conn) = match cmd {
        AuditCommand::Verify {
            state_dir,
            master_key,
            conn,
        } => (state_dir, master_key, conn),
        AuditCommand::Rotate { conn } => return audit_rotate(conn),
    };
    if let Some(dir) = state_dir {
        let source = match master_key.parse() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let result = (|| -> Result<_, AdminError> {
            let master = crate::vault::master::obtain_existing(&dir, &source)?;
            let sub = crate::vault::master::Subkeys::derive(&master)?;
            Ok(crate::vault::audit::verify(&dir, &sub.audit_mac)?)
        })();
        return match result {
            Ok(r) => {
                println!(
                    "{}",
                    verified(r.records, r.segments as u64, r.first, r.last, r.events)
                );
                println!("{}", anchor(r.last, &r.last_mac));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    block_on(async move {
        let c = connect(&conn).await?;
        let v = c.json(&Request::AuditVerify).await?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        println!(
            "{}",
            verified(
                n("records"),
                n("segments"),
                n("first"),
                n("last"),
                n("events")
            )
        );
        println!(
            "{}",
            anchor(n("last"), v["last_mac"].as_str().unwrap_or_default())
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `ok N records`, then where they are: what scripts match on first.
/// Then what they stand for, counted records summed.
fn verified(records: u64, segments: u64, first: u64, last: u64, events: u64) -> String {
    let range = if records == 0 {
        String::new()
    } else {
        format!(" ({first}..={last})")
    };
    format!(
        "ok {records} records{range} across {segments} closed segment(s) and audit.log, \
         for {events} operations and events (counted records summed)"
    )
}

/// The line to ship elsewhere (see docs/security.md): a later `verify`
/// whose chain no longer holds this record at this MAC was replaced.
fn anchor(seq: u64, mac: &str) -> String {
    format!("anchor seq={seq} mac={mac}")
}

fn audit_rotate(conn: Conn) -> ExitCode {
    block_on(async move {
        let c = connect(&conn).await?;
        let v = c.json(&Request::AuditRotate).await?;
        println!("{}", v["segment"].as_str().unwrap_or_default());
        if let Some(deleted) = v["deleted"].as_array() {
            for d in deleted.iter().filter_map(|d| d.as_str()) {
                eprintln!("retention deleted {d}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn backup_passphrase(env: &Option<String>) -> Result<Zeroizing<Vec<u8>>, AdminError> {
    let pass = match env {
        Some(var) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| AdminError::PassphraseEnv(var.clone()))?
                .into_bytes(),
        ),
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|source| AdminError::Stdio {
                    what: "reading the passphrase from stdin",
                    source,
                })?;
            Zeroizing::new(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        }
    };
    if pass.len() < 8 {
        return Err(AdminError::PassphraseTooShort);
    }
    Ok(pass)
}

pub fn backup(cmd: BackupCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            BackupCommand::Export {
                out,
                key,
                passphrase_env,
                conn,
            } => {
                let pass = backup_passphrase(&passphrase_env)?;
                let salt = keys::random_bytes(16)?;
                let c = connect(&conn).await?;
                let resp = c
                    .call(&Request::BackupExport {
                        key,
                        passphrase: pass,
                        salt: salt.to_vec(),
                    })
                    .await?;
                let crate::protocol::Response::BackupEntry { blob } = resp else {
                    return Err(AdminError::Unexpected(Op::BackupExport));
                };
                let n = backup::parse(&blob)
                    .map_err(|e| AdminError::Backup {
                        path: out.clone(),
                        source: e,
                    })?
                    .count();
                write_file(&out, &blob, 0o600)?;
                println!("exported {n} keys to {}", out.display());
            }
            BackupCommand::Import {
                input,
                skip_existing,
                passphrase_env,
                conn,
            } => {
                let blob = read_file(&input)?;
                // Refuse what is not a backup here, before asking for a passphrase.
                backup::parse(&blob).map_err(|e| AdminError::Backup {
                    path: input.clone(),
                    source: e,
                })?;
                let pass = backup_passphrase(&passphrase_env)?;
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::BackupImport {
                        blob,
                        passphrase: pass,
                        skip_existing,
                    })
                    .await?;
                let imported = v["imported"].as_array().map_or(0, Vec::len);
                for k in v["imported"].as_array().into_iter().flatten() {
                    println!("restored {}", k["name"].as_str().unwrap_or("?"));
                }
                for k in v["skipped"].as_array().into_iter().flatten() {
                    println!("skipped {} (exists)", k.as_str().unwrap_or("?"));
                }
                println!("restored {imported} keys");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
