//! vaultgate: a TLS-offload reverse proxy whose private keys live in a
//! separate signing process, the vault.
//!
//! # Layout
//!
//! - [`config`]   — TOML file structs, validation into settings, located errors
//! - [`protocol`] — the vault wire protocol: frames, fields, messages, codec
//! - [`client`]   — multiplexed async vault client (the CLI, `run`, the proxy's key-event follower)
//! - [`vault`]    — the signing process: keystore, keys, policy, audit, server
//! - [`etcd`]     — the clustered keystore's etcd client: bounded calls that fail over between members
//! - [`signer`]   — the proxy's vault client: pooled, pipelined, rustls signing keys
//! - [`proxy`]    — TLS termination, HTTP/1.1 and HTTP/2 serving, routing, the backend client, health, access log, shutdown
//! - [`pki`]      — certificate files and DER walks (no vault client: the vault uses it)
//! - [`devca`]    — the dev CA of `run`, signing through the vault with rcgen
//! - [`fsutil`]   — crash-safe file writes (temp, fsync, rename, fsync dir)
//! - [`os`]       — process hardening: no core dumps, mlockall, privileges
//! - [`sync`]     — locks that survive a panic elsewhere (no poisoning; the PKCS#11 module uses them too)
//! - [`control`]  — pid and status files: how `reload` finds a process and hears its verdict
//! - [`notify`]   — readiness, reloads and shutdown told to systemd (`sd_notify`)
//! - [`telemetry`] — tracing setup and the Prometheus `/metrics` listener
//! - [`cli`]      — subcommand implementations behind `main.rs`

pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod control;
pub mod devca;
pub mod etcd;
pub(crate) mod fsutil;
pub(crate) mod notify;
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
    pub use crate::vault::audit::{Audit, Event, Options as AuditOptions};
    pub use crate::vault::backup::{reseal, unseal, Unsealed};
    pub use crate::vault::keys::{spki_sha256, Material};
    pub use crate::vault::policy::Caller;
}

#[cfg(test)]
mod layout {
    /// Every `mod NAME;` of `source` is named in its `//!` docs.
    fn assert_listed(file: &str, source: &str) {
        let docs: String = source
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut test_only = false;
        for line in source.lines() {
            // Test modules are not part of the map.
            let after_cfg_test = std::mem::replace(&mut test_only, line == "#[cfg(test)]");
            if after_cfg_test {
                continue;
            }
            let line = line
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) else {
                continue;
            };
            assert!(
                docs.contains(&format!("`{name}`")),
                "{file}: module `{name}` is missing from its layout docs"
            );
        }
    }

    #[test]
    fn every_module_is_in_the_layout_maps() {
        assert_listed("src/lib.rs", include_str!("lib.rs"));
        assert_listed("src/proxy/mod.rs", include_str!("proxy/mod.rs"));
        assert_listed("src/vault/mod.rs", include_str!("vault/mod.rs"));
        assert_listed("src/protocol/mod.rs", include_str!("protocol/mod.rs"));
        assert_listed("src/signer/mod.rs", include_str!("signer/mod.rs"));
        assert_listed("src/config/mod.rs", include_str!("config/mod.rs"));
        assert_listed("src/cli/mod.rs", include_str!("cli/mod.rs"));
    }
}
