//! Message layer: typed requests and responses, and their field encodings.
//!
//! A response frame's opcode is the request's opcode with the high bit set
//! ([`RESPONSE_BIT`]), or [`OP_ERROR`]; vault events use [`OP_EVENT`].

use zeroize::Zeroizing;

use super::fields::{Fields, Tag, Writer};
use super::frame::Frame;
use super::wire_enum::wire_enum;
use super::ProtocolError;

pub const RESPONSE_BIT: u8 = 0x80;
pub const OP_ERROR: u8 = 0xff;
pub const OP_EVENT: u8 = 0xfe;

wire_enum! {
    /// Request opcodes. Values are fixed by docs/PROTOCOL.md; names are
    /// those of config grants, audit records and metrics.
    pub enum Op: u8 {
        Ping = 0x01 => "ping",
        Sign = 0x02 => "sign",
        Verify = 0x03 => "verify",
        PublicKey = 0x04 => "public-key",
        Encrypt = 0x05 => "encrypt",
        Decrypt = 0x06 => "decrypt",
        GenerateDataKey = 0x07 => "generate-data-key",
        SignDigest = 0x08 => "sign-digest",
        Create = 0x10 => "create",
        Import = 0x11 => "import",
        List = 0x12 => "list",
        Describe = 0x13 => "describe",
        Rotate = 0x14 => "rotate",
        Enable = 0x15 => "enable",
        Disable = 0x16 => "disable",
        ScheduleDeletion = 0x17 => "schedule-deletion",
        CancelDeletion = 0x18 => "cancel-deletion",
        BackupExport = 0x19 => "backup-export",
        BackupImport = 0x1a => "backup-import",
        AuditVerify = 0x1b => "audit-verify",
        AuditRotate = 0x1c => "audit-rotate",
        Subscribe = 0x20 => "subscribe",
        CertInstall = 0x21 => "cert-install",
        CertGet = 0x22 => "cert-get",
        CertCsr = 0x23 => "cert-csr",
        CertIssue = 0x24 => "cert-issue",
        CertSign = 0x25 => "cert-sign",
    }
}

wire_enum! {
    /// Key types the vault holds. They travel as their names (field
    /// `key type`, describe JSON, keystore records).
    pub enum KeyType {
        EcdsaP256 => "ecdsa-p256",
        EcdsaP384 => "ecdsa-p384",
        Rsa2048 => "rsa-2048",
        Rsa3072 => "rsa-3072",
        Rsa4096 => "rsa-4096",
        Ed25519 => "ed25519",
        Aes256 => "aes-256",
    }
}

impl KeyType {
    pub fn is_signing(self) -> bool {
        self != KeyType::Aes256
    }

    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

/// A secret carried in a message; wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// What a caller asks of the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping {
        payload: Vec<u8>,
    },
    /// Sign `message` (not a digest: the vault hashes) with the TLS
    /// SignatureScheme `scheme`. `version: None` means the primary version.
    Sign {
        key: String,
        version: Option<u32>,
        scheme: u16,
        message: Vec<u8>,
    },
    Verify {
        key: String,
        version: Option<u32>,
        scheme: u16,
        message: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Sign a digest the caller computed (AWS KMS `MessageType=DIGEST`):
    /// `digest` is the hash of `scheme`'s hash function, of exactly its
    /// length. For callers that cannot hand over the message, such as a
    /// PKCS#11 module under a TLS stack that hashed the transcript itself.
    SignDigest {
        key: String,
        version: Option<u32>,
        scheme: u16,
        digest: Vec<u8>,
    },
    PublicKey {
        key: String,
        version: Option<u32>,
    },
    Encrypt {
        key: String,
        plaintext: Secret,
        context: Vec<u8>,
    },
    Decrypt {
        ciphertext: Vec<u8>,
        context: Vec<u8>,
    },
    GenerateDataKey {
        key: String,
        length: u32,
        context: Vec<u8>,
    },
    Create {
        key: String,
        key_type: KeyType,
        /// Rotate automatically this often (seconds); `None` = never.
        rotate_every: Option<u64>,
    },
    /// Import a PKCS#8 PEM private key as a new key, or, with
    /// `new_version`, as the next version of an existing one.
    Import {
        key: String,
        pem: Secret,
        new_version: bool,
    },
    List,
    Describe {
        key: String,
    },
    Rotate {
        key: String,
    },
    Enable {
        key: String,
    },
    Disable {
        key: String,
    },
    ScheduleDeletion {
        key: String,
        wait_secs: Option<u64>,
    },
    CancelDeletion {
        key: String,
    },
    /// A backup file of every key (or of `key` alone), every version,
    /// sealed and authenticated under keys derived from `passphrase` and
    /// `salt`.
    BackupExport {
        key: Option<String>,
        passphrase: Secret,
        salt: Vec<u8>,
    },
    /// Restores a whole backup file (`blob`; its salt is inside), all
    /// keys or none. A key whose name exists refuses the import, unless
    /// `skip_existing`, which leaves that key as it is.
    BackupImport {
        blob: Vec<u8>,
        passphrase: Secret,
        skip_existing: bool,
    },
    AuditVerify,
    /// Close the live audit log as a segment and begin a new one.
    AuditRotate,
    /// Ask for a [`KeyEvent`] whenever a key the caller may see changes
    /// (rotation, state, certificate). Events arrive as `OP_EVENT` frames
    /// carrying this request's id, until the connection closes.
    Subscribe,
    /// Bind a certificate chain (PEM, leaf first) to a key version; the
    /// leaf's public key must be that version's.
    CertInstall {
        key: String,
        version: Option<u32>,
        chain_pem: String,
    },
    /// The chain bound to a version (the primary if none is named).
    CertGet {
        key: String,
        version: Option<u32>,
    },
    /// A CSR signed by the key version; `params` is JSON
    /// `{"names": [...], "common_name": "..."}`.
    CertCsr {
        key: String,
        version: Option<u32>,
        params: String,
    },
    /// Issue and bind a certificate for the key version; `params` is JSON
    /// `{"ca": "KEY", "names": [...], "common_name": "...", "days": N,
    /// "is_ca": bool}`, every member optional (no `ca`: self-signed; no
    /// `names`: those of the certificate being replaced).
    CertIssue {
        key: String,
        version: Option<u32>,
        params: String,
    },
    /// Sign a certificate for a key the vault does not hold (a proxy's
    /// client identity) with the CA key `key`; `params` is JSON
    /// `{"csr": PEM, "uris": [...], "names": [...], "days": N}`. The CSR
    /// gives only the public key (its signature proves possession); the
    /// names are the caller's.
    CertSign {
        key: String,
        version: Option<u32>,
        params: String,
    },
}

impl Request {
    pub fn op(&self) -> Op {
        match self {
            Request::Ping { .. } => Op::Ping,
            Request::Sign { .. } => Op::Sign,
            Request::Verify { .. } => Op::Verify,
            Request::SignDigest { .. } => Op::SignDigest,
            Request::PublicKey { .. } => Op::PublicKey,
            Request::Encrypt { .. } => Op::Encrypt,
            Request::Decrypt { .. } => Op::Decrypt,
            Request::GenerateDataKey { .. } => Op::GenerateDataKey,
            Request::Create { .. } => Op::Create,
            Request::Import { .. } => Op::Import,
            Request::List => Op::List,
            Request::Describe { .. } => Op::Describe,
            Request::Rotate { .. } => Op::Rotate,
            Request::Enable { .. } => Op::Enable,
            Request::Disable { .. } => Op::Disable,
            Request::ScheduleDeletion { .. } => Op::ScheduleDeletion,
            Request::CancelDeletion { .. } => Op::CancelDeletion,
            Request::BackupExport { .. } => Op::BackupExport,
            Request::BackupImport { .. } => Op::BackupImport,
            Request::AuditVerify => Op::AuditVerify,
            Request::AuditRotate => Op::AuditRotate,
            Request::Subscribe => Op::Subscribe,
            Request::CertInstall { .. } => Op::CertInstall,
            Request::CertGet { .. } => Op::CertGet,
            Request::CertCsr { .. } => Op::CertCsr,
            Request::CertIssue { .. } => Op::CertIssue,
            Request::CertSign { .. } => Op::CertSign,
        }
    }

    /// The key named in the request, if it names one (decrypt and backup
    /// import carry it inside their blob instead; a backup export of
    /// every key names none).
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Sign { key, .. }
            | Request::Verify { key, .. }
            | Request::SignDigest { key, .. }
            | Request::PublicKey { key, .. }
            | Request::Encrypt { key, .. }
            | Request::GenerateDataKey { key, .. }
            | Request::Create { key, .. }
            | Request::Import { key, .. }
            | Request::Describe { key }
            | Request::Rotate { key }
            | Request::Enable { key }
            | Request::Disable { key }
            | Request::ScheduleDeletion { key, .. }
            | Request::CancelDeletion { key }
            | Request::CertInstall { key, .. }
            | Request::CertGet { key, .. }
            | Request::CertCsr { key, .. }
            | Request::CertIssue { key, .. }
            | Request::CertSign { key, .. } => Some(key),
            Request::BackupExport { key, .. } => key.as_deref(),
            Request::Ping { .. }
            | Request::Decrypt { .. }
            | Request::List
            | Request::BackupImport { .. }
            | Request::AuditVerify
            | Request::AuditRotate
            | Request::Subscribe => None,
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one arm per opcode, each its fields in order"
    )]
    pub fn to_frame(&self, request_id: u32) -> Frame {
        let mut w = Writer::new();
        match self {
            Request::Ping { payload } => {
                w.bytes(Tag::Payload, payload);
            }
            Request::Sign {
                key,
                version,
                scheme,
                message,
            }
            | Request::SignDigest {
                key,
                version,
                scheme,
                digest: message,
            } => {
                w.str(Tag::KeyName, key)
                    .opt_u32(Tag::KeyVersion, *version)
                    .u16(Tag::Scheme, *scheme)
                    .bytes(Tag::Payload, message);
            }
            Request::Verify {
                key,
                version,
                scheme,
                message,
                signature,
            } => {
                w.str(Tag::KeyName, key)
                    .opt_u32(Tag::KeyVersion, *version)
                    .u16(Tag::Scheme, *scheme)
                    .bytes(Tag::Payload, message)
                    .bytes(Tag::Signature, signature);
            }
            Request::PublicKey { key, version } => {
                w.str(Tag::KeyName, key).opt_u32(Tag::KeyVersion, *version);
            }
            Request::Encrypt {
                key,
                plaintext,
                context,
            } => {
                w.str(Tag::KeyName, key)
                    .bytes(Tag::Plaintext, plaintext)
                    .bytes(Tag::Context, context);
            }
            Request::Decrypt {
                ciphertext,
                context,
            } => {
                w.bytes(Tag::Ciphertext, ciphertext)
                    .bytes(Tag::Context, context);
            }
            Request::GenerateDataKey {
                key,
                length,
                context,
            } => {
                w.str(Tag::KeyName, key)
                    .u32(Tag::Length, *length)
                    .bytes(Tag::Context, context);
            }
            Request::Create {
                key,
                key_type,
                rotate_every,
            } => {
                w.str(Tag::KeyName, key)
                    .str(Tag::KeyType, key_type.name())
                    .opt_u64(Tag::Seconds, *rotate_every);
            }
            Request::Import {
                key,
                pem,
                new_version,
            } => {
                w.str(Tag::KeyName, key).bytes(Tag::Pem, pem);
                if *new_version {
                    w.bytes(Tag::Flag, &[1]);
                }
            }
            Request::List | Request::AuditVerify | Request::AuditRotate | Request::Subscribe => {}
            Request::CertInstall {
                key,
                version,
                chain_pem,
            } => {
                w.str(Tag::KeyName, key)
                    .opt_u32(Tag::KeyVersion, *version)
                    .str(Tag::Pem, chain_pem);
            }
            Request::CertGet { key, version } => {
                w.str(Tag::KeyName, key).opt_u32(Tag::KeyVersion, *version);
            }
            Request::CertCsr {
                key,
                version,
                params,
            }
            | Request::CertIssue {
                key,
                version,
                params,
            }
            | Request::CertSign {
                key,
                version,
                params,
            } => {
                w.str(Tag::KeyName, key)
                    .opt_u32(Tag::KeyVersion, *version)
                    .str(Tag::Json, params);
            }
            Request::Describe { key }
            | Request::Rotate { key }
            | Request::Enable { key }
            | Request::Disable { key }
            | Request::CancelDeletion { key } => {
                w.str(Tag::KeyName, key);
            }
            Request::ScheduleDeletion { key, wait_secs } => {
                w.str(Tag::KeyName, key).opt_u64(Tag::Seconds, *wait_secs);
            }
            Request::BackupExport {
                key,
                passphrase,
                salt,
            } => {
                if let Some(key) = key {
                    w.str(Tag::KeyName, key);
                }
                w.bytes(Tag::Passphrase, passphrase).bytes(Tag::Salt, salt);
            }
            Request::BackupImport {
                blob,
                passphrase,
                skip_existing,
            } => {
                w.bytes(Tag::Blob, blob).bytes(Tag::Passphrase, passphrase);
                if *skip_existing {
                    w.bytes(Tag::Flag, &[1]);
                }
            }
        }
        Frame::new(self.op() as u8, request_id, w.finish().freeze())
    }

    /// Decodes a request frame. Unknown opcodes, missing or unexpected
    /// fields and malformed values are errors.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per opcode, each its fields in order"
    )]
    pub fn from_frame(frame: &Frame) -> Result<Request, ProtocolError> {
        let op = Op::from_value(frame.opcode).ok_or(ProtocolError::UnknownOpcode(frame.opcode))?;
        let f = Fields::parse(&frame.body)?;
        let key =
            |f: &Fields| -> Result<String, ProtocolError> { Ok(f.str(Tag::KeyName)?.to_owned()) };
        // An optional flag: absent is `false`, one byte `1` is `true`.
        let flag = |f: &Fields| match f.opt_bytes(Tag::Flag) {
            None => Ok(false),
            Some([1]) => Ok(true),
            Some(_) => Err(ProtocolError::BadField(Tag::Flag as u8)),
        };
        let req = match op {
            Op::Ping => {
                f.only(&[Tag::Payload])?;
                Request::Ping {
                    payload: f.opt_bytes(Tag::Payload).unwrap_or_default().to_vec(),
                }
            }
            Op::Sign | Op::SignDigest => {
                f.only(&[Tag::KeyName, Tag::KeyVersion, Tag::Scheme, Tag::Payload])?;
                let (key, version, scheme, payload) = (
                    key(&f)?,
                    f.opt_u32(Tag::KeyVersion)?,
                    f.u16(Tag::Scheme)?,
                    f.bytes(Tag::Payload)?.to_vec(),
                );
                if op == Op::Sign {
                    Request::Sign {
                        key,
                        version,
                        scheme,
                        message: payload,
                    }
                } else {
                    Request::SignDigest {
                        key,
                        version,
                        scheme,
                        digest: payload,
                    }
                }
            }
            Op::Verify => {
                f.only(&[
                    Tag::KeyName,
                    Tag::KeyVersion,
                    Tag::Scheme,
                    Tag::Payload,
                    Tag::Signature,
                ])?;
                Request::Verify {
                    key: key(&f)?,
                    version: f.opt_u32(Tag::KeyVersion)?,
                    scheme: f.u16(Tag::Scheme)?,
                    message: f.bytes(Tag::Payload)?.to_vec(),
                    signature: f.bytes(Tag::Signature)?.to_vec(),
                }
            }
            Op::PublicKey => {
                f.only(&[Tag::KeyName, Tag::KeyVersion])?;
                Request::PublicKey {
                    key: key(&f)?,
                    version: f.opt_u32(Tag::KeyVersion)?,
                }
            }
            Op::Encrypt => {
                f.only(&[Tag::KeyName, Tag::Plaintext, Tag::Context])?;
                Request::Encrypt {
                    key: key(&f)?,
                    plaintext: Zeroizing::new(f.bytes(Tag::Plaintext)?.to_vec()),
                    context: f.opt_bytes(Tag::Context).unwrap_or_default().to_vec(),
                }
            }
            Op::Decrypt => {
                f.only(&[Tag::Ciphertext, Tag::Context])?;
                Request::Decrypt {
                    ciphertext: f.bytes(Tag::Ciphertext)?.to_vec(),
                    context: f.opt_bytes(Tag::Context).unwrap_or_default().to_vec(),
                }
            }
            Op::GenerateDataKey => {
                f.only(&[Tag::KeyName, Tag::Length, Tag::Context])?;
                Request::GenerateDataKey {
                    key: key(&f)?,
                    length: f.u32(Tag::Length)?,
                    context: f.opt_bytes(Tag::Context).unwrap_or_default().to_vec(),
                }
            }
            Op::Create => {
                f.only(&[Tag::KeyName, Tag::KeyType, Tag::Seconds])?;
                let t = f.str(Tag::KeyType)?;
                Request::Create {
                    key: key(&f)?,
                    key_type: KeyType::from_name(t)
                        .ok_or(ProtocolError::BadField(Tag::KeyType as u8))?,
                    rotate_every: f.opt_u64(Tag::Seconds)?,
                }
            }
            Op::Import => {
                f.only(&[Tag::KeyName, Tag::Pem, Tag::Flag])?;
                let new_version = flag(&f)?;
                Request::Import {
                    key: key(&f)?,
                    pem: Zeroizing::new(f.bytes(Tag::Pem)?.to_vec()),
                    new_version,
                }
            }
            Op::List | Op::AuditVerify | Op::AuditRotate | Op::Subscribe => {
                f.only(&[])?;
                match op {
                    Op::List => Request::List,
                    Op::AuditVerify => Request::AuditVerify,
                    Op::AuditRotate => Request::AuditRotate,
                    _ => Request::Subscribe,
                }
            }
            Op::CertInstall => {
                f.only(&[Tag::KeyName, Tag::KeyVersion, Tag::Pem])?;
                Request::CertInstall {
                    key: key(&f)?,
                    version: f.opt_u32(Tag::KeyVersion)?,
                    chain_pem: f.str(Tag::Pem)?.to_owned(),
                }
            }
            Op::CertGet => {
                f.only(&[Tag::KeyName, Tag::KeyVersion])?;
                Request::CertGet {
                    key: key(&f)?,
                    version: f.opt_u32(Tag::KeyVersion)?,
                }
            }
            Op::CertCsr | Op::CertIssue | Op::CertSign => {
                f.only(&[Tag::KeyName, Tag::KeyVersion, Tag::Json])?;
                let (key, version, params) = (
                    key(&f)?,
                    f.opt_u32(Tag::KeyVersion)?,
                    f.str(Tag::Json)?.to_owned(),
                );
                match op {
                    Op::CertCsr => Request::CertCsr {
                        key,
                        version,
                        params,
                    },
                    Op::CertIssue => Request::CertIssue {
                        key,
                        version,
                        params,
                    },
                    _ => Request::CertSign {
                        key,
                        version,
                        params,
                    },
                }
            }
            Op::Describe | Op::Rotate | Op::Enable | Op::Disable | Op::CancelDeletion => {
                f.only(&[Tag::KeyName])?;
                let key = key(&f)?;
                match op {
                    Op::Describe => Request::Describe { key },
                    Op::Rotate => Request::Rotate { key },
                    Op::Enable => Request::Enable { key },
                    Op::Disable => Request::Disable { key },
                    _ => Request::CancelDeletion { key },
                }
            }
            Op::ScheduleDeletion => {
                f.only(&[Tag::KeyName, Tag::Seconds])?;
                Request::ScheduleDeletion {
                    key: key(&f)?,
                    wait_secs: f.opt_u64(Tag::Seconds)?,
                }
            }
            Op::BackupExport => {
                f.only(&[Tag::KeyName, Tag::Passphrase, Tag::Salt])?;
                Request::BackupExport {
                    key: f.opt_str(Tag::KeyName)?.map(str::to_owned),
                    passphrase: Zeroizing::new(f.bytes(Tag::Passphrase)?.to_vec()),
                    salt: f.bytes(Tag::Salt)?.to_vec(),
                }
            }
            Op::BackupImport => {
                f.only(&[Tag::Blob, Tag::Passphrase, Tag::Flag])?;
                Request::BackupImport {
                    blob: f.bytes(Tag::Blob)?.to_vec(),
                    passphrase: Zeroizing::new(f.bytes(Tag::Passphrase)?.to_vec()),
                    skip_existing: flag(&f)?,
                }
            }
        };
        Ok(req)
    }
}

wire_enum! {
    /// Why the vault refused or failed a request. Values are fixed by
    /// docs/PROTOCOL.md.
    pub enum ErrorCode: u16 {
        /// The frame or its fields were malformed; the vault closes the connection.
        BadRequest = 1 => "bad-request",
        /// The caller has no grant for this operation on this key.
        Denied = 2 => "denied",
        NotFound = 3 => "not-found",
        Disabled = 4 => "disabled",
        PendingDeletion = 5 => "pending-deletion",
        AlreadyExists = 6 => "already-exists",
        /// The key type cannot do this (e.g. encrypt with an ECDSA key) or the
        /// scheme does not fit the key.
        Unsupported = 7 => "unsupported",
        /// A ciphertext or backup blob failed authentication.
        InvalidCiphertext = 8 => "invalid-ciphertext",
        Internal = 9 => "internal",
        /// The keystore could not be written; nothing was changed.
        Storage = 10 => "storage",
        /// The stored record failed its integrity check.
        CorruptKey = 11 => "corrupt-key",
        /// The version asked for may no longer sign.
        VersionRetired = 12 => "version-retired",
        /// Invalid argument (bad name, bad PEM, bad length).
        InvalidInput = 13 => "invalid-input",
    }
}

/// What the vault answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Pong {
        payload: Vec<u8>,
    },
    Signature {
        version: u32,
        signature: Vec<u8>,
    },
    Verified {
        valid: bool,
    },
    PublicKey {
        key_type: KeyType,
        version: u32,
        spki_der: Vec<u8>,
    },
    Ciphertext {
        version: u32,
        blob: Vec<u8>,
    },
    Plaintext {
        key: String,
        version: u32,
        plaintext: Secret,
    },
    DataKey {
        version: u32,
        plaintext: Secret,
        ciphertext: Vec<u8>,
    },
    /// Metadata answers (list, describe, create, rotate, …) as a JSON
    /// document; its shape is described in docs/PROTOCOL.md.
    Json {
        json: String,
    },
    BackupEntry {
        blob: Vec<u8>,
    },
    Certificate {
        version: u32,
        chain_pem: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }

    /// Encodes this as the answer to request `request_id` of opcode `op`.
    pub fn to_frame(&self, op: Op, request_id: u32) -> Frame {
        let mut w = Writer::new();
        let mut opcode = op as u8 | RESPONSE_BIT;
        match self {
            Response::Pong { payload } => {
                w.bytes(Tag::Payload, payload);
            }
            Response::Signature { version, signature } => {
                w.u32(Tag::KeyVersion, *version)
                    .bytes(Tag::Signature, signature);
            }
            Response::Verified { valid } => {
                w.bytes(Tag::Flag, &[*valid as u8]);
            }
            Response::PublicKey {
                key_type,
                version,
                spki_der,
            } => {
                w.str(Tag::KeyType, key_type.name())
                    .u32(Tag::KeyVersion, *version)
                    .bytes(Tag::Spki, spki_der);
            }
            Response::Ciphertext { version, blob } => {
                w.u32(Tag::KeyVersion, *version)
                    .bytes(Tag::Ciphertext, blob);
            }
            Response::Plaintext {
                key,
                version,
                plaintext,
            } => {
                w.str(Tag::KeyName, key)
                    .u32(Tag::KeyVersion, *version)
                    .bytes(Tag::Plaintext, plaintext);
            }
            Response::DataKey {
                version,
                plaintext,
                ciphertext,
            } => {
                w.u32(Tag::KeyVersion, *version)
                    .bytes(Tag::Plaintext, plaintext)
                    .bytes(Tag::Ciphertext, ciphertext);
            }
            Response::Json { json } => {
                w.str(Tag::Json, json);
            }
            Response::BackupEntry { blob } => {
                w.bytes(Tag::Blob, blob);
            }
            Response::Certificate { version, chain_pem } => {
                w.u32(Tag::KeyVersion, *version).str(Tag::Pem, chain_pem);
            }
            Response::Error { code, message } => {
                opcode = OP_ERROR;
                w.u16(Tag::ErrorCode, *code as u16)
                    .str(Tag::Message, message);
            }
        }
        Frame::new(opcode, request_id, w.finish().freeze())
    }

    /// Decodes the answer to a request of opcode `op`.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per answer shape, each its fields in order"
    )]
    pub fn from_frame(op: Op, frame: &Frame) -> Result<Response, ProtocolError> {
        let f = Fields::parse(&frame.body)?;
        if frame.opcode == OP_ERROR {
            f.only(&[Tag::ErrorCode, Tag::Message])?;
            let code = f.u16(Tag::ErrorCode)?;
            return Ok(Response::Error {
                code: ErrorCode::from_value(code)
                    .ok_or(ProtocolError::BadField(Tag::ErrorCode as u8))?,
                message: f.opt_str(Tag::Message)?.unwrap_or_default().to_owned(),
            });
        }
        if frame.opcode != op as u8 | RESPONSE_BIT {
            return Err(ProtocolError::UnexpectedOpcode(frame.opcode));
        }
        let resp = match op {
            Op::Ping => {
                f.only(&[Tag::Payload])?;
                Response::Pong {
                    payload: f.opt_bytes(Tag::Payload).unwrap_or_default().to_vec(),
                }
            }
            Op::Sign | Op::SignDigest => {
                f.only(&[Tag::KeyVersion, Tag::Signature])?;
                Response::Signature {
                    version: f.u32(Tag::KeyVersion)?,
                    signature: f.bytes(Tag::Signature)?.to_vec(),
                }
            }
            Op::Verify => {
                f.only(&[Tag::Flag])?;
                let valid = match f.bytes(Tag::Flag)? {
                    [0] => false,
                    [1] => true,
                    _ => return Err(ProtocolError::BadField(Tag::Flag as u8)),
                };
                Response::Verified { valid }
            }
            Op::PublicKey => {
                f.only(&[Tag::KeyType, Tag::KeyVersion, Tag::Spki])?;
                Response::PublicKey {
                    key_type: KeyType::from_name(f.str(Tag::KeyType)?)
                        .ok_or(ProtocolError::BadField(Tag::KeyType as u8))?,
                    version: f.u32(Tag::KeyVersion)?,
                    spki_der: f.bytes(Tag::Spki)?.to_vec(),
                }
            }
            Op::Encrypt => {
                f.only(&[Tag::KeyVersion, Tag::Ciphertext])?;
                Response::Ciphertext {
                    version: f.u32(Tag::KeyVersion)?,
                    blob: f.bytes(Tag::Ciphertext)?.to_vec(),
                }
            }
            Op::Decrypt => {
                f.only(&[Tag::KeyName, Tag::KeyVersion, Tag::Plaintext])?;
                Response::Plaintext {
                    key: f.str(Tag::KeyName)?.to_owned(),
                    version: f.u32(Tag::KeyVersion)?,
                    plaintext: Zeroizing::new(f.bytes(Tag::Plaintext)?.to_vec()),
                }
            }
            Op::GenerateDataKey => {
                f.only(&[Tag::KeyVersion, Tag::Plaintext, Tag::Ciphertext])?;
                Response::DataKey {
                    version: f.u32(Tag::KeyVersion)?,
                    plaintext: Zeroizing::new(f.bytes(Tag::Plaintext)?.to_vec()),
                    ciphertext: f.bytes(Tag::Ciphertext)?.to_vec(),
                }
            }
            Op::BackupExport => {
                f.only(&[Tag::Blob])?;
                Response::BackupEntry {
                    blob: f.bytes(Tag::Blob)?.to_vec(),
                }
            }
            Op::CertGet | Op::CertCsr | Op::CertSign => {
                f.only(&[Tag::KeyVersion, Tag::Pem])?;
                Response::Certificate {
                    version: f.u32(Tag::KeyVersion)?,
                    chain_pem: f.str(Tag::Pem)?.to_owned(),
                }
            }
            Op::Create
            | Op::Import
            | Op::List
            | Op::Describe
            | Op::Rotate
            | Op::Enable
            | Op::Disable
            | Op::ScheduleDeletion
            | Op::CancelDeletion
            | Op::BackupImport
            | Op::AuditVerify
            | Op::AuditRotate
            | Op::Subscribe
            | Op::CertInstall
            | Op::CertIssue => {
                f.only(&[Tag::Json])?;
                Response::Json {
                    json: f.str(Tag::Json)?.to_owned(),
                }
            }
        };
        Ok(resp)
    }
}

/// A change to a key, pushed to subscribers as an `OP_EVENT` frame with the
/// subscribe request's id. `key` is `"*"` when events were dropped (the
/// subscriber fell behind): re-read every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub key: String,
    /// The key's primary version after the change (0 if deleted or unknown).
    pub primary: u32,
    /// The key's describe JSON after the change (`null` if deleted).
    pub json: String,
}

impl KeyEvent {
    pub fn to_frame(&self, request_id: u32) -> Frame {
        let mut w = Writer::new();
        w.str(Tag::KeyName, &self.key)
            .u32(Tag::KeyVersion, self.primary)
            .str(Tag::Json, &self.json);
        Frame::new(OP_EVENT, request_id, w.finish().freeze())
    }

    pub fn from_frame(frame: &Frame) -> Result<KeyEvent, ProtocolError> {
        if frame.opcode != OP_EVENT {
            return Err(ProtocolError::UnexpectedOpcode(frame.opcode));
        }
        let f = Fields::parse(&frame.body)?;
        f.only(&[Tag::KeyName, Tag::KeyVersion, Tag::Json])?;
        Ok(KeyEvent {
            key: f.str(Tag::KeyName)?.to_owned(),
            primary: f.u32(Tag::KeyVersion)?,
            json: f.str(Tag::Json)?.to_owned(),
        })
    }
}
