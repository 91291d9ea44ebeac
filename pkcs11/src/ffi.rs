//! The C boundary: `C_GetFunctionList` (the one exported symbol), the
//! function list, and an entry point for every slot of it.
//!
//! Each entry point reads its arguments out of the caller's memory, calls
//! [`module`] with plain Rust values, and writes the results back; it runs
//! inside [`guard`], which catches panics (a panic across the C boundary
//! would abort nginx's worker) and turns every error into its `CKR_*`
//! code. The caller's pointers are trusted as far as PKCS#11 lets a module
//! trust them: non-null ones point at what the standard says; null ones
//! are refused with `CKR_ARGUMENTS_BAD` unless the standard gives null a
//! meaning (a length query).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};

use cryptoki_sys::*;

use crate::attributes::{self, Value, UNAVAILABLE};
use crate::error::{Error, Result};
use crate::log;
use crate::mechanism::{self, Param};
use crate::module::{self, Signed, SLOT};

/// Version 2.40, as CloudHSM's library claims; every client traced falls
/// back to it from 3.x's `C_GetInterface`.
static FUNCTIONS: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(c_initialize),
    C_Finalize: Some(c_finalize),
    C_GetInfo: Some(c_get_info),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(c_get_slot_list),
    C_GetSlotInfo: Some(c_get_slot_info),
    C_GetTokenInfo: Some(c_get_token_info),
    C_GetMechanismList: Some(c_get_mechanism_list),
    C_GetMechanismInfo: Some(c_get_mechanism_info),
    C_InitToken: Some(c_init_token),
    C_InitPIN: Some(c_init_pin),
    C_SetPIN: Some(c_set_pin),
    C_OpenSession: Some(c_open_session),
    C_CloseSession: Some(c_close_session),
    C_CloseAllSessions: Some(c_close_all_sessions),
    C_GetSessionInfo: Some(c_get_session_info),
    C_GetOperationState: Some(c_get_operation_state),
    C_SetOperationState: Some(c_set_operation_state),
    C_Login: Some(c_login),
    C_Logout: Some(c_logout),
    C_CreateObject: Some(c_create_object),
    C_CopyObject: Some(c_copy_object),
    C_DestroyObject: Some(c_destroy_object),
    C_GetObjectSize: Some(c_get_object_size),
    C_GetAttributeValue: Some(c_get_attribute_value),
    C_SetAttributeValue: Some(c_set_attribute_value),
    C_FindObjectsInit: Some(c_find_objects_init),
    C_FindObjects: Some(c_find_objects),
    C_FindObjectsFinal: Some(c_find_objects_final),
    C_EncryptInit: Some(c_crypt_init),
    C_Encrypt: Some(c_crypt),
    C_EncryptUpdate: Some(c_crypt),
    C_EncryptFinal: Some(c_crypt_final),
    C_DecryptInit: Some(c_crypt_init),
    C_Decrypt: Some(c_crypt),
    C_DecryptUpdate: Some(c_crypt),
    C_DecryptFinal: Some(c_crypt_final),
    C_DigestInit: Some(c_digest_init),
    C_Digest: Some(c_crypt),
    C_DigestUpdate: Some(c_update),
    C_DigestKey: Some(c_destroy_object),
    C_DigestFinal: Some(c_crypt_final),
    C_SignInit: Some(c_sign_init),
    C_Sign: Some(c_sign),
    C_SignUpdate: Some(c_sign_update),
    C_SignFinal: Some(c_sign_final),
    C_SignRecoverInit: Some(c_crypt_init),
    C_SignRecover: Some(c_crypt),
    C_VerifyInit: Some(c_crypt_init),
    C_Verify: Some(c_verify),
    C_VerifyUpdate: Some(c_update),
    C_VerifyFinal: Some(c_update),
    C_VerifyRecoverInit: Some(c_crypt_init),
    C_VerifyRecover: Some(c_crypt),
    C_DigestEncryptUpdate: Some(c_crypt),
    C_DecryptDigestUpdate: Some(c_crypt),
    C_SignEncryptUpdate: Some(c_crypt),
    C_DecryptVerifyUpdate: Some(c_crypt),
    C_GenerateKey: Some(c_generate_key),
    C_GenerateKeyPair: Some(c_generate_key_pair),
    C_WrapKey: Some(c_wrap_key),
    C_UnwrapKey: Some(c_unwrap_key),
    C_DeriveKey: Some(c_derive_key),
    C_SeedRandom: Some(c_seed_random),
    C_GenerateRandom: Some(c_generate_random),
    C_GetFunctionStatus: Some(c_not_parallel),
    C_CancelFunction: Some(c_not_parallel),
    C_WaitForSlotEvent: Some(c_wait_for_slot_event),
};

/// The module's one exported symbol.
///
/// # Safety
/// `list` is null or points at writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        // SAFETY: the caller passes null or a pointer it lets us write.
        let list = unsafe { out(list) }?;
        // Callers only read the table (PKCS#11 declares it const in
        // spirit; the C type lacks the qualifier).
        *list = std::ptr::addr_of!(FUNCTIONS).cast_mut();
        Ok(())
    })
}

/// Runs an entry point's body: a panic becomes `CKR_GENERAL_ERROR`, an
/// error its code (and a log line when it is worth one).
fn guard(f: impl FnOnce() -> Result<()>) -> CK_RV {
    log::quiet_panics();
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => {
            log::note(&e);
            e.rv()
        }
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// `p` as a place to write, or `CKR_ARGUMENTS_BAD` when it is null.
///
/// # Safety
/// `p` is null or valid for reads and writes of a `T`, for `'a`.
unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T> {
    // SAFETY: as the caller promises.
    unsafe { p.as_mut() }.ok_or(Error::Rv(CKR_ARGUMENTS_BAD))
}

/// `len` bytes at `p`; null is an empty input only when `len` is 0.
///
/// # Safety
/// `p` is null or valid for reads of `len` bytes, for `'a`.
unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::Rv(CKR_ARGUMENTS_BAD))
        };
    }
    // SAFETY: as the caller promises; CK_ULONG is usize wide on every
    // target cryptoki-sys has bindings for.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// The two-call pattern of the list functions: with `dst` null, `*count`
/// is set to the length; else the items are copied if they fit
/// (`CKR_BUFFER_TOO_SMALL` and the length otherwise).
///
/// # Safety
/// `count` is null or writable; `dst` is null or valid for `*count`
/// writes of `T`.
unsafe fn fill<T: Copy>(dst: *mut T, count: *mut CK_ULONG, items: &[T]) -> Result<()> {
    // SAFETY: as the caller promises.
    let count = unsafe { out(count) }?;
    let room = *count as usize;
    *count = items.len() as CK_ULONG;
    if dst.is_null() {
        return Ok(());
    }
    if room < items.len() {
        return Err(Error::Rv(CKR_BUFFER_TOO_SMALL));
    }
    // SAFETY: `dst` has room for `room` >= `items.len()` elements.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), dst, items.len()) };
    Ok(())
}

/// A blank-padded fixed-width text field (PKCS#11 strings are not
/// NUL-terminated); cut to fit.
fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

fn version() -> CK_VERSION {
    let part = |s: &str| s.parse::<u8>().unwrap_or(0);
    CK_VERSION {
        major: part(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: part(env!("CARGO_PKG_VERSION_MINOR")),
    }
}

unsafe extern "C" fn c_initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        // SAFETY: the argument is null or a CK_C_INITIALIZE_ARGS.
        if let Some(a) = unsafe { args.cast::<CK_C_INITIALIZE_ARGS>().as_ref() } {
            if !a.pReserved.is_null() {
                return Err(Error::Rv(CKR_ARGUMENTS_BAD));
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(Error::Rv(CKR_ARGUMENTS_BAD));
            }
            // The module locks with the OS's primitives or not at all;
            // it creates no threads either way.
            if given[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(Error::Rv(CKR_CANT_LOCK));
            }
        }
        module::initialize()
    })
}

unsafe extern "C" fn c_finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(Error::Rv(CKR_ARGUMENTS_BAD));
        }
        module::finalize()
    })
}

unsafe extern "C" fn c_get_info(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        module::check_initialized()?;
        // SAFETY: null or a CK_INFO to fill.
        let info = unsafe { out(info) }?;
        *info = CK_INFO {
            cryptokiVersion: FUNCTIONS.version,
            manufacturerID: padded("vaultgate"),
            flags: 0,
            libraryDescription: padded("vaultgate vault PKCS#11 module"),
            libraryVersion: version(),
        };
        Ok(())
    })
}

unsafe extern "C" fn c_get_slot_list(
    _token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        module::check_initialized()?;
        // SAFETY: null or room for `*count` slot ids.
        unsafe { fill(list, count, &[SLOT]) }
    })
}

unsafe extern "C" fn c_get_slot_info(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        module::check_slot(slot)?;
        // SAFETY: null or a CK_SLOT_INFO to fill.
        let info = unsafe { out(info) }?;
        *info = CK_SLOT_INFO {
            slotDescription: padded("vaultgate vault"),
            manufacturerID: padded("vaultgate"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: version(),
            firmwareVersion: version(),
        };
        Ok(())
    })
}

unsafe extern "C" fn c_get_token_info(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        module::check_slot(slot)?;
        let serial = module::token_serial()?;
        // SAFETY: null or a CK_TOKEN_INFO to fill.
        let info = unsafe { out(info) }?;
        *info = CK_TOKEN_INFO {
            label: padded(module::TOKEN_LABEL),
            manufacturerID: padded("vaultgate"),
            model: padded("vault"),
            serialNumber: padded(&serial),
            // No CKF_LOGIN_REQUIRED: the caller's uid is its authority,
            // so a web server needs no PIN in its config (any is taken).
            flags: CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_WRITE_PROTECTED | CKF_RNG,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: UNAVAILABLE,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: UNAVAILABLE,
            ulMaxPinLen: 255,
            ulMinPinLen: 0,
            ulTotalPublicMemory: UNAVAILABLE,
            ulFreePublicMemory: UNAVAILABLE,
            ulTotalPrivateMemory: UNAVAILABLE,
            ulFreePrivateMemory: UNAVAILABLE,
            hardwareVersion: version(),
            firmwareVersion: version(),
            utcTime: padded(""),
        };
        Ok(())
    })
}

unsafe extern "C" fn c_get_mechanism_list(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        module::check_slot(slot)?;
        let all: Vec<CK_MECHANISM_TYPE> = mechanism::MECHANISMS.iter().map(|m| m.0).collect();
        // SAFETY: null or room for `*count` mechanism types.
        unsafe { fill(list, count, &all) }
    })
}

unsafe extern "C" fn c_get_mechanism_info(
    slot: CK_SLOT_ID,
    kind: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        module::check_slot(slot)?;
        let found = mechanism::info(kind).ok_or(Error::Rv(CKR_MECHANISM_INVALID))?;
        // SAFETY: null or a CK_MECHANISM_INFO to fill.
        *unsafe { out(info) }? = found;
        Ok(())
    })
}

unsafe extern "C" fn c_open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        // SAFETY: null or a handle to fill.
        let session = unsafe { out(session) }?;
        *session = module::open_session(slot, flags)?;
        Ok(())
    })
}

unsafe extern "C" fn c_close_session(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module::close_session(session))
}

unsafe extern "C" fn c_close_all_sessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| module::close_all_sessions(slot))
}

unsafe extern "C" fn c_get_session_info(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    guard(|| {
        let (state, flags) = module::session_info(session)?;
        // SAFETY: null or a CK_SESSION_INFO to fill.
        *unsafe { out(info) }? = CK_SESSION_INFO {
            slotID: SLOT,
            state,
            flags,
            ulDeviceError: 0,
        };
        Ok(())
    })
}

unsafe extern "C" fn c_login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    _pin: *mut CK_UTF8CHAR,
    _pin_len: CK_ULONG,
) -> CK_RV {
    guard(|| module::login(session, user))
}

unsafe extern "C" fn c_logout(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module::logout(session))
}

unsafe extern "C" fn c_get_attribute_value(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let obj = module::object(session, object)?;
        if template.is_null() {
            return Err(Error::Rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the caller passes `count` attributes at `template`.
        let template = unsafe { std::slice::from_raw_parts_mut(template, count as usize) };
        // Every attribute is answered; the code is that of the last
        // failure, as PKCS#11 allows.
        let mut rv = CKR_OK;
        for a in template {
            match attributes::value(&obj, a.type_) {
                Value::Bytes(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if (a.ulValueLen as usize) < v.len() {
                        a.ulValueLen = UNAVAILABLE;
                        rv = CKR_BUFFER_TOO_SMALL;
                    } else {
                        // SAFETY: `pValue` has room for `ulValueLen`
                        // bytes, at least `v.len()`.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                v.as_ptr(),
                                a.pValue.cast::<u8>(),
                                v.len(),
                            );
                        }
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
                Value::Sensitive => {
                    a.ulValueLen = UNAVAILABLE;
                    rv = CKR_ATTRIBUTE_SENSITIVE;
                }
                Value::Invalid => {
                    a.ulValueLen = UNAVAILABLE;
                    rv = CKR_ATTRIBUTE_TYPE_INVALID;
                }
            }
        }
        match rv {
            CKR_OK => Ok(()),
            rv => Err(Error::Rv(rv)),
        }
    })
}

unsafe extern "C" fn c_find_objects_init(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let attrs: &[CK_ATTRIBUTE] = if count == 0 {
            &[]
        } else if template.is_null() {
            return Err(Error::Rv(CKR_ARGUMENTS_BAD));
        } else {
            // SAFETY: the caller passes `count` attributes at `template`.
            unsafe { std::slice::from_raw_parts(template, count as usize) }
        };
        let mut wanted = Vec::with_capacity(attrs.len());
        for a in attrs {
            // SAFETY: each attribute's value is `ulValueLen` bytes.
            let v = unsafe { bytes(a.pValue.cast::<u8>(), a.ulValueLen) }?;
            wanted.push((a.type_, v.to_vec()));
        }
        module::find_init(session, wanted)
    })
}

unsafe extern "C" fn c_find_objects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: null or a count to fill.
        let count = unsafe { out(count) }?;
        if objects.is_null() && max > 0 {
            return Err(Error::Rv(CKR_ARGUMENTS_BAD));
        }
        let found = module::find(session, max as usize)?;
        if !found.is_empty() {
            // SAFETY: `objects` has room for `max` >= `found.len()` handles.
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), objects, found.len()) };
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

unsafe extern "C" fn c_find_objects_final(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| module::find_final(session))
}

/// A mechanism's parameter, copied out of the caller's memory.
///
/// # Safety
/// A non-null `pParameter` points at `ulParameterLen` bytes.
unsafe fn param(m: &CK_MECHANISM) -> Param {
    if m.pParameter.is_null() || m.ulParameterLen == 0 {
        return Param::None;
    }
    let len = m.ulParameterLen as usize;
    match m.mechanism {
        CKM_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS
            if len == std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() =>
        {
            // SAFETY: that many bytes are there; read_unaligned takes any
            // alignment the caller used.
            let p = unsafe {
                m.pParameter
                    .cast::<CK_RSA_PKCS_PSS_PARAMS>()
                    .read_unaligned()
            };
            Param::Pss {
                hash: p.hashAlg,
                mgf: p.mgf,
                salt_len: p.sLen,
            }
        }
        CKM_EDDSA if len == std::mem::size_of::<CK_EDDSA_PARAMS>() => {
            // SAFETY: as above.
            let p = unsafe { m.pParameter.cast::<CK_EDDSA_PARAMS>().read_unaligned() };
            Param::EdDsa {
                prehash: p.phFlag != CK_FALSE,
                context_len: p.ulContextDataLen,
            }
        }
        _ => Param::Malformed,
    }
}

unsafe extern "C" fn c_sign_init(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        // SAFETY: null or a CK_MECHANISM.
        let m = unsafe { mechanism.as_ref() }.ok_or(Error::Rv(CKR_ARGUMENTS_BAD))?;
        // SAFETY: its parameter is as long as it says.
        let p = unsafe { param(m) };
        module::sign_init(session, m.mechanism, p, key)
    })
}

unsafe extern "C" fn c_sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: `data_len` bytes at `data`.
        let data = unsafe { bytes(data, data_len) }?;
        // SAFETY: null or a length to read and fill; `signature` null
        // or room for that many bytes.
        unsafe { finish_sign(session, Some(data), signature, signature_len) }
    })
}

unsafe extern "C" fn c_sign_update(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        // SAFETY: `part_len` bytes at `part`.
        let part = unsafe { bytes(part, part_len) }?;
        module::sign_update(session, part)
    })
}

unsafe extern "C" fn c_sign_final(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: as for `c_sign`.
    guard(|| unsafe { finish_sign(session, None, signature, signature_len) })
}

/// `C_Sign` and `C_SignFinal`, with the length query of both.
///
/// # Safety
/// `len` is null or readable and writable; `out` is null or has room for
/// `*len` bytes.
unsafe fn finish_sign(
    session: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    signature: *mut CK_BYTE,
    len: *mut CK_ULONG,
) -> Result<()> {
    // SAFETY: as the caller promises.
    let len = unsafe { out(len) }?;
    let room = (!signature.is_null()).then_some(*len as usize);
    match module::sign(session, data, room)? {
        Signed::Length(n) => {
            *len = n as CK_ULONG;
            Ok(())
        }
        Signed::TooSmall(n) => {
            *len = n as CK_ULONG;
            Err(Error::Rv(CKR_BUFFER_TOO_SMALL))
        }
        Signed::Signature(s) => {
            // SAFETY: `module::sign` checked that `room` >= `s.len()`.
            unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), signature, s.len()) };
            *len = s.len() as CK_ULONG;
            Ok(())
        }
    }
}

unsafe extern "C" fn c_generate_random(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        module::check_session(session)?;
        if out.is_null() {
            return if len == 0 {
                Ok(())
            } else {
                Err(Error::Rv(CKR_ARGUMENTS_BAD))
            };
        }
        // SAFETY: the caller passes room for `len` bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(out, len as usize) };
        module::random(buf)
    })
}

unsafe extern "C" fn c_seed_random(
    session: CK_SESSION_HANDLE,
    _seed: *mut CK_BYTE,
    _len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        module::check_session(session)?;
        Err(Error::Rv(CKR_RANDOM_SEED_NOT_SUPPORTED))
    })
}

/// The functions PKCS#11 says a module without parallel functions
/// answers so.
extern "C" fn c_not_parallel(_session: CK_SESSION_HANDLE) -> CK_RV {
    CKR_FUNCTION_NOT_PARALLEL
}

/// Stubs for the functions the token does not offer (it signs, and
/// nothing else; keys are made and changed with the vault's own CLI).
/// They read nothing and cannot panic.
macro_rules! not_supported {
    ($($name:ident($($t:ty),*);)*) => {
        $(extern "C" fn $name($(_: $t),*) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        })*
    };
}

not_supported! {
    c_init_token(CK_SLOT_ID, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR);
    c_init_pin(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG);
    c_set_pin(CK_SESSION_HANDLE, *mut CK_UTF8CHAR, CK_ULONG, *mut CK_UTF8CHAR, CK_ULONG);
    c_get_operation_state(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    c_set_operation_state(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    c_create_object(CK_SESSION_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    c_copy_object(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    c_destroy_object(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    c_get_object_size(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG);
    c_set_attribute_value(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG);
    c_crypt_init(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    c_crypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    c_crypt_final(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    c_digest_init(CK_SESSION_HANDLE, *mut CK_MECHANISM);
    c_update(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG);
    c_verify(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, CK_ULONG);
    c_generate_key(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    c_generate_key_pair(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE, *mut CK_OBJECT_HANDLE);
    c_wrap_key(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    c_unwrap_key(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    c_derive_key(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    c_wait_for_slot_event(CK_FLAGS, *mut CK_SLOT_ID, *mut c_void);
}
