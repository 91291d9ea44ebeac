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
//! - `sync`       — locks that survive a panic elsewhere (no poisoning)
//! - [`telemetry`] — tracing setup and the Prometheus `/metrics` listener
//! - [`cli`]      — subcommand implementations behind `main.rs`

pub mod cli;
pub mod client;
pub mod config;
pub mod devca;
pub mod fsutil;
pub mod os;
pub mod pki;
pub mod protocol;
pub mod proxy;
pub mod signer;
mod sync;
pub mod telemetry;
pub mod vault;
