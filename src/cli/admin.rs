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
use crate::client::VaultClient;
use crate::config::{self, vault::VaultSettings};
use crate::protocol::{scheme, KeyType, Request};
use crate::vault::backup::BackupFile;
use crate::vault::keys;

type CmdResult = Result<ExitCode, String>;

/// Finds the socket: `--socket`/`VAULTGATE_SOCKET`, else the config's
/// `[vault] socket` (`--config`, or `config/vaultgate.toml` if present).
pub fn socket_path(conn: &Conn) -> Result<PathBuf, String> {
    if let Some(s) = &conn.socket {
        return Ok(s.clone());
    }
    let path = match &conn.config {
        Some(p) => p.clone(),
        None if Path::new(config::DEFAULT_PATH).exists() => PathBuf::from(config::DEFAULT_PATH),
        None => return Ok(PathBuf::from(config::vault::DEFAULT_SOCKET)),
    };
    let loaded = config::load(&path).map_err(|e| e.to_string())?;
    Ok(VaultSettings::from_loaded(&loaded)
        .map_err(|e| e.to_string())?
        .socket)
}

fn block_on<F: std::future::Future<Output = CmdResult>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

async fn connect(conn: &Conn) -> Result<VaultClient, String> {
    let path = socket_path(conn)?;
    VaultClient::connect(&path).await.map_err(|e| e.to_string())
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing stdout: {e}"))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn parse_duration(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 7d, 30s)"))
}

fn parse_scheme(s: &str) -> Result<u16, String> {
    scheme::from_name(s).ok_or_else(|| {
        format!("unknown scheme {s:?} (ecdsa-p256-sha256, ecdsa-p384-sha384, rsa-pkcs1-sha256, rsa-pss-sha256, ed25519, …)")
    })
}

#[allow(
    clippy::too_many_lines,
    reason = "one arm per `key` subcommand, each a request and its printout"
)]
pub fn key(cmd: KeyCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            KeyCommand::Create {
                name,
                key_type,
                rotate_every,
                conn,
            } => {
                let key_type = KeyType::from_name(&key_type).ok_or_else(|| {
                    format!(
                        "unknown key type {key_type:?}; one of: {}",
                        KeyType::ALL
                            .iter()
                            .map(|t| t.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                let rotate_every = rotate_every.as_deref().map(parse_duration).transpose()?;
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::Create {
                        key: name.clone(),
                        key_type,
                        rotate_every,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                println!("created {name} ({key_type}), version {}", v["primary"]);
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Import {
                name,
                pem,
                new_version,
                conn,
            } => {
                let bytes = if pem == Path::new("-") {
                    read_stdin()?
                } else {
                    Zeroizing::new(
                        std::fs::read(&pem).map_err(|e| format!("{}: {e}", pem.display()))?,
                    )
                };
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::Import {
                        key: name.clone(),
                        pem: bytes,
                        new_version,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "imported {name} ({}), version {}",
                    v["type"].as_str().unwrap_or("?"),
                    v["primary"]
                );
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::List { json, conn } => {
                let c = connect(&conn).await?;
                let v = c.json(&Request::List).await.map_err(|e| e.to_string())?;
                if json {
                    println!("{}", pretty(&v));
                } else {
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
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Describe { name, conn } => {
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::Describe { key: name })
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{}", pretty(&v));
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Public {
                name,
                version,
                conn,
            } => {
                let c = connect(&conn).await?;
                let (_, _, spki) = c
                    .public_key(&name, version)
                    .await
                    .map_err(|e| e.to_string())?;
                print!("{}", keys::spki_pem(&spki));
                println!("spki-sha256: {}", keys::spki_sha256(&spki));
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Rotate { name, conn } => {
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::Rotate { key: name.clone() })
                    .await
                    .map_err(|e| e.to_string())?;
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
                let wait_secs = wait.as_deref().map(parse_duration).transpose()?;
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::ScheduleDeletion {
                        key: name.clone(),
                        wait_secs,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let at = v["deletion_at"].as_u64().unwrap_or(0);
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
                println!(
                    "{name} will be deleted at {}",
                    humantime::format_rfc3339_seconds(when)
                );
                Ok(ExitCode::SUCCESS)
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
                let (_, sig) = c
                    .sign(&name, version, scheme, &message)
                    .await
                    .map_err(|e| e.to_string())?;
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
                let sig = std::fs::read(&signature)
                    .map_err(|e| format!("{}: {e}", signature.display()))?;
                let message = read_stdin()?;
                let c = connect(&conn).await?;
                let ok = c
                    .verify(&name, version, scheme, &message, &sig)
                    .await
                    .map_err(|e| e.to_string())?;
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
    let v = c.json(&req).await.map_err(|e| e.to_string())?;
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
                let blob = c
                    .encrypt(&key, &plaintext, context.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                write_stdout(&blob)?;
            }
            DataCommand::Decrypt { context, conn } => {
                let blob = read_stdin()?;
                let c = connect(&conn).await?;
                let (_, _, plaintext) = c
                    .decrypt(&blob, context.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
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
                let (plain, wrapped) = c
                    .generate_data_key(&key, bytes, context.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                match (&plaintext_out, &ciphertext_out) {
                    (Some(p), Some(w)) => {
                        crate::fsutil::write_atomic(p, &plain, 0o600)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        crate::fsutil::write_atomic(w, &wrapped, 0o644)
                            .map_err(|e| format!("{}: {e}", w.display()))?;
                    }
                    (None, None) => {
                        let v = serde_json::json!({
                            "plaintext": B64.encode(&plain[..]),
                            "ciphertext": B64.encode(&wrapped),
                        });
                        println!("{v}");
                    }
                    _ => {
                        return Err(
                            "give both --plaintext-out and --ciphertext-out, or neither".into()
                        )
                    }
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
                let pem = std::fs::read_to_string(&chain)
                    .map_err(|e| format!("{}: {e}", chain.display()))?;
                let c = connect(&conn).await?;
                c.json(&Request::CertInstall {
                    key: key.clone(),
                    version,
                    chain_pem: pem,
                })
                .await
                .map_err(|e| e.to_string())?;
                let (v, _) = c.cert_get(&key, version).await.map_err(|e| e.to_string())?;
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
                    .await
                    .map_err(|e| e.to_string())?;
                let crate::protocol::Response::Certificate { chain_pem, .. } = resp else {
                    return Err("unexpected answer".into());
                };
                match out {
                    Some(path) => crate::fsutil::write_atomic(&path, chain_pem.as_bytes(), 0o644)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
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
                version,
                conn,
            } => {
                let params = serde_json::json!({
                    "ca": ca,
                    "names": names,
                    "common_name": common_name,
                    "days": days,
                    "is_ca": is_ca,
                })
                .to_string();
                let c = connect(&conn).await?;
                let v = c
                    .json(&Request::CertIssue {
                        key: key.clone(),
                        version,
                        params,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let issued = version.unwrap_or(v["primary"].as_u64().unwrap_or(0) as u32);
                println!("issued a certificate for {key} version {issued}");
            }
            CertCommand::Show { key, version, conn } => {
                let c = connect(&conn).await?;
                let (_, pem) = c.cert_get(&key, version).await.map_err(|e| e.to_string())?;
                print!("{pem}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn audit(cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify {
        state_dir,
        master_key,
        conn,
    } = cmd;
    if let Some(dir) = state_dir {
        let source = match master_key.parse() {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let result = crate::vault::master::obtain_existing(&dir, &source)
            .map_err(|e| e.to_string())
            .and_then(|master| {
                let sub =
                    crate::vault::master::Subkeys::derive(&master).map_err(|e| e.to_string())?;
                crate::vault::audit::verify(&dir, &sub.audit_mac).map_err(|e| e.to_string())
            });
        return match result {
            Ok(n) => {
                println!("ok {n} records");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    block_on(async move {
        let c = connect(&conn).await?;
        let v = c
            .json(&Request::AuditVerify)
            .await
            .map_err(|e| e.to_string())?;
        println!("ok {} records", v["records"]);
        Ok(ExitCode::SUCCESS)
    })
}

fn backup_passphrase(env: &Option<String>) -> Result<Zeroizing<Vec<u8>>, String> {
    let pass = match env {
        Some(var) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set"))?
                .into_bytes(),
        ),
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the passphrase from stdin: {e}"))?;
            Zeroizing::new(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        }
    };
    if pass.len() < 8 {
        return Err("backup passphrase must be at least 8 bytes".into());
    }
    Ok(pass)
}

pub fn backup(cmd: BackupCommand) -> ExitCode {
    block_on(async move {
        match cmd {
            BackupCommand::Export {
                out,
                passphrase_env,
                conn,
            } => {
                let pass = backup_passphrase(&passphrase_env)?;
                let salt = keys::random_bytes(16).map_err(|e| e.to_string())?;
                let c = connect(&conn).await?;
                let list = c.json(&Request::List).await.map_err(|e| e.to_string())?;
                let mut entries = Vec::new();
                for k in list.as_array().into_iter().flatten() {
                    let Some(name) = k["name"].as_str() else {
                        continue;
                    };
                    let resp = c
                        .call(&Request::BackupExport {
                            key: name.to_owned(),
                            passphrase: pass.clone(),
                            salt: salt.to_vec(),
                        })
                        .await
                        .map_err(|e| format!("key {name}: {e}"))?;
                    let crate::protocol::Response::BackupEntry { blob } = resp else {
                        return Err(format!("key {name}: unexpected answer"));
                    };
                    entries.push(B64.encode(blob));
                }
                let n = entries.len();
                let file = BackupFile {
                    format: 1,
                    salt: B64.encode(&salt[..]),
                    keys: entries,
                };
                let json = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
                crate::fsutil::write_atomic(&out, &json, 0o600)
                    .map_err(|e| format!("{}: {e}", out.display()))?;
                println!("exported {n} keys to {}", out.display());
            }
            BackupCommand::Import {
                input,
                passphrase_env,
                conn,
            } => {
                let bytes =
                    std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
                let file: BackupFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a vaultgate backup: {e}", input.display()))?;
                let salt = B64
                    .decode(&file.salt)
                    .map_err(|_| "backup salt is not base64".to_string())?;
                let pass = backup_passphrase(&passphrase_env)?;
                let c = connect(&conn).await?;
                let mut n = 0;
                for (i, entry) in file.keys.iter().enumerate() {
                    let blob = B64
                        .decode(entry)
                        .map_err(|_| format!("entry {i} is not base64"))?;
                    let v = c
                        .json(&Request::BackupImport {
                            blob,
                            passphrase: pass.clone(),
                            salt: salt.clone(),
                        })
                        .await
                        .map_err(|e| format!("entry {i}: {e}"))?;
                    println!("restored {}", v["name"].as_str().unwrap_or("?"));
                    n += 1;
                }
                println!("restored {n} keys");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
