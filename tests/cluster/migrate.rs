//! `store migrate` of a single node's keystore into a cluster on a real
//! etcd, the nodes' registration in it, and `cluster status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::etcd::EtcdCluster;
use crate::common::vault::VaultProc;
use crate::common::{bin, wait_for};
use crate::vaults::{another_node, describe, first_node, seeded_state, store_config};
use vaultgate::etcd::{Etcd, EtcdConfig};

/// A single-node vault with what a migration must carry: rotated keys,
/// a disabled key, certificates bound, an encrypted blob. Stopped.
struct Single {
    vault: VaultProc,
    keys: Vec<&'static str>,
    /// Each key's `describe` before the move.
    described: Vec<serde_json::Value>,
    cert_v2: String,
    cert_v3: String,
    sealed: Vec<u8>,
}

fn single_node() -> Single {
    let mut v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["cert", "issue", "web", "--name", "web.example"]);
    v.ok(&["key", "rotate", "web"]);
    v.ok(&["cert", "issue", "web", "--name", "web.example"]);
    v.ok(&["key", "rotate", "web"]);
    v.ok(&["cert", "issue", "web", "--name", "web2.example"]);
    v.ok(&["key", "create", "data", "--type", "aes-256"]);
    let sealed = v
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"moved intact")
        .stdout;
    assert!(!sealed.is_empty(), "encrypt gave nothing");
    v.ok(&["key", "rotate", "data"]);
    v.ok(&["key", "create", "old", "--type", "ed25519"]);
    v.ok(&["key", "disable", "old"]);
    let keys = vec!["data", "old", "web"];
    let described = keys
        .iter()
        .map(|k| describe(&v, k).expect("describe"))
        .collect();
    let cert_v2 = v.ok(&["cert", "show", "web", "--version", "2"]);
    let cert_v3 = v.ok(&["cert", "show", "web"]);
    assert_ne!(cert_v2, cert_v3);
    v.stop();
    Single {
        vault: v,
        keys,
        described,
        cert_v2,
        cert_v3,
        sealed,
    }
}

/// A cluster node's config file for `prefix`, in a dir of its own.
fn config_file(cluster: &EtcdCluster, prefix: &str, node: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, store_config(cluster, prefix, node)).expect("write config");
    (dir, path)
}

fn run(args: &[&str], config: &Path, extra: &[&Path]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run vaultgate")
}

fn migrate(config: &Path, state: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["store", "migrate", "--config"])
        .arg(config)
        .arg("--from-state-dir")
        .arg(state)
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run migrate")
}

/// Everything under `prefix`: key, value, revision.
/// What a migration could write under `prefix`: the records and the
/// master check (running nodes keep their own entries, election and
/// audit anchor there too, on their own schedule).
fn snapshot(cluster: &EtcdCluster, prefix: &str) -> Vec<(String, Vec<u8>, i64)> {
    let etcd = Etcd::connect(&EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: prefix.into(),
        ..EtcdConfig::default()
    })
    .expect("connect");
    etcd.block_on(etcd.list(""))
        .expect("list")
        .entries
        .into_iter()
        .filter(|e| e.key.starts_with("keys/") || e.key == "master-check")
        .map(|e| (e.key, e.value, e.mod_revision))
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_migrated_keystore_is_served_whole_by_every_node_of_the_cluster() {
    let old = single_node();
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-migrate/";
    let (_cd, config) = config_file(&cluster, prefix, "a");
    let out = migrate(&config, &old.vault.state, &[]);
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {}{said}",
        text(&out.stderr)
    );
    assert!(said.contains("moved 3 key(s)"), "{said}");
    assert!(
        said.contains("versions 1,2,3  primary 3") && said.contains("certificates 1,2,3"),
        "{said}"
    );
    assert!(
        said.contains("master.key") && said.contains("keystore.json"),
        "the operator is not told what to copy: {said}"
    );

    let (a, _ad) = another_node(&cluster, prefix, "a", &old.vault);
    let (b, _bd) = another_node(&cluster, prefix, "b", &old.vault);
    for node in [&a, &b] {
        for (key, before) in old.keys.iter().zip(&old.described) {
            assert_eq!(
                describe(node, key).as_ref(),
                Some(before),
                "{key} on {}",
                node.socket.display()
            );
        }
        // An old version still signs (within its grace), the disabled key
        // stays disabled, each version keeps its certificate.
        let signed = node.cli_stdin(
            &[
                "key",
                "sign",
                "web",
                "--scheme",
                "ecdsa-p256-sha256",
                "--version",
                "2",
            ],
            b"after the move",
        );
        assert!(
            signed.status.success() && !signed.stdout.is_empty(),
            "version 2 does not sign: {}",
            text(&signed.stderr)
        );
        let refused = node.cli_stdin(&["key", "sign", "old", "--scheme", "ed25519"], b"x");
        assert!(!refused.status.success(), "the disabled key signed");
        assert_eq!(
            node.ok(&["cert", "show", "web", "--version", "2"]),
            old.cert_v2
        );
        assert_eq!(node.ok(&["cert", "show", "web"]), old.cert_v3);
        assert_eq!(
            node.cli_stdin(&["data", "decrypt"], &old.sealed).stdout,
            b"moved intact"
        );
    }
    // The cluster carries on from there: a rotation on one node numbers
    // on from the migrated versions and reaches the other.
    a.ok(&["key", "rotate", "web"]);
    wait_for("web version 4 on b", Duration::from_secs(10), || {
        describe(&b, "web")
            .and_then(|d| d["primary"].as_u64())
            .filter(|p| *p == 4)
    });
}

#[test]
fn a_migration_into_a_cluster_that_is_not_empty_is_refused_and_changes_nothing() {
    let old = single_node();
    let cluster = EtcdCluster::start(3);

    // Keys already there.
    let prefix = "/vg-migrate-full/";
    let a = first_node(&cluster, prefix);
    a.ok(&["key", "create", "theirs", "--type", "ed25519"]);
    let before = snapshot(&cluster, prefix);
    let (_cd, config) = config_file(&cluster, prefix, "m");
    let out = migrate(&config, &old.vault.state, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "migrated into a cluster with keys");
    assert!(
        err.contains("not empty") && err.contains(prefix) && err.contains("theirs"),
        "the refusal does not say why: {err}"
    );
    assert_eq!(snapshot(&cluster, prefix), before, "the refusal wrote");

    // No keys, but sealed under another master key (its first node's).
    let prefix = "/vg-migrate-other/";
    let _other = first_node(&cluster, prefix);
    let before = snapshot(&cluster, prefix);
    let (_cd, config) = config_file(&cluster, prefix, "m");
    let out = migrate(&config, &old.vault.state, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "migrated under another master key");
    assert!(
        err.contains("master key") && err.contains(prefix),
        "the refusal does not say why: {err}"
    );
    assert_eq!(snapshot(&cluster, prefix), before, "the refusal wrote");

    // More records than the cluster takes in one transaction.
    let prefix = "/vg-migrate-small/";
    let (_cd, config) = config_file(&cluster, prefix, "m");
    let out = migrate(&config, &old.vault.state, &["--etcd-max-txn-ops", "2"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a transaction over the limit went");
    assert!(err.contains("--max-txn-ops"), "{err}");
    assert_eq!(snapshot(&cluster, prefix), [], "the refusal wrote");
}

#[test]
fn cluster_status_lists_the_nodes_and_every_endpoint_and_fails_without_quorum() {
    let mut cluster = EtcdCluster::start(3);
    let prefix = "/vg-status/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "web", "--type", "ed25519"]);
    let (_cd, config) = config_file(&cluster, prefix, "ops");
    let status = || {
        let out = run(&["cluster", "status", "--json"], &config, &[]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}{}", text(&out.stdout), text(&out.stderr))
        });
        (out.status.success(), v)
    };

    let (ok, v) = status();
    assert!(ok, "{v}");
    let nodes: Vec<(&str, &str)> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default(),
                n["socket"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let sock = |p: &VaultProc| p.socket.display().to_string();
    assert_eq!(nodes, [("a", sock(&a).as_str()), ("b", sock(&b).as_str())]);
    let endpoints = v["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 3, "{v}");
    assert!(endpoints.iter().all(|e| e["reachable"] == true), "{v}");
    assert_eq!(
        endpoints.iter().filter(|e| e["leader"] == true).count(),
        1,
        "{v}"
    );
    assert_eq!(v["keys"], 1, "{v}");

    // The human table says the same.
    let out = run(&["cluster", "status"], &config, &[]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.contains(&sock(&b))
            && table.contains(cluster.endpoint(2))
            && table.contains("keys: 1"),
        "{table}"
    );

    // One member down: shown unreachable, the rest still answers.
    let dead = (cluster.leader() + 1) % 3;
    cluster.kill(dead);
    let (ok, v) = status();
    assert!(ok, "one member down is not a failure: {v}");
    let e = &v["endpoints"][dead];
    assert_eq!(e["endpoint"], cluster.endpoint(dead), "{v}");
    assert_eq!(e["reachable"], false, "{v}");
    assert!(e["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");

    // Quorum gone: non-zero, and says why.
    cluster.kill((dead + 1) % 3);
    let (ok, v) = status();
    assert!(!ok, "no quorum, yet status succeeded: {v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|s| s.contains("store unavailable")),
        "{v}"
    );
}

#[test]
fn a_node_whose_name_is_taken_by_a_running_node_refuses_to_start() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-names/";
    let a = first_node(&cluster, prefix);
    let (mut b, _bd) = another_node(&cluster, prefix, "b", &a);
    let twin = seeded_state(&a);
    let config = twin.path().join("vault.toml");
    std::fs::write(&config, store_config(&cluster, prefix, "b")).expect("write config");
    let out = Command::new(bin())
        .args(["vault", "--ready-line", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(twin.path().join("twin.sock"))
        .arg("--state-dir")
        .arg(twin.path().join("state"))
        .output()
        .expect("run vault");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a second node named b started");
    assert!(
        err.contains("\"b\"")
            && err.contains("taken")
            && err.contains(&b.socket.display().to_string())
            && err.contains(&b.child.id().to_string()),
        "the refusal does not name the other node: {err}"
    );
    assert!(
        !twin.path().join("state/audit.log").exists(),
        "the refused node opened its state dir"
    );

    // Stopped cleanly, b gives its name back at once (not a lease later).
    b.stop();
    let (_cd, ops) = config_file(&cluster, prefix, "ops");
    let out = run(&["cluster", "status", "--json"], &ops, &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["a"], "{v}");
    // A node of that name starts now (the helper fails the test if not).
    let (mut b2, _b2d) = another_node(&cluster, prefix, "b", &a);
    b2.ok(&["key", "list"]);

    // Killed, its entry outlives it by a lease; restarted at once on the
    // same host, the node takes its own entry over rather than wait.
    b2.kill9();
    let (b3, _b3d) = another_node(&cluster, prefix, "b", &a);
    let out = run(&["cluster", "status", "--json"], &ops, &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["nodes"][1]["node"], "b", "{v}");
    assert_eq!(v["nodes"][1]["pid"], b3.child.id(), "{v}");
}
