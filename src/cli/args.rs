//! The command line, as clap structs. `main.rs` parses these and calls
//! [`super::dispatch`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vaultgate",
    version,
    about = "TLS-offload reverse proxy with an isolated key vault"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key vault: the isolated signing process.
    Vault(VaultArgs),
    /// Run the TLS-terminating reverse proxy against a running vault.
    Proxy(ConfigArg),
    /// Run vault + proxy on this machine: the embedded default.
    Run(ConfigArg),
    /// Validate a config file without starting anything (like `nginx -t`).
    Check(ConfigArg),
    /// Validate the config, then have the running proxy and vault (their
    /// `pid_file`s) re-read it, and report how each reload went.
    Reload(ConfigArg),
    /// Manage and use keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Envelope encryption with `aes-256` keys (stdin to stdout, binary-safe).
    #[command(subcommand)]
    Data(DataCommand),
    /// Certificates bound to key versions.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Wrapped backups of every key and version.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// The keystore's home: move a single node's keystore into a cluster.
    #[command(subcommand)]
    Store(StoreCommand),
    /// A vault cluster on etcd, read from etcd itself.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: config/vaultgate.toml here, else the built-in default's under $VAULTGATE_HOME]
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct VaultArgs {
    /// Config file with a `[vault]` section; flags override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Unix socket to listen on.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory holding the keystore, master key file and audit log.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// "file", "passphrase-env:VAR" or "passphrase-stdin".
    #[arg(long)]
    pub master_key: Option<String>,
    /// Prometheus metrics listener, e.g. 127.0.0.1:9101.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Started as root, switch to this user (name or uid) for good once
    /// the socket is bound and the state dir prepared.
    #[arg(long)]
    pub user: Option<String>,
    /// Primary group after the switch [default: the user's].
    #[arg(long, requires = "user")]
    pub group: Option<String>,
    /// Print "ready" on stdout once the socket accepts connections.
    #[arg(long)]
    pub ready_line: bool,
}

// How admin commands find the vault (flattened into each of them; a doc
// comment here would become the `about` of every subcommand without one).
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Vault socket [default: the config's `[vault] socket`]
    #[arg(long, env = "VAULTGATE_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// Config file whose `[vault]` socket to use [default: config/vaultgate.toml here, else the built-in default's, if present]
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a new key in the vault.
    Create {
        /// The key's name: 1-64 of A-Z a-z 0-9 . _ -
        name: String,
        /// ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519, aes-256
        #[arg(long = "type", short = 't')]
        key_type: String,
        /// Rotate automatically this often, e.g. 365d.
        #[arg(long)]
        rotate_every: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Import a PKCS#8 PEM private key.
    Import {
        /// The key's name.
        name: String,
        /// The PEM file, or - for stdin.
        #[arg(long)]
        pem: PathBuf,
        /// Add it as the next version of an existing key.
        #[arg(long)]
        new_version: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the keys you may list: name, type, state, primary version, versions.
    List {
        /// Print the vault's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a key's type, versions, state and dates (JSON).
    Describe {
        /// The key's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a key's public key (PEM) and its SPKI SHA-256 id.
    Public {
        /// The key's name.
        name: String,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a new version the primary; old versions still verify and decrypt.
    Rotate {
        /// The key's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Let a disabled key be used again.
    Enable {
        /// The key's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Refuse every use of a key until it is enabled again (it stays stored).
    Disable {
        /// The key's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key after a waiting period; until then it cannot be used,
    /// and `cancel-deletion` brings it back.
    ScheduleDeletion {
        /// The key's name.
        name: String,
        /// Waiting period, e.g. 7d [default: the vault's `default_deletion_wait`;
        /// never below its `min_deletion_wait`]
        #[arg(long)]
        wait: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop a scheduled deletion; the key comes back disabled, as in KMS.
    CancelDeletion {
        /// The key's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sign stdin with a key; the signature goes to stdout.
    Sign {
        /// The key's name.
        name: String,
        /// TLS scheme name, e.g. ecdsa-p256-sha256, rsa-pss-sha256, ed25519.
        #[arg(long)]
        scheme: String,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify a signature over stdin; exit 0 if valid, 1 if not.
    Verify {
        /// The key's name.
        name: String,
        /// TLS scheme name, as for `sign`.
        #[arg(long)]
        scheme: String,
        /// File holding the signature.
        #[arg(long)]
        signature: PathBuf,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Encrypt stdin under an aes-256 key; the ciphertext blob goes to stdout.
    Encrypt {
        /// The aes-256 key.
        #[arg(long)]
        key: String,
        /// Encryption context (authenticated, not encrypted); needed again to decrypt.
        #[arg(long, default_value = "")]
        context: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Decrypt a blob from stdin; the blob names its key and version.
    Decrypt {
        /// The encryption context it was encrypted with.
        #[arg(long, default_value = "")]
        context: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A fresh data key: plaintext and wrapped copy (as KMS GenerateDataKey).
    GenerateKey {
        /// The aes-256 key that wraps it.
        #[arg(long)]
        key: String,
        /// Length of the data key (1-1024).
        #[arg(long, default_value_t = 32)]
        bytes: u32,
        /// Encryption context of the wrapped copy; needed again to unwrap it.
        #[arg(long, default_value = "")]
        context: String,
        /// Write the plaintext key here (0600) instead of printing it.
        #[arg(long)]
        plaintext_out: Option<PathBuf>,
        /// Write the wrapped key here instead of printing it.
        #[arg(long)]
        ciphertext_out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Bind a certificate chain (PEM, leaf first) to a key version, after
    /// checking that the leaf's public key is that version's.
    Install {
        /// The key's name.
        key: String,
        /// PEM file: the chain, leaf first.
        #[arg(long)]
        chain: PathBuf,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a CSR signed by the key (for an external CA); then
    /// `cert install` binds the chain the CA returns.
    Csr {
        /// The key's name.
        key: String,
        /// DNS name or IP address (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Subject common name [default: the first name]
        #[arg(long)]
        common_name: Option<String>,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        /// Write the CSR here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Issue and bind a certificate for a key version, signed by a CA key
    /// held in the vault (or self-signed without --ca). Without --name, the
    /// names and lifetime of the certificate being replaced are kept.
    Issue {
        /// The key's name.
        key: String,
        /// The vault key of the issuing CA [default: self-signed]
        #[arg(long)]
        ca: Option<String>,
        /// DNS name or IP address (repeatable) [default: those of the certificate replaced]
        #[arg(long = "name")]
        names: Vec<String>,
        /// Subject common name [default: the first name]
        #[arg(long)]
        common_name: Option<String>,
        /// Lifetime in days, at most 36500 [default: that of the certificate replaced, else 90]
        #[arg(long)]
        days: Option<u32>,
        /// Make a CA certificate.
        #[arg(long)]
        is_ca: bool,
        /// With --is-ca: how many CA certificates may follow it in a path
        /// [default: none for a self-signed CA; under --ca, one less than
        /// the CA's, or 0 if it has none]
        #[arg(long, requires = "is_ca")]
        path_len: Option<u8>,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the chain bound to a key version.
    Show {
        /// The key's name.
        key: String,
        /// Key version [default: the primary]
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a client identity for a proxy that reaches vaults over mutual
    /// TLS: a new private key written here (it never passes through the
    /// vault) and a certificate for it signed by a CA key the vault holds.
    /// Writes NAME.key (0600) and NAME.pem (leaf, then the CA's chain).
    IssueClient {
        /// File name stem of what is written, e.g. the proxy's host name.
        name: String,
        /// The vault key of the issuing CA (needs `cert-sign` and
        /// `ca-issue` on it).
        #[arg(long)]
        ca: String,
        /// URI subject alternative name (repeatable), e.g.
        /// spiffe://example/proxy/edge-1: what `cert:` grants match.
        #[arg(long = "uri", required = true)]
        uris: Vec<String>,
        /// DNS name or IP address (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Directory to write NAME.key and NAME.pem into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's chain across all its segments: prints `ok N
    /// records` (and the segments and record range) or the first bad one.
    Verify {
        /// Read the log directly from this state dir (needs the master key);
        /// without it, ask the running vault.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Master key source when reading a state dir directly.
        #[arg(long, default_value = "file")]
        master_key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close the live audit log as a segment and begin a new one that
    /// chains on; prints the closed segment's file name.
    Rotate {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write every key and version to one file, sealed and authenticated
    /// as a whole under a backup passphrase.
    Export {
        /// The backup file to write (0600).
        #[arg(long)]
        out: PathBuf,
        /// Back up only this key [default: every key].
        #[arg(long)]
        key: Option<String>,
        /// Environment variable holding the backup passphrase (else read from stdin).
        #[arg(long)]
        passphrase_env: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restore a backup into this vault, every key or none (a key that
    /// exists refuses the whole import).
    Import {
        /// The backup file to read.
        #[arg(long = "in")]
        input: PathBuf,
        /// Import the keys that do not exist and leave those that do as they are.
        #[arg(long)]
        skip_existing: bool,
        /// Environment variable holding the backup passphrase (else read from stdin).
        #[arg(long)]
        passphrase_env: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Move a stopped single-node vault's keystore (every key, version and
    /// certificate) into an empty cluster on etcd, all or nothing.
    Migrate {
        /// A node's config file: its `[vault.store]` (kind = "etcd") is the
        /// cluster, its `[vault] master_key` how to read the old keystore.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The old vault's state dir (the vault stopped).
        #[arg(long)]
        from_state_dir: PathBuf,
        /// etcd's --max-request-bytes, if the members were started with more than the default.
        #[arg(long, default_value_t = crate::vault::migrate::MAX_REQUEST_BYTES)]
        etcd_max_request_bytes: usize,
        /// etcd's --max-txn-ops, if the members were started with more than the default.
        #[arg(long, default_value_t = crate::vault::migrate::MAX_TXN_OPS)]
        etcd_max_txn_ops: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every registered vault node, each etcd endpoint's state and the key
    /// count; exits non-zero when etcd cannot answer.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Config file whose `[vault.store]` names the cluster [default: config/vaultgate.toml here, else the built-in default's]
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand says what it does and every option what it means:
    /// `--help` is the manual.
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                missing.push(format!("{name}: no description"));
            }
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{name} {id}: no help"));
                }
            }
            walk(sub, &name, missing);
        }
    }

    #[test]
    fn every_subcommand_and_option_has_help() {
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "vaultgate", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
