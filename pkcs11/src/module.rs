//! The module's state, one per process, and the operations the C entry
//! points call. Nothing here touches a raw pointer; `ffi` reads and writes
//! the caller's memory.
//!
//! The lock is never held while the vault is asked something: a signature
//! takes its operation out of the session, signs, and is done; a search
//! reads the vault, then takes the lock to merge what it read.
//!
//! After a fork the child keeps its parent's settings and (while that
//! parent lives) its catalogue, through `C_Finalize` and `C_Initialize`
//! too (pkcs11-provider calls both in every child): so it finds the same
//! objects under the same handles at the versions its parent loaded, and
//! the vault's socket even where the child's environment was emptied
//! (nginx workers). Its connections are its own (see `client`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cryptoki_sys::*;
use vaultgate::protocol::Response;

use crate::attributes;
use crate::catalogue::{self, Catalogue, Class, Object};
use crate::client;
use crate::config::Config;
use crate::error::{Error, KeyProblem, Result};
use crate::fork;
use crate::log;
use crate::mechanism::{self, Param, SignOp};
use vaultgate::sync::Locked;

/// The one slot. A constant: clients keep slot ids across a fork, and
/// libp11 hung when a re-initialised library answered with another.
pub const SLOT: CK_SLOT_ID = 0;

#[derive(Debug)]
struct Session {
    flags: CK_FLAGS,
    found: Option<std::vec::IntoIter<CK_OBJECT_HANDLE>>,
    sign: Option<SignOp>,
}

pub struct Module {
    /// The fork generation of the `C_Initialize` in force; `None`: not
    /// initialised.
    initialized: Option<u64>,
    /// Settings and the generation they were read in.
    config: Option<(Arc<Config>, u64)>,
    catalogue: Catalogue,
    sessions: BTreeMap<CK_SESSION_HANDLE, Session>,
    /// Session handles are never reused within a process, so a stale one
    /// is refused rather than mistaken for a new session.
    next_session: CK_SESSION_HANDLE,
    logged_in: bool,
}

pub static MODULE: Mutex<Module> = Mutex::new(Module {
    initialized: None,
    config: None,
    catalogue: Catalogue::new(),
    sessions: BTreeMap::new(),
    next_session: 1,
    logged_in: false,
});

impl Module {
    fn config(&self) -> Result<Arc<Config>> {
        if self.initialized.is_none() {
            return Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        self.config
            .as_ref()
            .map(|(c, _)| c.clone())
            .ok_or(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
    }

    fn session(&mut self, h: CK_SESSION_HANDLE) -> Result<&mut Session> {
        if self.initialized.is_none() {
            return Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        self.sessions
            .get_mut(&h)
            .ok_or(Error::Rv(CKR_SESSION_HANDLE_INVALID))
    }
}

pub fn initialize() -> Result<()> {
    fork::watch();
    let gen = fork::generation();
    let mut m = MODULE.locked();
    match m.initialized {
        Some(g) if g == gen => return Err(Error::Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED)),
        // A forked child initialising again (as PKCS#11 asks of it).
        _ => {}
    }
    let inherited = matches!(&m.config, Some((_, g)) if *g != gen);
    if !inherited {
        drop(m);
        let config = Arc::new(Config::load()?);
        log::set(config.log.clone());
        m = MODULE.locked();
        // Another thread may have initialised while the file was read.
        if m.initialized == Some(gen) {
            return Err(Error::Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
        }
        m.config = Some((config, gen));
    }
    m.initialized = Some(gen);
    m.sessions.clear();
    m.logged_in = false;
    Ok(())
}

/// Purely local: in a child, nothing goes to the vault on the parent's
/// connection (nothing goes to the vault at all).
pub fn finalize() -> Result<()> {
    let mut m = MODULE.locked();
    if m.initialized.is_none() {
        return Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
    }
    m.initialized = None;
    m.sessions.clear();
    m.logged_in = false;
    drop(m);
    client::close_all();
    Ok(())
}

pub fn check_initialized() -> Result<()> {
    MODULE.locked().config().map(|_| ())
}

pub fn check_slot(slot: CK_SLOT_ID) -> Result<()> {
    check_initialized()?;
    if slot != SLOT {
        return Err(Error::Rv(CKR_SLOT_ID_INVALID));
    }
    Ok(())
}

/// The token's label: what `pkcs11:token=vaultgate` URIs name.
pub const TOKEN_LABEL: &str = "vaultgate";

/// The token's serial number: 16 hex digits of a hash of the vault's
/// socket path, so it stays the same for a given vault in every process,
/// and two vaults on one host are two tokens.
pub fn token_serial() -> Result<String> {
    let socket = MODULE.locked().config()?.socket.clone();
    let d = ring::digest::digest(&ring::digest::SHA256, socket.as_os_str().as_encoded_bytes());
    Ok(hex::encode(&d.as_ref()[..8]))
}

pub fn check_session(h: CK_SESSION_HANDLE) -> Result<()> {
    MODULE.locked().session(h).map(|_| ())
}

/// `C_GenerateRandom`: the operating system's generator (getrandom), on
/// the calling thread.
pub fn random(buf: &mut [u8]) -> Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))
}

pub fn open_session(slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
    check_slot(slot)?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(Error::Rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
    }
    let mut m = MODULE.locked();
    let h = m.next_session;
    m.next_session += 1;
    m.sessions.insert(
        h,
        Session {
            flags,
            found: None,
            sign: None,
        },
    );
    Ok(h)
}

pub fn close_session(h: CK_SESSION_HANDLE) -> Result<()> {
    let mut m = MODULE.locked();
    m.session(h)?;
    m.sessions.remove(&h);
    if m.sessions.is_empty() {
        m.logged_in = false;
    }
    Ok(())
}

pub fn close_all_sessions(slot: CK_SLOT_ID) -> Result<()> {
    check_slot(slot)?;
    let mut m = MODULE.locked();
    m.sessions.clear();
    m.logged_in = false;
    Ok(())
}

/// `(state, flags)` of a session.
pub fn session_info(h: CK_SESSION_HANDLE) -> Result<(CK_STATE, CK_FLAGS)> {
    let mut m = MODULE.locked();
    let logged_in = m.logged_in;
    let s = m.session(h)?;
    let rw = s.flags & CKF_RW_SESSION != 0;
    let state = match (logged_in, rw) {
        (true, true) => CKS_RW_USER_FUNCTIONS,
        (true, false) => CKS_RO_USER_FUNCTIONS,
        (false, true) => CKS_RW_PUBLIC_SESSION,
        (false, false) => CKS_RO_PUBLIC_SESSION,
    };
    Ok((state, s.flags))
}

/// Any PIN is right: what a process may do is what the vault grants its
/// uid, so no secret needs to sit in a web server's config.
pub fn login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE) -> Result<()> {
    let mut m = MODULE.locked();
    m.session(h)?;
    if user != CKU_USER && user != CKU_CONTEXT_SPECIFIC {
        return Err(Error::Rv(CKR_USER_TYPE_INVALID));
    }
    if m.logged_in && user == CKU_USER {
        return Err(Error::Rv(CKR_USER_ALREADY_LOGGED_IN));
    }
    m.logged_in = true;
    Ok(())
}

pub fn logout(h: CK_SESSION_HANDLE) -> Result<()> {
    let mut m = MODULE.locked();
    m.session(h)?;
    if !m.logged_in {
        return Err(Error::Rv(CKR_USER_NOT_LOGGED_IN));
    }
    m.logged_in = false;
    Ok(())
}

pub fn find_init(h: CK_SESSION_HANDLE, template: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>) -> Result<()> {
    let gen = fork::generation();
    let (config, refresh) = {
        let mut m = MODULE.locked();
        let config = m.config()?;
        if m.session(h)?.found.is_some() {
            return Err(Error::Rv(CKR_OPERATION_ACTIVE));
        }
        // Read the vault unless the catalogue is a living parent's.
        let refresh = m.catalogue.stale(gen);
        (config, refresh)
    };
    if refresh {
        let keys = catalogue::read(&config)?;
        MODULE.locked().catalogue.merge(keys, gen);
    }
    let mut m = MODULE.locked();
    let found: Vec<CK_OBJECT_HANDLE> = m
        .catalogue
        .current()
        .filter(|(_, o)| attributes::matches(o, &template))
        .map(|(h, _)| h)
        .collect();
    m.session(h)?.found = Some(found.into_iter());
    Ok(())
}

pub fn find(h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let mut m = MODULE.locked();
    let it = m
        .session(h)?
        .found
        .as_mut()
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
    Ok(it.take(max).collect())
}

pub fn find_final(h: CK_SESSION_HANDLE) -> Result<()> {
    let mut m = MODULE.locked();
    m.session(h)?
        .found
        .take()
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
    Ok(())
}

/// The object behind a handle (any the process has seen, current or not).
pub fn object(h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> Result<Object> {
    let mut m = MODULE.locked();
    m.session(h)?;
    m.catalogue
        .get(obj)
        .cloned()
        .ok_or(Error::Rv(CKR_OBJECT_HANDLE_INVALID))
}

pub fn sign_init(
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    param: Param,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let mut m = MODULE.locked();
    let obj = m
        .catalogue
        .get(key)
        .cloned()
        .ok_or(Error::Rv(CKR_KEY_HANDLE_INVALID));
    let s = m.session(h)?;
    if s.sign.is_some() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let obj = obj?;
    if obj.class != Class::Private {
        return Err(Error::Rv(CKR_KEY_TYPE_INCONSISTENT));
    }
    let kind = mechanism::kind(mech, param, &obj.key)?;
    s.sign = Some(SignOp::new(obj.key, kind));
    Ok(())
}

pub fn sign_update(h: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
    let mut m = MODULE.locked();
    let s = m.session(h)?;
    let op = s
        .sign
        .as_mut()
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
    let r = op.update(part);
    if r.is_err() {
        s.sign = None;
    }
    r
}

/// What a signing call answers: the length a caller must provide (asked
/// for, or the buffer was too small), or the signature.
pub enum Signed {
    Length(usize),
    TooSmall(usize),
    Signature(Vec<u8>),
}

/// `C_Sign` (with the last `data`) and `C_SignFinal` (`data` None).
/// `room`: the caller's buffer size, `None` for a length query. A length
/// query or a buffer too small leaves the operation active, as PKCS#11
/// requires; anything else ends it.
pub fn sign(h: CK_SESSION_HANDLE, data: Option<&[u8]>, room: Option<usize>) -> Result<Signed> {
    let (config, op) = {
        let mut m = MODULE.locked();
        let config = m.config()?;
        let s = m.session(h)?;
        let op = s
            .sign
            .as_mut()
            .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
        let len = op.key.signature_len();
        match room {
            None => return Ok(Signed::Length(len)),
            Some(r) if r < len => return Ok(Signed::TooSmall(len)),
            Some(_) => {}
        }
        let mut op = s
            .sign
            .take()
            .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if let Some(d) = data {
            op.update(d)?;
        }
        (config, op)
    };
    let key = op.key.clone();
    let prepared = op.prepare()?;
    let op_code = prepared.request.op();
    let answer = client::exchange(&config, std::slice::from_ref(&prepared.request))?
        .pop()
        .ok_or_else(|| Error::Unexpected {
            op: op_code,
            key: key.name.clone(),
        })?;
    let signature = match answer {
        Response::Signature { signature, .. } => signature,
        Response::Error { code, message } => {
            return Err(Error::Refused {
                op: op_code,
                key: key.name.clone(),
                code,
                message,
            })
        }
        _ => {
            return Err(Error::Unexpected {
                op: op_code,
                key: key.name.clone(),
            })
        }
    };
    let signature = match prepared.fixed_ecdsa {
        Some(field) => mechanism::ecdsa_der_to_raw(&signature, field)
            .ok_or_else(|| Error::key(&key.name, KeyProblem::EcdsaSignature))?,
        None => signature,
    };
    Ok(Signed::Signature(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads that call `C_Initialize` at once (a host whose libraries
    /// each initialise the module they share): one wins, the others are
    /// told it is done, and the module is initialised once.
    #[test]
    fn concurrent_initialisations_succeed_once() {
        for _ in 0..20 {
            let start = std::sync::Barrier::new(8);
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            initialize()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(ok, 1, "{results:?}");
            assert!(results
                .iter()
                .all(|r| matches!(r, Ok(()) | Err(Error::Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED)))));
            finalize().unwrap();
            assert!(matches!(
                finalize(),
                Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
            ));
        }
    }
}
