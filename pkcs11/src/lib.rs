//! `libvaultgate_pkcs11.so`: a PKCS#11 module whose private keys stay in
//! the vaultgate vault. Unmodified nginx, Apache, OpenSSL (engine or
//! provider), ssh and Java sign through it; the module holds public keys,
//! certificates and key names, never key bytes, and is one more client of
//! the vault's socket: what a process may use is what the vault grants
//! its uid (docs/pkcs11.md).
//!
//! # Layout
//!
//! - [`ffi`]        — the C entry points and the function list: raw pointers, panics caught
//! - [`module`]     — the process's token state: initialisation, sessions, login, search, signing
//! - [`catalogue`]  — the objects, read from the vault, with handles that never change
//! - [`attributes`] — what `C_GetAttributeValue` and searches see of an object
//! - [`mechanism`]  — the signing mechanisms and the vault request each becomes
//! - [`client`]     — a blocking vault client over the Unix socket, a per-process pool
//! - [`fork`]       — knowing that this process is a forked child
//! - [`config`]     — where the vault is (environment, config file, default)
//! - [`log`]        — the optional failure log (the module prints nothing)
//! - [`error`]      — the one error type and the `CKR_*` code of each case
//!
//! Nothing runs when the library is loaded: no thread, no runtime, no
//! connection. The first vault connection is made by the first call that
//! needs one, in the process (and so under the uid) that makes it.

mod attributes;
mod catalogue;
mod client;
mod config;
mod error;
mod ffi;
mod fork;
mod log;
mod mechanism;
mod module;
