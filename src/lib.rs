//! vaultgate: a TLS-offload reverse proxy whose private keys live in a
//! separate signing process, the vault.
//!
//! # Layout
//!
//! - [`config`]   — TOML file structs, validation into settings, located errors
//! - [`protocol`] — the vault wire protocol: frames, fields, messages, codec
//! - [`client`]   — multiplexed async vault client (CLI, `run`, proxy signer)
//! - [`vault`]    — the signing process: keystore, keys, policy, audit, server
//! - [`fsutil`]   — crash-safe file writes (temp, fsync, rename, fsync dir)
//! - [`os`]       — process hardening: no core dumps, mlockall, privileges
//! - [`telemetry`] — tracing setup and the Prometheus `/metrics` listener
//! - [`cli`]      — subcommand implementations behind `main.rs`

pub mod cli;
pub mod client;
pub mod config;
pub mod fsutil;
pub mod os;
pub mod protocol;
pub mod telemetry;
pub mod vault;
