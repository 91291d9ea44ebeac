//! Every metric either process exports, with its help text, in one list:
//! each gets its `# HELP`, and every series whose labels are known in
//! advance starts at zero (Prometheus's advice: a counter that appears
//! only on its first event breaks `rate()` and alerts on absence).
//! docs/operations.md lists the same metrics, and a test holds the two
//! together, and this list to the names the code records.

use crate::protocol::Op;

/// Which process a metric belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// `vaultgate proxy`, and `vaultgate run` (the proxy in its process).
    Proxy,
    Vault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The values a label takes, when they are known before the first event.
#[derive(Debug, Clone, Copy)]
pub enum Values {
    Fixed(&'static [&'static str]),
    /// Every vault operation's name.
    Ops,
    /// Known only as they happen (a status code, a backend): these series
    /// appear on their first event.
    Open,
}

pub struct Metric {
    pub name: &'static str,
    pub process: Process,
    pub kind: Kind,
    pub labels: &'static [(&'static str, Values)],
    pub help: &'static str,
}

use Kind::{Counter, Gauge, Histogram};
use Process::{Proxy, Vault};
use Values::{Fixed, Open, Ops};

const RESULT: &[&str] = &["ok", "error"];

/// The metrics, proxy first.
pub const METRICS: &[Metric] = &[
    Metric { name: "vaultgate_build_info", process: Proxy, kind: Gauge, labels: &[("version", Open)],
        help: "Always 1; the version label is the running binary's." },
    Metric { name: "vaultgate_proxy_connections_open", process: Proxy, kind: Gauge, labels: &[],
        help: "Client connections open now." },
    Metric { name: "vaultgate_proxy_connections_shed_total", process: Proxy, kind: Counter, labels: &[],
        help: "Connections reset on accept because max_connections were open." },
    Metric { name: "vaultgate_proxy_handshakes_total", process: Proxy, kind: Counter, labels: &[("kind", Fixed(&["full", "resumed"]))],
        help: "TLS handshakes completed: full (a vault signature) or resumed (a ticket or session id, no signature)." },
    Metric { name: "vaultgate_proxy_handshake_failures_total", process: Proxy, kind: Counter,
        labels: &[("reason", Fixed(&["timeout", "vault", "incompatible", "no_certificate", "alert_received", "tls", "io"]))],
        help: "TLS handshakes that failed, by reason." },
    Metric { name: "vaultgate_proxy_handshake_seconds", process: Proxy, kind: Histogram, labels: &[("kind", Fixed(&["full", "resumed"]))],
        help: "Time from the first byte to the end of the TLS handshake." },
    Metric { name: "vaultgate_proxy_sign_seconds", process: Proxy, kind: Histogram, labels: &[("result", Fixed(RESULT))],
        help: "Time a handshake waited for its signature from the vault." },
    Metric { name: "vaultgate_proxy_sign_block_in_place_total", process: Proxy, kind: Counter, labels: &[],
        help: "Signatures slower than sign_plain_wait, whose worker thread was handed over meanwhile." },
    Metric { name: "vaultgate_proxy_vault_errors_total", process: Proxy, kind: Counter,
        labels: &[("reason", Fixed(&["unavailable", "closed", "timeout", "too_large", "protocol", "refused", "key"]))],
        help: "Signatures the vault did not give, by reason." },
    Metric { name: "vaultgate_proxy_vault_unhealthy_total", process: Proxy, kind: Counter, labels: &[],
        help: "Times a vault endpoint was passed over: it took a signature or a ping and did not answer in time." },
    Metric { name: "vaultgate_proxy_vault_resent_total", process: Proxy, kind: Counter, labels: &[],
        help: "Signature requests sent again to another vault endpoint because the first hung up, or did not answer within half the sign timeout." },
    Metric { name: "vaultgate_proxy_vault_failovers_total", process: Proxy, kind: Counter, labels: &[],
        help: "Times signing moved to another vault socket." },
    Metric { name: "vaultgate_proxy_vault_reconnect_failures_total", process: Proxy, kind: Counter, labels: &[],
        help: "Failed attempts to reconnect to a vault socket." },
    Metric { name: "vaultgate_proxy_requests_total", process: Proxy, kind: Counter, labels: &[("status", Open)],
        help: "Requests answered, by status code." },
    Metric { name: "vaultgate_proxy_request_seconds", process: Proxy, kind: Histogram, labels: &[],
        help: "Time from a request's head to the end of its answer." },
    Metric { name: "vaultgate_proxy_upstream_seconds", process: Proxy, kind: Histogram, labels: &[("upstream", Open)],
        help: "Time from a request sent to a backend to the head of its answer." },
    Metric { name: "vaultgate_proxy_idle_closes_total", process: Proxy, kind: Counter,
        labels: &[("reason", Fixed(&["idle", "no_request", "header"]))],
        help: "Connections closed for idling: between requests, before the first, or in a request head." },
    Metric { name: "vaultgate_proxy_h2_abuse_total", process: Proxy, kind: Counter,
        labels: &[("reason", Fixed(&["hpack"]))],
        help: "HTTP/2 connections closed with GOAWAY(ENHANCE_YOUR_CALM), by reason: hpack, header blocks decoding to more than the connection's budget." },
    Metric { name: "vaultgate_proxy_backend_up", process: Proxy, kind: Gauge, labels: &[("upstream", Open), ("backend", Open)],
        help: "1 while a backend passes its health checks, else 0." },
    Metric { name: "vaultgate_proxy_backend_ejections_total", process: Proxy, kind: Counter, labels: &[("upstream", Open), ("backend", Open)],
        help: "Times a backend that refused a connection was taken out for fail_timeout." },
    Metric { name: "vaultgate_proxy_cert_reloads_total", process: Proxy, kind: Counter, labels: &[("result", Fixed(RESULT))],
        help: "Certificate reloads (file change, key event, SIGHUP without a config)." },
    Metric { name: "vaultgate_proxy_resumption_ended_total", process: Proxy, kind: Counter, labels: &[],
        help: "Times a served vault key was withdrawn (disabled, pending deletion, deleted) and every earlier session stopped resuming." },
    Metric { name: "vaultgate_proxy_config_reloads_total", process: Proxy, kind: Counter, labels: &[("result", Fixed(RESULT))],
        help: "Config reloads on SIGHUP; an error keeps the running config." },
    Metric { name: "vaultgate_proxy_cert_not_after_timestamp_seconds", process: Proxy, kind: Gauge, labels: &[("cert", Open), ("key", Open)],
        help: "When the served certificate expires (Unix seconds); alert on it minus time()." },
    Metric { name: "vaultgate_proxy_cert_key_version", process: Proxy, kind: Gauge, labels: &[("cert", Open), ("key", Open)],
        help: "The vault key version that signs for the certificate." },
    Metric { name: "vaultgate_proxy_access_log_errors_total", process: Proxy, kind: Counter, labels: &[],
        help: "Access log lines that could not be written to access_log_file." },
    Metric { name: "vaultgate_run_vault_restarts_total", process: Proxy, kind: Counter, labels: &[],
        help: "Times vaultgate run restarted its vault child." },
    Metric { name: "vaultgate_build_info", process: Vault, kind: Gauge, labels: &[("version", Open)],
        help: "Always 1; the version label is the running binary's." },
    Metric { name: "vaultgate_vault_requests_total", process: Vault, kind: Counter,
        labels: &[("op", Ops), ("result", Fixed(&["ok", "error", "denied", "unaudited", "abandoned"]))],
        help: "Requests, by operation and result (unaudited: refused because the audit log cannot be written; abandoned: a passphrase stretch dropped unrun because its caller left while it waited its turn)." },
    Metric { name: "vaultgate_vault_request_duration_seconds", process: Vault, kind: Histogram, labels: &[("op", Open), ("result", Open)],
        help: "Time to answer a request, by operation and result." },
    Metric { name: "vaultgate_vault_denied_total", process: Vault, kind: Counter, labels: &[("op", Ops)],
        help: "Requests refused by the grants." },
    Metric { name: "vaultgate_vault_bad_frames_total", process: Vault, kind: Counter, labels: &[],
        help: "Frames that did not decode; each ends its connection." },
    Metric { name: "vaultgate_vault_connections", process: Vault, kind: Gauge, labels: &[],
        help: "Client connections open now." },
    Metric { name: "vaultgate_vault_disconnects_total", process: Vault, kind: Counter,
        labels: &[("reason", Fixed(&["bad-frame", "idle", "no-grant-full", "not-reading", "refusals", "slow-request", "too-many-connections", "vault-full"]))],
        help: "Connections the vault ended, by reason." },
    Metric { name: "vaultgate_vault_tls_refused_total", process: Vault, kind: Counter,
        labels: &[("reason", Fixed(&["expired", "handshake", "no-certificate", "no-grant", "no-identity", "timeout", "unknown-ca"]))],
        help: "Mutual-TLS callers refused before being served, by reason." },
    Metric { name: "vaultgate_vault_audit_write_errors_total", process: Vault, kind: Counter, labels: &[],
        help: "Audit records that could not be written." },
    Metric { name: "vaultgate_vault_audit_failing", process: Vault, kind: Gauge, labels: &[],
        help: "1 while operations are refused because the audit log cannot be written." },
    Metric { name: "vaultgate_vault_integrity_alarms_total", process: Vault, kind: Counter,
        labels: &[("kind", Fixed(&["audit-fragment", "audit-head-missing", "audit-head-forged", "audit-cut", "audit-replaced",
            "audit-index-missing", "audit-index-forged", "audit-segment-missing", "audit-segment-altered", "audit-segment-unknown"]))],
        help: "Audit-log integrity alarms raised at start: a cut, replaced or forged log, a missing head, or a missing, altered or unlisted closed segment." },
    Metric { name: "vaultgate_vault_audit_segments", process: Vault, kind: Gauge, labels: &[],
        help: "Closed audit segments retained (audit.log not counted)." },
    Metric { name: "vaultgate_vault_audit_bytes", process: Vault, kind: Gauge, labels: &[],
        help: "Bytes of the audit log: the retained closed segments and audit.log." },
    Metric { name: "vaultgate_vault_state_free_bytes", process: Vault, kind: Gauge, labels: &[],
        help: "Bytes an unprivileged writer may still use on the state dir's filesystem." },
    Metric { name: "vaultgate_vault_state_size_bytes", process: Vault, kind: Gauge, labels: &[],
        help: "Size of the state dir's filesystem in bytes." },
    Metric { name: "vaultgate_vault_store_revision", process: Vault, kind: Gauge, labels: &[],
        help: "The keystore backend's revision this vault has applied (0 for the local store)." },
    Metric { name: "vaultgate_vault_scheduler", process: Vault, kind: Gauge, labels: &[],
        help: "1 while this node runs scheduled rotations and deletions (always, for a local store; the elected node, in a cluster)." },
    Metric { name: "vaultgate_vault_store_conflicts_total", process: Vault, kind: Counter, labels: &[],
        help: "Key changes that lost a race with another node's and were decided again on the newer record." },
    Metric { name: "vaultgate_vault_store_refused_total", process: Vault, kind: Counter,
        labels: &[("kind", Fixed(&["key-rolled-back", "key-unknown", "key-corrupt", "key-missing"]))],
        help: "Records from the shared store refused (older than one seen, forged, corrupt, deleted without a tombstone)." },
    Metric { name: "vaultgate_vault_store_watch_restarts_total", process: Vault, kind: Counter, labels: &[],
        help: "Times the shared keystore was listed again because its change stream ended (compaction, etcd unreachable)." },
    Metric { name: "vaultgate_vault_store_errors_total", process: Vault, kind: Counter, labels: &[],
        help: "Errors reading the shared keystore's changes (the node keeps serving what it holds)." },
    Metric { name: "vaultgate_vault_audit_rotations_total", process: Vault, kind: Counter, labels: &[],
        help: "Audit log rotations (by size or by request)." },
    Metric { name: "vaultgate_vault_audit_behind_total", process: Vault, kind: Counter, labels: &[],
        help: "Operations refused because the audit writer was too far behind to take their record." },
    Metric { name: "vaultgate_vault_reloads_total", process: Vault, kind: Counter, labels: &[("result", Fixed(RESULT))],
        help: "Config reloads on SIGHUP; an error keeps the running config." },
];

/// Describes every metric of `process` and starts at zero each series
/// whose labels are all known. Idempotent.
pub fn register(process: Process) {
    for m in METRICS.iter().filter(|m| m.process == process) {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        for labels in combinations(m.labels) {
            match m.kind {
                Counter => metrics::counter!(m.name, &labels).increment(0),
                Gauge => metrics::gauge!(m.name, &labels).increment(0.0),
                Histogram => drop(metrics::histogram!(m.name, &labels)),
            }
        }
    }
    metrics::gauge!("vaultgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Every combination of the known label values; none when a label is
/// open, one empty set when there are no labels.
fn combinations(labels: &[(&'static str, Values)]) -> Vec<Vec<(&'static str, &'static str)>> {
    let mut out = vec![Vec::new()];
    for &(name, values) in labels {
        let values: Vec<&'static str> = match values {
            Fixed(v) => v.to_vec(),
            Ops => Op::ALL.iter().map(|op| op.name()).collect(),
            Open => return Vec::new(),
        };
        out = out
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut s = set.clone();
                    s.push((name, *v));
                    s
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names docs/operations.md lists under `heading` (its
    /// table's first column).
    fn documented(heading: &str) -> Vec<String> {
        let doc = include_str!("../../docs/operations.md");
        let start = doc
            .find(heading)
            .unwrap_or_else(|| panic!("docs/operations.md has no {heading:?}"));
        doc[start + heading.len()..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    fn names(process: Process) -> Vec<String> {
        let mut v: Vec<String> = METRICS
            .iter()
            .filter(|m| m.process == process)
            .map(|m| m.name.to_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_operations_page_lists_every_metric() {
        for (heading, process) in [
            ("### The proxy's metrics", Process::Proxy),
            ("### The vault's metrics", Process::Vault),
        ] {
            let mut doc = documented(heading);
            doc.sort();
            assert_eq!(
                doc,
                names(process),
                "{heading}: the documented metrics differ from the catalogue"
            );
        }
    }

    /// Every metric of a `vaultgate_` name the source records (`counter!`,
    /// `gauge!`, `histogram!`) is catalogued, so none goes out without
    /// help.
    #[test]
    fn every_metric_the_code_records_is_catalogued() {
        fn walk(dir: &std::path::Path, found: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, found);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("!(\"vaultgate_") {
                        let name: String = text[i + 3..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        found.push((p.display().to_string(), name));
                    }
                    for (i, _) in text.match_indices("!(\n") {
                        let rest = text[i + 3..].trim_start();
                        if let Some(r) = rest.strip_prefix("\"vaultgate_") {
                            let name: String = std::iter::once('v')
                                .chain("aultgate_".chars())
                                .chain(
                                    r.chars()
                                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_'),
                                )
                                .collect();
                            found.push((p.display().to_string(), name));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.len() > 30,
            "the walk found too few metrics: {found:?}"
        );
        for (file, name) in found {
            assert!(
                METRICS.iter().any(|m| m.name == name),
                "{file}: metric {name} is not in src/telemetry/catalog.rs"
            );
        }
    }

    #[test]
    fn known_labels_start_at_zero_and_open_ones_do_not() {
        assert_eq!(combinations(&[]), vec![Vec::<(&str, &str)>::new()]);
        assert_eq!(
            combinations(&[("kind", Fixed(&["full", "resumed"]))]).len(),
            2
        );
        assert!(combinations(&[("status", Open)]).is_empty());
        assert_eq!(
            combinations(&[("op", Ops), ("result", Fixed(&["ok", "error"]))]).len(),
            Op::ALL.len() * 2
        );
    }
}
