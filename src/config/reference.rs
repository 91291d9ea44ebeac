//! docs/configuration.md held to the code: every key a config section
//! accepts is in its table and every row is a key it accepts, and every
//! default written as a value (in `code`) is what the section's
//! `impl Default` gives. A new key, or a changed default, fails here until
//! the reference says so.

use std::collections::BTreeMap;
use std::time::Duration;

use super::keys::fields_of;
use super::proxy::{HealthFile, ProxySettings, TlsVersion, UpstreamFile};
use super::run::RunSettings;
use super::vault::VaultSettings;

const DOC: &str = include_str!("../../docs/configuration.md");

/// The rows of the table under `heading`: key → default cell.
fn doc_table(heading: &str) -> BTreeMap<String, String> {
    let start = DOC
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading {heading:?}"));
    let mut rows = BTreeMap::new();
    for line in DOC[start + heading.len() + 2..].lines() {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(key) = cells
            .get(1)
            .and_then(|k| k.strip_prefix('`'))
            .and_then(|k| k.strip_suffix('`'))
        else {
            continue;
        };
        rows.insert(
            key.to_owned(),
            cells.get(2).copied().unwrap_or("").to_owned(),
        );
    }
    rows
}

/// A duration as the docs and the config files write it.
fn dur(d: Duration) -> String {
    format!("\"{}\"", super::duration::format(d))
}

fn quoted(s: impl std::fmt::Display) -> String {
    format!("\"{s}\"")
}

/// Checks one table: its keys are exactly `accepted` minus `tables` (the
/// section's sub-tables, documented under their own headings), and each
/// `(key, value)` in `defaults` is written as `` `value` ``; a key not in
/// `defaults` must have a default in words.
fn check(heading: &str, accepted: Vec<&'static str>, tables: &[&str], defaults: &[(&str, String)]) {
    let doc = doc_table(heading);
    let keys: Vec<&str> = accepted
        .into_iter()
        .filter(|k| !tables.contains(k))
        .collect();
    let mut documented: Vec<&str> = doc.keys().map(String::as_str).collect();
    let mut expected = keys.clone();
    documented.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        documented, expected,
        "{heading}: the documented keys and the keys the config accepts differ"
    );
    for key in keys {
        let cell = &doc[key];
        match defaults.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => assert_eq!(
                cell,
                &format!("`{value}`"),
                "{heading} {key}: the documented default is not the code's"
            ),
            None => assert!(
                !cell.starts_with('`'),
                "{heading} {key}: documented as {cell} but the code has no such default"
            ),
        }
    }
}

#[test]
fn the_proxy_tables_match_the_code() {
    let d = ProxySettings::default();
    let l = &d.limits;
    let tls = match d.min_tls_version {
        TlsVersion::Tls12 => "1.2",
        TlsVersion::Tls13 => "1.3",
    };
    check(
        "## `[proxy]`",
        fields_of::<super::proxy::ProxyFile>(),
        &["cert", "route", "upstream", "response_headers", "vault_tls"],
        &[
            ("listen", quoted(d.listen[0])),
            ("vault_connections", d.vault_connections.to_string()),
            ("sign_timeout", dur(d.sign_timeout)),
            ("sign_plain_wait", dur(d.sign_plain_wait)),
            ("min_tls_version", quoted(tls)),
            ("max_connections", l.max_connections.to_string()),
            ("handshake_timeout", dur(l.handshake_timeout)),
            ("header_timeout", dur(l.header_timeout)),
            ("idle_timeout", dur(l.idle_timeout)),
            ("max_header_size", l.max_header_size.to_string()),
            ("shutdown_timeout", dur(l.shutdown_timeout)),
            ("session_cache_size", d.session_cache_size.to_string()),
            ("session_tickets", d.session_tickets.to_string()),
            ("ticket_rotation", dur(d.ticket_rotation)),
            ("access_log", d.access_log.to_string()),
            ("access_log_format", quoted(d.access_log_format.name())),
            ("cert_expiry_warning", dur(d.cert_expiry_warning)),
            ("normalize_path", d.path_rules.normalize.to_string()),
            ("merge_slashes", d.path_rules.merge_slashes.to_string()),
            ("upgrade_protocols", format!("{:?}", d.upgrade_protocols)),
            ("client_ip_headers", quoted(d.forwarded.client_ip.name())),
        ],
    );
    check(
        "### `[proxy.vault_tls]`",
        fields_of::<super::proxy::VaultTlsFile>(),
        &[],
        &[],
    );
    check(
        "### `[proxy.response_headers]`",
        fields_of::<super::proxy::ResponseHeadersFile>(),
        &[],
        &[],
    );
    check(
        "### `[[proxy.cert]]`",
        fields_of::<super::proxy::CertFile>(),
        &[],
        &[],
    );
    check(
        "### `[[proxy.route]]`",
        fields_of::<super::proxy::RouteFile>(),
        &[],
        &[("path", quoted("/"))],
    );
    let u = super::proxy::UpstreamSpec::default();
    check(
        "### `[proxy.upstream.NAME]`",
        fields_of::<UpstreamFile>(),
        &["health"],
        &[
            ("balance", quoted("round-robin")),
            ("connect_timeout", dur(u.connect_timeout)),
            ("response_timeout", dur(u.response_timeout)),
            ("fail_timeout", dur(u.fail_timeout)),
            ("h2c", u.h2c.to_string()),
            ("proxy_protocol", u.proxy_protocol.to_string()),
            ("resolve_every", dur(u.resolve_every)),
        ],
    );
    assert!(matches!(u.balance, super::proxy::Balance::RoundRobin));
    let h = super::proxy::HealthSpec::default();
    check(
        "### `[proxy.upstream.NAME.health]`",
        fields_of::<HealthFile>(),
        &[],
        &[
            ("path", quoted(&h.path)),
            ("interval", dur(h.interval)),
            ("timeout", dur(h.timeout)),
            ("healthy", h.healthy.to_string()),
            ("unhealthy", h.unhealthy.to_string()),
        ],
    );
}

#[test]
fn the_log_table_matches_the_code() {
    let d = super::log::LogSettings::default();
    check(
        "## `[log]`",
        fields_of::<super::log::LogFile>(),
        &[],
        &[("level", quoted(&d.level))],
    );
}

#[test]
fn the_run_table_matches_the_code() {
    let d = RunSettings::default();
    check(
        "## `[run]`",
        fields_of::<super::run::RunFile>(),
        &[],
        &[
            ("dev_ca", quoted(d.dev_ca.display())),
            ("ca_key", quoted(&d.ca_key)),
            ("key_type", quoted(d.key_type)),
            ("cert_validity", dur(d.cert_validity)),
            ("restart_backoff", dur(d.restart_backoff)),
            ("vault_start_timeout", dur(d.vault_start_timeout)),
            ("auto_issue", d.auto_issue.to_string()),
            ("renew_before", dur(d.renew_before)),
        ],
    );
}

#[test]
fn the_vault_tables_match_the_code() {
    let d = VaultSettings::default();
    let master = match d.master_key {
        super::vault::MasterKeySource::File => "file",
        _ => "not file",
    };
    check(
        "## `[vault]`",
        fields_of::<super::vault::VaultFile>(),
        &["grant", "store"],
        &[
            ("socket", quoted(d.socket.display())),
            ("socket_mode", quoted(format!("{:04o}", d.socket_mode))),
            ("state_dir", quoted(d.state_dir.display())),
            ("master_key", quoted(master)),
            ("min_deletion_wait", dur(d.min_deletion_wait)),
            ("default_deletion_wait", dur(d.default_deletion_wait)),
            ("sign_grace", dur(d.sign_grace)),
            ("client_write_timeout", dur(d.client_write_timeout)),
            ("client_read_timeout", dur(d.client_read_timeout)),
            ("audit_sync", dur(d.audit_sync)),
            (
                "audit_rotate_size",
                quoted(super::size::format(d.audit_rotate_size)),
            ),
            ("syslog", d.syslog.to_string()),
        ],
    );
    check(
        "### `[[vault.grant]]`",
        fields_of::<super::vault::GrantFile>(),
        &[],
        &[],
    );
    check(
        "### `[vault.store]`",
        fields_of::<super::store::StoreFile>(),
        &[],
        &[
            ("kind", quoted("local")),
            ("prefix", quoted(super::store::DEFAULT_PREFIX)),
        ],
    );
}

#[test]
fn the_field_list_reader_sees_every_field() {
    let fields = fields_of::<super::proxy::RouteFile>();
    assert_eq!(fields, ["host", "path", "upstream"]);
}
