//! The module's one error type, and the `CKR_*` code each case becomes at
//! the C boundary.

use std::path::PathBuf;

use cryptoki_sys::*;
use vaultgate::protocol::{ErrorCode, KeyType, Op, ProtocolError};

/// Why a call failed. Every variant names what it concerns; the text goes
/// to the optional log file (a PKCS#11 module prints nothing), the code
/// to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plain PKCS#11 outcome with nothing more to say (bad handle,
    /// buffer too small, …).
    #[error("{}", rv_name(*.0))]
    Rv(CK_RV),
    #[error("config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {path}: timeout {value:?}: {source}")]
    ConfigTimeout {
        path: PathBuf,
        value: String,
        source: humantime::DurationError,
    },
    #[error("cannot connect to the vault at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vault connection {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vault at {path} sent an invalid frame: {source}")]
    Protocol {
        path: PathBuf,
        source: ProtocolError,
    },
    #[error("vault at {path} answered request id {id}, which was not asked")]
    UnknownAnswer { path: PathBuf, id: u32 },
    #[error("vault at {path} closed the connection")]
    Closed { path: PathBuf },
    /// The vault's own error answer; `message` is the vault's text.
    #[error("vault refused {op} on key {key:?}: {code}: {message}")]
    Refused {
        op: Op,
        key: String,
        code: ErrorCode,
        message: String,
    },
    #[error("vault answered {op} on key {key:?} with something else")]
    Unexpected { op: Op, key: String },
    #[error("key {key:?}: {problem}")]
    Key { key: String, problem: KeyProblem },
}

/// What is wrong with what the vault said about one key; the key is left
/// out of the token (or, for a signature, the signature fails).
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error("the list answer does not parse: {0}")]
    List(serde_json::Error),
    #[error("the describe answer does not parse: {0}")]
    Describe(serde_json::Error),
    #[error("key id {0:?} is not hex")]
    Id(String),
    #[error("describe has no version {0}")]
    NoVersion(u32),
    #[error("public key of {answered} version {got}, not {wanted} version {version}")]
    PublicMismatch {
        answered: KeyType,
        got: u32,
        wanted: KeyType,
        version: u32,
    },
    #[error("public key does not parse: {0}")]
    Spki(x509_parser::error::X509Error),
    #[error("not an RSA public key")]
    NotRsa,
    #[error("certificate chain is empty")]
    NoCertificate,
    #[error("certificate PEM: {0}")]
    CertificatePem(x509_parser::error::PEMError),
    #[error("certificate does not parse: {0}")]
    Certificate(x509_parser::error::X509Error),
    #[error("the vault's ECDSA signature is not DER")]
    EcdsaSignature,
}

impl Error {
    pub fn rv(&self) -> CK_RV {
        match self {
            Error::Rv(rv) => *rv,
            Error::ConfigRead { .. } | Error::ConfigParse { .. } | Error::ConfigTimeout { .. } => {
                CKR_GENERAL_ERROR
            }
            Error::Connect { .. } | Error::Io { .. } | Error::Closed { .. } => CKR_DEVICE_ERROR,
            Error::Protocol { .. }
            | Error::UnknownAnswer { .. }
            | Error::Unexpected { .. }
            | Error::Key { .. } => CKR_FUNCTION_FAILED,
            Error::Refused { code, .. } => match code {
                ErrorCode::Denied
                | ErrorCode::Disabled
                | ErrorCode::PendingDeletion
                | ErrorCode::VersionRetired => CKR_KEY_FUNCTION_NOT_PERMITTED,
                ErrorCode::NotFound => CKR_KEY_HANDLE_INVALID,
                ErrorCode::InvalidInput => CKR_DATA_INVALID,
                ErrorCode::Unsupported => CKR_MECHANISM_INVALID,
                ErrorCode::Storage => CKR_DEVICE_ERROR,
                _ => CKR_FUNCTION_FAILED,
            },
        }
    }

    /// Worth a line in the log: not the ordinary outcomes a caller asks
    /// for (a length query, a handle it made up).
    pub fn is_notable(&self) -> bool {
        !matches!(self, Error::Rv(_))
    }

    pub fn key(key: &str, problem: KeyProblem) -> Error {
        Error::Key {
            key: key.to_owned(),
            problem,
        }
    }
}

impl From<CK_RV> for Error {
    fn from(rv: CK_RV) -> Self {
        Error::Rv(rv)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The names of the codes this module returns, for log lines.
fn rv_name(rv: CK_RV) -> String {
    let name = match rv {
        CKR_OK => "CKR_OK",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_ATTRIBUTE_SENSITIVE => "CKR_ATTRIBUTE_SENSITIVE",
        CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
        CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
        CKR_CANT_LOCK => "CKR_CANT_LOCK",
        CKR_CRYPTOKI_ALREADY_INITIALIZED => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        CKR_DATA_INVALID => "CKR_DATA_INVALID",
        CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
        CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
        CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
        CKR_USER_ALREADY_LOGGED_IN => "CKR_USER_ALREADY_LOGGED_IN",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        _ => return format!("CKR {rv:#x}"),
    };
    name.to_owned()
}
