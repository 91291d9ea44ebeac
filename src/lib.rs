//! vaultgate: a TLS-offload reverse proxy whose private keys live in a
//! separate signing process, the vault.
//!
//! # Layout
//!
//! - [`config`]   — TOML file structs, validation into settings, located errors
//! - [`protocol`] — the vault wire protocol: frames, fields, messages, codec
//! - [`client`]   — multiplexed async vault client (CLI, `run`, proxy signer)
//! - [`vault`]    — the signing process: keystore, keys, policy, audit, server
//! - [`signer`]   — the proxy's vault client: pooled, pipelined, rustls signing keys
//! - [`proxy`]    — TLS termination, HTTP/1.1 and HTTP/2 serving, routing, the backend client, health, access log, shutdown
//! - [`pki`]      — certificate files and DER walks (no vault client: the vault uses it)
//! - [`devca`]    — the dev CA of `run`, signing through the vault with rcgen
//! - [`fsutil`]   — crash-safe file writes (temp, fsync, rename, fsync dir)
//! - [`os`]       — process hardening: no core dumps, mlockall, privileges
//! - [`sync`]     — locks that survive a panic elsewhere (no poisoning; the PKCS#11 module uses them too)
//! - [`telemetry`] — tracing setup and the Prometheus `/metrics` listener
//! - [`cli`]      — subcommand implementations behind `main.rs`

pub mod cli;
pub mod client;
pub mod config;
pub mod devca;
pub(crate) mod fsutil;
pub(crate) mod os;
pub mod pki;
pub mod protocol;
pub(crate) mod proxy;
pub mod signer;
pub mod sync;
pub(crate) mod telemetry;
pub(crate) mod vault;

/// The fuzz targets' entry points (`fuzz/`), kept in one place as rustls
/// keeps its own: each decodes arbitrary bytes and checks what decodes.
#[doc(hidden)]
pub mod fuzz {
    pub use crate::config::fuzz_parse as config;
    pub use crate::protocol::fuzz_decode as protocol;
    pub use crate::vault::record::fuzz_record as record;
}

/// What the criterion benches and the integration tests reach inside the
/// proxy and the vault to measure or inspect directly. Not an API: it
/// changes whenever the internals do.
#[doc(hidden)]
pub mod internals {
    pub use crate::proxy::framing::{Decoded, Decoder, Framing};
    pub use crate::proxy::h1::head;
    pub use crate::proxy::origin::{response, Outgoing};
    pub use crate::proxy::tls::provider;
    pub use crate::vault::audit::{Audit, Event};
    pub use crate::vault::keys::{spki_sha256, Material};
    pub use crate::vault::policy::Caller;
}
