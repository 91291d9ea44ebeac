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
    /// Validate the config, then tell the running proxy (`[proxy]
    /// pid_file`) to re-read it (SIGHUP).
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
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: config/vaultgate.toml]
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

/// How admin commands find the vault.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Vault socket [env: VAULTGATE_SOCKET; else the config's vault.socket]
    #[arg(long, env = "VAULTGATE_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// Config file whose `[vault]` socket to use [default: config/vaultgate.toml if present]
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a new key in the vault.
    Create {
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
    /// Import a PKCS#8 PEM private key (file, or - for stdin).
    Import {
        name: String,
        #[arg(long)]
        pem: PathBuf,
        /// Add it as the next version of an existing key.
        #[arg(long)]
        new_version: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a key's type, versions, state and dates.
    Describe {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a key's public key (PEM) and its SPKI SHA-256 id.
    Public {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a new version the primary.
    Rotate {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    Enable {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    Disable {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key after a waiting period (default 7 days).
    ScheduleDeletion {
        name: String,
        /// Waiting period, e.g. 7d or 30s (at least the vault's min_deletion_wait).
        #[arg(long)]
        wait: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    CancelDeletion {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sign stdin with a key; the signature goes to stdout.
    Sign {
        name: String,
        /// TLS scheme name, e.g. ecdsa-p256-sha256, rsa-pss-sha256, ed25519.
        #[arg(long)]
        scheme: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify a signature over stdin; exit 0 if valid, 1 if not.
    Verify {
        name: String,
        #[arg(long)]
        scheme: String,
        #[arg(long)]
        signature: PathBuf,
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
        #[arg(long, default_value = "")]
        context: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A fresh data key: plaintext and wrapped copy (as KMS GenerateDataKey).
    GenerateKey {
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 32)]
        bytes: u32,
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
        key: String,
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
        key: String,
        /// DNS name or IP address (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long)]
        common_name: Option<String>,
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
        key: String,
        /// The vault key of the issuing CA.
        #[arg(long)]
        ca: Option<String>,
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long)]
        common_name: Option<String>,
        /// Lifetime in days.
        #[arg(long)]
        days: Option<u32>,
        /// Make a CA certificate.
        #[arg(long)]
        is_ca: bool,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the chain bound to a key version.
    Show {
        key: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's chain: prints `ok N records` or the first bad one.
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
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write every key and version, wrapped under a backup passphrase.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Environment variable holding the backup passphrase (else read from stdin).
        #[arg(long)]
        passphrase_env: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restore a backup into this vault (keys that exist are refused).
    Import {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        passphrase_env: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}
