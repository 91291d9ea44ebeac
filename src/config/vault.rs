//! `[vault]`: where the vault listens, where it keeps state, how it gets its
//! master key, and who may do what.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::user::{resolve_group, RunAs};
use super::{duration, ConfigError, Loaded, Source};
use crate::protocol::Op;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    pub socket: Option<Spanned<String>>,
    /// Octal permission bits for the socket, e.g. "0660".
    pub socket_mode: Option<Spanned<String>>,
    /// Group given the socket, so members (the proxy's user) can connect.
    pub socket_group: Option<Spanned<String>>,
    /// Also listen on TCP for callers over mutual TLS (TLS 1.3, client
    /// certificate required): one address or a list.
    pub tls_listen: Option<Spanned<super::proxy::OneOrMany>>,
    /// The vault's own certificate chain (PEM) for `tls_listen`.
    pub tls_cert: Option<Spanned<String>>,
    /// Its private key (PEM).
    pub tls_key: Option<Spanned<String>>,
    /// The CA (PEM) that issues the certificates callers present.
    pub client_ca: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    /// "file" (a 0600 key file in the state dir, created on first start),
    /// "passphrase-env:VAR" or "passphrase-stdin".
    pub master_key: Option<Spanned<String>>,
    /// Deletion waits shorter than this are refused.
    pub min_deletion_wait: Option<Spanned<String>>,
    /// Waiting period when a deletion request names none.
    pub default_deletion_wait: Option<Spanned<String>>,
    /// How long a signing version keeps signing after a rotation made
    /// another version primary, so handshakes that chose its certificate
    /// complete. Then it is retired (it still verifies).
    pub sign_grace: Option<Spanned<String>>,
    /// A caller that leaves its answers unread this long is disconnected.
    pub client_write_timeout: Option<Spanned<String>>,
    /// A request begun must be complete within this long; a caller with no
    /// grant is also disconnected after this long without a request.
    pub client_read_timeout: Option<Spanned<String>>,
    /// How often the audit log is fdatasync'ed (records are written to
    /// the file within 10 ms regardless); "0s": every batch.
    pub audit_sync: Option<Spanned<String>>,
    /// Rotate the audit log once it holds this much, e.g. "256MiB"; "0":
    /// only on `vaultgate audit rotate`.
    pub audit_rotate_size: Option<Spanned<String>>,
    /// Closed audit segments kept; older ones are deleted (audited) at a
    /// rotation. Absent: all are kept.
    pub audit_keep_segments: Option<Spanned<u64>>,
    /// Prometheus metrics listener, e.g. "127.0.0.1:9101".
    pub metrics_listen: Option<Spanned<String>>,
    /// Also send audit records to the local syslog.
    pub syslog: Option<bool>,
    /// Started as root, switch to this user (name or uid) for good once
    /// the socket is bound and the state dir prepared.
    pub user: Option<Spanned<String>>,
    /// Primary group after the switch (default: the user's).
    pub group: Option<Spanned<String>>,
    /// Where the running vault writes its pid, for `vaultgate reload`.
    pub pid_file: Option<Spanned<String>>,
    /// Where the keystore is kept: the state dir, or etcd.
    pub store: Option<super::store::StoreFile>,
    #[serde(default)]
    pub grant: Vec<GrantFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFile {
    /// "owner", "uid:N", "gid:N", "user:NAME", "group:NAME" or
    /// "cert:IDENTITY" (a pattern; callers over mutual TLS).
    pub principal: Spanned<String>,
    /// Key name patterns (`*` and `?` wildcards).
    pub keys: Spanned<Vec<String>>,
    /// Operation names, the CA rights "ca-issue" and "ca-issue-ca", or
    /// the groups "use", "admin", "all".
    pub ops: Spanned<Vec<String>>,
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `master.key` (0600) in the state dir, created on first start.
    File,
    /// A passphrase in this environment variable.
    PassphraseEnv(String),
    /// A passphrase on standard input (one line).
    PassphraseStdin,
}

impl std::str::FromStr for MasterKeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(MasterKeySource::File),
            "passphrase-stdin" => Ok(MasterKeySource::PassphraseStdin),
            _ => match s.strip_prefix("passphrase-env:") {
                Some(var) if !var.is_empty() => Ok(MasterKeySource::PassphraseEnv(var.to_owned())),
                _ => Err(format!(
                    "invalid master_key {s:?}: expected \"file\", \"passphrase-env:VAR\" or \"passphrase-stdin\""
                )),
            },
        }
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Uid(u32),
    Gid(u32),
    /// A caller over mutual TLS whose certificate identity (URI SAN, else
    /// DNS SAN) matches this pattern (`*` and `?` wildcards).
    Cert(String),
    /// The uid the vault runs as once started: after a switch to `user`,
    /// that user, not root.
    Owner,
}

/// One validated grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub principal: Principal,
    pub keys: Vec<String>,
    pub ops: Vec<Op>,
    /// What the grant lets a `cert-issue` do with these keys as its CA.
    pub ca: Vec<CaRight>,
}

/// Signing another key's certificate with a CA key: a use of the CA key,
/// so `cert-issue` needs one of these on the key it names as `ca`, as
/// well as `cert-issue` on the key the certificate is for. Not wire
/// operations (no request is "issue with this CA"), so grants carry them
/// beside their ops. Neither `use` nor `admin` includes them: whoever
/// holds one can make certificates that are trusted wherever the CA is
/// (HashiCorp Vault PKI gates this by role for the same reason). Only a
/// grant naming them, or `all`, gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CaRight {
    /// `ca-issue`: end-entity (not CA) certificates signed by this CA.
    Issue,
    /// `ca-issue-ca`: CA certificates signed by this CA, each with a path
    /// length below the CA's own. Does not include `ca-issue`.
    IssueCa,
}

impl CaRight {
    pub const ALL: [CaRight; 2] = [CaRight::Issue, CaRight::IssueCa];

    /// The name grants use.
    pub const fn name(self) -> &'static str {
        match self {
            CaRight::Issue => "ca-issue",
            CaRight::IssueCa => "ca-issue-ca",
        }
    }

    pub fn from_name(name: &str) -> Option<CaRight> {
        CaRight::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for CaRight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The grant groups an operation belongs to: `use` (a principal that
/// signs or encrypts needs no admin rights) and `admin` (it does not imply
/// use). A match without a wildcard, so a new opcode does not compile
/// until someone decides where it belongs.
pub const fn grant_groups(op: Op) -> (bool, bool) {
    const USE: (bool, bool) = (true, false);
    const ADMIN: (bool, bool) = (false, true);
    const BOTH: (bool, bool) = (true, true);
    match op {
        Op::Ping => (false, false),
        Op::Sign
        | Op::SignDigest
        | Op::Verify
        | Op::PublicKey
        | Op::Encrypt
        | Op::Decrypt
        | Op::GenerateDataKey => USE,
        Op::Subscribe | Op::CertGet | Op::Describe | Op::List => BOTH,
        Op::CertInstall
        | Op::CertCsr
        | Op::CertIssue
        | Op::CertSign
        | Op::Create
        | Op::Import
        | Op::Rotate
        | Op::Enable
        | Op::Disable
        | Op::ScheduleDeletion
        | Op::CancelDeletion
        | Op::BackupExport
        | Op::BackupImport
        | Op::AuditVerify
        | Op::AuditRotate => ADMIN,
    }
}

/// The operations a `use` grant allows.
pub fn use_ops() -> Vec<Op> {
    Op::ALL
        .iter()
        .copied()
        .filter(|&op| grant_groups(op).0)
        .collect()
}

/// The operations an `admin` grant allows.
pub fn admin_ops() -> Vec<Op> {
    Op::ALL
        .iter()
        .copied()
        .filter(|&op| grant_groups(op).1)
        .collect()
}

/// `tls_listen` and the files it serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    pub addrs: Vec<std::net::SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// `tls_listen` with `tls_cert`, `tls_key` and `client_ca`: all four or
/// none.
fn tls_listen(
    loaded: &Loaded,
    src: &Source,
    v: &VaultFile,
) -> Result<Option<TlsListen>, ConfigError> {
    let files = [
        ("tls_cert", &v.tls_cert),
        ("tls_key", &v.tls_key),
        ("client_ca", &v.client_ca),
    ];
    let Some(listen) = &v.tls_listen else {
        if let Some((name, Some(f))) = files.iter().find(|(_, f)| f.is_some()) {
            return Err(src.error(f.span(), format!("{name} is set but tls_listen is not")));
        }
        return Ok(None);
    };
    let mut paths = Vec::with_capacity(3);
    for (name, f) in files {
        match f {
            Some(f) => paths.push(loaded.resolve(f.get_ref().as_ref())),
            None => {
                return Err(src.error(
                    listen.span(),
                    format!("tls_listen needs {name} too (tls_cert, tls_key and client_ca)"),
                ))
            }
        }
    }
    let client_ca = paths.pop().unwrap_or_default();
    let key = paths.pop().unwrap_or_default();
    let cert = paths.pop().unwrap_or_default();
    Ok(Some(TlsListen {
        addrs: super::proxy::listen_addrs(src, listen)?,
        cert,
        key,
        client_ca,
    }))
}

/// Everything the vault needs to start, validated.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<u32>,
    /// The mutual-TLS listeners, if any.
    pub tls: Option<TlsListen>,
    pub state_dir: PathBuf,
    pub master_key: MasterKeySource,
    pub min_deletion_wait: Duration,
    pub default_deletion_wait: Duration,
    pub sign_grace: Duration,
    pub client_write_timeout: Duration,
    pub client_read_timeout: Duration,
    pub audit_sync: Duration,
    /// Rotate the audit log at this size (0: only when asked).
    pub audit_rotate_size: u64,
    /// Closed audit segments kept (0: all).
    pub audit_keep_segments: usize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub syslog: bool,
    /// The account to switch to after the privileged setup.
    pub user: Option<RunAs>,
    /// Written at start (before the switch), with its status file beside.
    pub pid_file: Option<PathBuf>,
    pub store: super::store::StoreSettings,
    /// Empty means "no grants configured": the vault's own uid gets all.
    pub grants: Vec<Grant>,
}

/// `audit_rotate_size` and `audit_keep_segments` into `s`.
fn audit_rotation(src: &Source, v: &VaultFile, s: &mut VaultSettings) -> Result<(), ConfigError> {
    if let Some(r) = &v.audit_rotate_size {
        let n = super::size::parse(src, r)?;
        if n != 0 && n < MIN_AUDIT_SEGMENT {
            return Err(src.error(
                    r.span(),
                    format!(
                        "audit_rotate_size {:?} is below the smallest segment, \"64KiB\" (\"0\": rotate only when asked)",
                        r.get_ref()
                    ),
                ));
        }
        s.audit_rotate_size = n;
    }
    if let Some(k) = &v.audit_keep_segments {
        s.audit_keep_segments = usize::try_from(*k.get_ref())
                .ok()
                .filter(|k| *k > 0)
                .ok_or_else(|| {
                    src.error(
                        k.span(),
                        format!(
                            "audit_keep_segments {} must be at least 1 (leave it out to keep every segment)",
                            k.get_ref()
                        ),
                    )
                })?;
    }
    Ok(())
}

/// Audit segments smaller than this would make rotation (a hash and two
/// renames) a cost paid every few hundred records.
const MIN_AUDIT_SEGMENT: u64 = 64 << 10;

pub const DEFAULT_SOCKET: &str = "/run/vaultgate/vault.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vaultgate";
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o660,
            socket_group: None,
            tls: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            master_key: MasterKeySource::File,
            min_deletion_wait: WEEK,
            default_deletion_wait: WEEK,
            sign_grace: Duration::from_secs(3600),
            client_write_timeout: Duration::from_secs(10),
            client_read_timeout: Duration::from_secs(10),
            audit_sync: Duration::from_secs(1),
            audit_rotate_size: 256 << 20,
            audit_keep_segments: 0,
            metrics_listen: None,
            syslog: false,
            user: None,
            pid_file: None,
            store: super::store::StoreSettings::Local,
            grants: Vec::new(),
        }
    }
}

impl VaultSettings {
    /// Validates the `[vault]` section of a loaded file (missing section:
    /// defaults).
    pub fn from_loaded(loaded: &Loaded) -> Result<VaultSettings, ConfigError> {
        let src = loaded.source();
        let mut s = VaultSettings::default();
        let Some(v) = &loaded.file.vault else {
            return Ok(s);
        };
        if let Some(p) = &v.socket {
            s.socket = loaded.resolve(p.get_ref().as_ref());
        }
        if let Some(p) = &v.pid_file {
            s.pid_file = Some(loaded.resolve(p.get_ref().as_ref()));
        }
        if let Some(p) = &v.state_dir {
            s.state_dir = loaded.resolve(p.get_ref().as_ref());
        }
        if let Some(m) = &v.socket_mode {
            s.socket_mode = u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m & !0o777 == 0 && *m & 0o007 == 0)
                .ok_or_else(|| {
                    src.error(
                        m.span(),
                        format!(
                            "invalid socket_mode {:?}: octal bits, no access for others (e.g. \"0660\")",
                            m.get_ref()
                        ),
                    )
                })?;
        }
        if let Some(g) = &v.socket_group {
            s.socket_group = Some(resolve_group(g.get_ref()).map_err(|e| src.error(g.span(), e))?);
        }
        s.tls = tls_listen(loaded, &src, v)?;
        s.user = super::user::resolve(&src, &v.user, &v.group)?;
        if let Some(m) = &v.master_key {
            s.master_key = m
                .get_ref()
                .parse()
                .map_err(|e: String| src.error(m.span(), e))?;
        }
        if let Some(d) = duration::parse_opt(&src, &v.min_deletion_wait)? {
            s.min_deletion_wait = d;
        }
        match duration::parse_opt(&src, &v.default_deletion_wait)? {
            Some(d) => s.default_deletion_wait = d,
            None => s.default_deletion_wait = s.default_deletion_wait.max(s.min_deletion_wait),
        }
        if s.default_deletion_wait < s.min_deletion_wait {
            let span = v.default_deletion_wait.as_ref().map_or(0..0, |d| d.span());
            return Err(src.error(
                span,
                "default_deletion_wait is shorter than min_deletion_wait",
            ));
        }
        if let Some(d) = duration::parse_opt(&src, &v.sign_grace)? {
            s.sign_grace = d;
        }
        if let Some(d) = duration::parse_opt(&src, &v.audit_sync)? {
            s.audit_sync = d;
        }
        audit_rotation(&src, v, &mut s)?;
        if let Some(d) = duration::parse_opt(&src, &v.client_write_timeout)? {
            s.client_write_timeout = d;
        }
        if let Some(d) = duration::parse_opt(&src, &v.client_read_timeout)? {
            if d.is_zero() {
                let span = v.client_read_timeout.as_ref().map_or(0..0, |d| d.span());
                return Err(src.error(span, "client_read_timeout must be longer than 0s"));
            }
            s.client_read_timeout = d;
        }
        if let Some(m) = &v.metrics_listen {
            s.metrics_listen = Some(m.get_ref().parse().map_err(|e| {
                src.error(
                    m.span(),
                    format!("invalid metrics_listen {:?}: {e}", m.get_ref()),
                )
            })?);
        }
        s.syslog = v.syslog.unwrap_or(false);
        if let Some(f) = &v.store {
            s.store = super::store::StoreSettings::from_file(loaded, f)?;
        }
        for g in &v.grant {
            s.grants.push(validate_grant(&src, g)?);
        }
        Ok(s)
    }
}

fn validate_grant(src: &super::Source, g: &GrantFile) -> Result<Grant, ConfigError> {
    let principal =
        parse_principal(g.principal.get_ref()).map_err(|e| src.error(g.principal.span(), e))?;
    if g.keys.get_ref().is_empty() {
        return Err(src.error(g.keys.span(), "a grant needs at least one key pattern"));
    }
    for k in g.keys.get_ref() {
        if k.is_empty() || !k.chars().all(|c| is_name_char(c) || c == '*' || c == '?') {
            return Err(src.error(g.keys.span(), format!("invalid key pattern {k:?}")));
        }
    }
    let mut ops = Vec::new();
    let mut ca = Vec::new();
    for name in g.ops.get_ref() {
        let group = match name.as_str() {
            "use" => use_ops(),
            "admin" => admin_ops(),
            "all" => {
                ca.extend(CaRight::ALL);
                Op::ALL.to_vec()
            }
            other => {
                if let Some(op) = Op::from_name(other) {
                    ops.push(op);
                } else if let Some(right) = CaRight::from_name(other) {
                    ca.push(right);
                } else {
                    return Err(src.error(
                        g.ops.span(),
                        format!("unknown operation {other:?} (use \"use\", \"admin\", \"all\", \"ca-issue\", \"ca-issue-ca\" or an operation name such as \"sign\")"),
                    ));
                }
                continue;
            }
        };
        ops.extend(group);
    }
    if ops.is_empty() && ca.is_empty() {
        return Err(src.error(g.ops.span(), "a grant needs at least one operation"));
    }
    ops.sort_by_key(|o| *o as u8);
    ops.dedup();
    ca.sort();
    ca.dedup();
    Ok(Grant {
        principal,
        keys: g.keys.get_ref().clone(),
        ops,
        ca,
    })
}

/// Characters allowed in key names (and so in patterns).
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn parse_principal(s: &str) -> Result<Principal, String> {
    let bad = || {
        format!("invalid principal {s:?}: expected \"owner\", \"uid:N\", \"gid:N\", \"user:NAME\", \"group:NAME\" or \"cert:IDENTITY\"")
    };
    if s == "owner" {
        return Ok(Principal::Owner);
    }
    if let Some(identity) = s.strip_prefix("cert:") {
        // Identities are URIs or DNS names: no spaces or controls.
        if identity.is_empty()
            || identity
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        return Ok(Principal::Cert(identity.to_owned()));
    }
    let (kind, value) = s.split_once(':').ok_or_else(bad)?;
    match kind {
        "uid" => value.parse().map(Principal::Uid).map_err(|_| bad()),
        "gid" => value.parse().map(Principal::Gid).map_err(|_| bad()),
        "user" => match nix::unistd::User::from_name(value) {
            Ok(Some(u)) => Ok(Principal::Uid(u.uid.as_raw())),
            _ => Err(format!("unknown user {value:?}")),
        },
        "group" => resolve_group(value).map(Principal::Gid),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(text: &str) -> Result<VaultSettings, ConfigError> {
        let loaded = super::super::parse(Path::new("/etc/vg/v.toml"), text.to_owned())?;
        VaultSettings::from_loaded(&loaded)
    }

    #[test]
    fn full_section_validates_and_resolves_paths() {
        let s = settings(
            r#"
[vault]
socket = "run/v.sock"
state_dir = "/var/lib/x"
socket_mode = "0600"
master_key = "passphrase-env:PW"
min_deletion_wait = "1s"
default_deletion_wait = "2s"
metrics_listen = "127.0.0.1:0"
[[vault.grant]]
principal = "uid:33"
keys = ["web*"]
ops = ["use"]
"#,
        )
        .unwrap();
        assert_eq!(s.socket, PathBuf::from("/etc/vg/run/v.sock"));
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.master_key, MasterKeySource::PassphraseEnv("PW".into()));
        assert_eq!(s.min_deletion_wait, Duration::from_secs(1));
        assert_eq!(s.grants[0].principal, Principal::Uid(33));
        assert!(s.grants[0].ops.contains(&Op::Sign));
        assert!(!s.grants[0].ops.contains(&Op::Rotate));
    }

    #[test]
    fn grant_groups_are_the_documented_ones() {
        let names = |ops: Vec<Op>| ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(" ");
        assert_eq!(
            names(use_ops()),
            "sign verify public-key encrypt decrypt generate-data-key sign-digest list describe subscribe cert-get"
        );
        assert_eq!(
            names(admin_ops()),
            "create import list describe rotate enable disable schedule-deletion cancel-deletion \
             backup-export backup-import audit-verify audit-rotate subscribe cert-install cert-get cert-csr cert-issue cert-sign"
        );
    }

    #[test]
    fn ca_rights_come_only_by_name_or_with_all() {
        let grant = |ops: &str| {
            settings(&format!(
                "[vault]\n[[vault.grant]]\nprincipal = \"uid:1\"\nkeys = [\"*\"]\nops = [{ops}]\n"
            ))
            .unwrap()
            .grants
            .remove(0)
        };
        assert_eq!(grant(r#""use", "admin""#).ca, vec![]);
        assert_eq!(grant(r#""all""#).ca, vec![CaRight::Issue, CaRight::IssueCa]);
        let g = grant(r#""ca-issue""#);
        assert_eq!((g.ops, g.ca), (vec![], vec![CaRight::Issue]));
        let g = grant(r#""ca-issue-ca", "cert-issue", "ca-issue-ca""#);
        assert_eq!((g.ops, g.ca), (vec![Op::CertIssue], vec![CaRight::IssueCa]));
        for r in CaRight::ALL {
            assert_eq!(CaRight::from_name(r.name()), Some(r));
            assert_eq!(
                Op::from_name(r.name()),
                None,
                "{r} is also an opcode's name"
            );
        }
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = settings("[vault]\nsocket_mode = \"0666\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/vg/v.toml:2:15: invalid socket_mode"),
            "{e}"
        );
        let e = settings(
            "[vault]\n[[vault.grant]]\nprincipal = \"uid:1\"\nkeys = [\"*\"]\nops = [\"fly\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/vg/v.toml:5:7: unknown operation \"fly\""),
            "{e}"
        );
        let e = settings("[vault]\nsokcet = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "/etc/vg/v.toml:2:1: unknown key `sokcet` in [vault]; did you mean `socket`?"
            ),
            "{e}"
        );
        let e = settings("[vault]\nmin_deletion_wait = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/vg/v.toml:2:21: invalid duration"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every example in config/ parses and its [vault] section validates.
    #[test]
    fn every_shipped_config_has_a_valid_vault_section() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let loaded = super::super::load(&path).unwrap_or_else(|e| panic!("{e}"));
                VaultSettings::from_loaded(&loaded).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the shipped examples in {}", dir.display());
    }
}
