//! Vault nodes sharing one keystore on a real 3-member etcd cluster: a
//! change made on any node is served by every node, racing changes each
//! land once, older copies written into etcd are refused, and losing
//! etcd's quorum stops changes but not signing.

use std::time::{Duration, Instant};

use crate::common::etcd::EtcdCluster;
use crate::common::vault::{Opts, VaultProc};
use crate::common::wait_for;

/// How long a change made on one node may take to be served by another.
const PROPAGATION: Duration = Duration::from_secs(10);

pub(crate) fn store_config(cluster: &EtcdCluster, prefix: &str, node: &str) -> String {
    let endpoints: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    format!(
        "[vault]\nmin_deletion_wait = \"1s\"\nsign_grace = \"1s\"\n\n[vault.store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\nnode = \"{node}\"\n",
        endpoints.join(", ")
    )
}

/// The first node of a cluster under `prefix`: its master key becomes
/// the cluster's.
pub(crate) fn first_node(cluster: &EtcdCluster, prefix: &str) -> VaultProc {
    VaultProc::start_with(Opts {
        config: Some(store_config(cluster, prefix, "a")),
        ..Opts::default()
    })
}

/// A state dir holding `from`'s master key, as an operator seeds a new
/// node (docs/clustering.md).
pub(crate) fn seeded_state(from: &VaultProc) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("vg-node-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    for f in ["master.key", "keystore.json"] {
        std::fs::copy(from.state.join(f), state.join(f)).expect("copy master key");
    }
    dir
}

pub(crate) fn another_node(
    cluster: &EtcdCluster,
    prefix: &str,
    node: &str,
    seed: &VaultProc,
) -> (VaultProc, tempfile::TempDir) {
    another_node_with(cluster, prefix, node, seed, Opts::default())
}

fn another_node_with(
    cluster: &EtcdCluster,
    prefix: &str,
    node: &str,
    seed: &VaultProc,
    opts: Opts,
) -> (VaultProc, tempfile::TempDir) {
    let dir = seeded_state(seed);
    let v = VaultProc::start_with(Opts {
        config: Some(store_config(cluster, prefix, node)),
        state_dir: Some(dir.path().join("state")),
        ..opts
    });
    (v, dir)
}

pub(crate) fn describe(v: &VaultProc, key: &str) -> Option<serde_json::Value> {
    let out = v.cli(&["key", "describe", key]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("describe is JSON"))
}

fn primary(v: &VaultProc, key: &str) -> Option<u64> {
    describe(v, key).and_then(|d| d["primary"].as_u64())
}

/// Waits until `v` serves `key` with primary version `version`.
fn wait_primary(v: &VaultProc, key: &str, version: u64) {
    wait_for(
        &format!("{key} at version {version} on {}", v.socket.display()),
        PROPAGATION,
        || (primary(v, key) == Some(version)).then_some(()),
    );
}

fn versions(v: &VaultProc, key: &str) -> Vec<u64> {
    let d = describe(v, key).expect("describe");
    let mut out: Vec<u64> = d["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|x| x["version"].as_u64().expect("version number"))
        .collect();
    out.sort_unstable();
    out
}

/// `key rotate hot` on the vault at `socket`: the version it made, or
/// what it said when it failed.
fn rotate_on(socket: &std::path::Path) -> Result<u64, String> {
    let out = crate::common::vault::run_cli(
        std::process::Command::new(crate::common::bin()).args(["key", "rotate", "hot"]),
        socket,
        b"",
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // "rotated hot: primary version N"
    let said = String::from_utf8_lossy(&out.stdout);
    said.trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("rotate said {said:?}"))
}

fn sign(v: &VaultProc, key: &str, version: &str) -> std::process::Output {
    v.cli_stdin(
        &[
            "key",
            "sign",
            key,
            "--scheme",
            "ecdsa-p256-sha256",
            "--version",
            version,
        ],
        b"hello cluster",
    )
}

#[test]
fn a_key_created_on_one_node_and_rotated_on_another_is_served_by_every_node() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-serve/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    let (c, _cd) = another_node(&cluster, prefix, "c", &a);

    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    wait_primary(&b, "web", 1);
    b.ok(&["key", "rotate", "web"]);
    wait_primary(&c, "web", 2);
    wait_primary(&a, "web", 2);
    let signed = sign(&c, "web", "2");
    assert!(
        signed.status.success(),
        "node c cannot sign with the version node b made: {}",
        String::from_utf8_lossy(&signed.stderr)
    );

    // Data encrypted before three rotations made on three nodes decrypts
    // on every node after them.
    a.ok(&["key", "create", "data", "--type", "aes-256"]);
    wait_primary(&c, "data", 1);
    let sealed = c
        .cli_stdin(&["data", "encrypt", "--key", "data"], b"kept secret")
        .stdout;
    assert!(!sealed.is_empty(), "encrypt on c gave nothing");
    for (i, node) in [&a, &b, &c].into_iter().enumerate() {
        let next = primary(node, "data").expect("data") + 1;
        node.ok(&["key", "rotate", "data"]);
        assert_eq!(primary(node, "data"), Some(next), "rotation {i}");
        for other in [&a, &b, &c] {
            wait_primary(other, "data", next);
        }
    }
    assert_eq!(versions(&b, "data"), [1, 2, 3, 4]);
    for node in [&a, &b, &c] {
        assert_eq!(
            node.cli_stdin(&["data", "decrypt"], &sealed).stdout,
            b"kept secret",
            "{} cannot decrypt",
            node.socket.display()
        );
    }

    // A deletion made on one node is seen by every node.
    b.ok(&["key", "create", "scratch", "--type", "ed25519"]);
    wait_primary(&a, "scratch", 1);
    b.ok(&["key", "schedule-deletion", "scratch", "--wait", "1s"]);
    for node in [&a, &b, &c] {
        wait_for("scratch deleted everywhere", PROPAGATION, || {
            describe(node, "scratch").is_none().then_some(())
        });
    }
    for node in [&a, &b, &c] {
        node.ok(&["audit", "verify"]);
    }
}

#[test]
fn two_nodes_rotating_one_key_at_once_make_consecutive_versions_none_lost() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-race/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "hot", "--type", "ed25519"]);
    wait_primary(&b, "hot", 1);
    const EACH: usize = 8;
    let made = std::thread::scope(|s| {
        let rotate = |v: &'static str, node: &VaultProc| {
            let node_socket = node.socket.clone();
            s.spawn(move || {
                let mut made = Vec::new();
                for _ in 0..EACH {
                    let n = rotate_on(&node_socket)
                        .unwrap_or_else(|e| panic!("a rotation on {v} failed: {e}"));
                    made.push(n);
                }
                made
            })
        };
        let ta = rotate("a", &a);
        let tb = rotate("b", &b);
        let mut made = ta.join().expect("a");
        made.extend(tb.join().expect("b"));
        made
    });
    let mut made = made;
    made.sort_unstable();
    let want: Vec<u64> = (2..=(1 + 2 * EACH as u64)).collect();
    assert_eq!(
        made, want,
        "each rotation made its own, consecutive version"
    );
    wait_primary(&a, "hot", 1 + 2 * EACH as u64);
    wait_primary(&b, "hot", 1 + 2 * EACH as u64);
    let all: Vec<u64> = (1..=(1 + 2 * EACH as u64)).collect();
    assert_eq!(versions(&a, "hot"), all);
    assert_eq!(versions(&b, "hot"), all);
}

#[test]
fn an_older_record_written_into_etcd_is_refused_by_every_node_and_audited() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-rollback/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    wait_primary(&b, "web", 1);
    let old = cluster.etcdctl(&["get", "--print-value-only", &format!("{prefix}keys/web")]);
    let old = old.trim_end_matches('\n').to_owned();
    let record: serde_json::Value = serde_json::from_str(&old).expect("a record");
    assert_eq!(record["name"], "web", "not web's record: {old}");
    a.ok(&["key", "disable", "web"]);
    for node in [&a, &b] {
        wait_for("web disabled everywhere", PROPAGATION, || {
            (describe(node, "web")?["state"] == "disabled").then_some(())
        });
    }
    // Someone with write access to etcd puts the enabled record back.
    cluster.etcdctl(&["put", &format!("{prefix}keys/web"), &old]);
    for node in [&a, &b] {
        wait_for(
            "the put-back record refused and audited",
            PROPAGATION,
            || {
                node.audit_log()
                    .lines()
                    .any(|l| l.contains("key-rolled-back") && l.contains("\"web\""))
                    .then_some(())
            },
        );
        assert_eq!(
            describe(node, "web").expect("web")["state"],
            "disabled",
            "{} took the old record",
            node.socket.display()
        );
        let signed = sign(node, "web", "1");
        assert!(!signed.status.success(), "a disabled key signed again");
    }
    // The next change on a node replaces the refused record.
    b.ok(&["key", "enable", "web"]);
    wait_for("web enabled on a", PROPAGATION, || {
        (describe(&a, "web")?["state"] == "enabled").then_some(())
    });
}

#[test]
fn a_node_with_another_master_key_refuses_to_start() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-master/";
    let a = first_node(&cluster, prefix);
    a.ok(&["key", "create", "web", "--type", "ed25519"]);
    // A node whose state dir has its own, new master key.
    let mut stranger = VaultProc::start_with(Opts {
        config: Some(store_config(&cluster, "/vg-master-other/", "x")),
        ..Opts::default()
    });
    stranger.stop();
    let config = stranger.dir.path().join("vault.toml");
    std::fs::write(&config, store_config(&cluster, prefix, "x")).expect("write config");
    let out = std::process::Command::new(crate::common::bin())
        .args(["vault", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(stranger.dir.path().join("x.sock"))
        .arg("--state-dir")
        .arg(&stranger.state)
        .output()
        .expect("run vault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a node with another master key started"
    );
    assert!(
        stderr.contains("master key") && stderr.contains(prefix),
        "the refusal does not say why: {stderr}"
    );
}

#[test]
fn without_etcd_quorum_nodes_keep_signing_and_changes_fail_until_it_returns() {
    let mut cluster = EtcdCluster::start(3);
    let prefix = "/vg-quorum/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    wait_primary(&b, "web", 1);

    cluster.stop(1);
    cluster.stop(2);
    for node in [&a, &b] {
        let signed = sign(node, "web", "1");
        assert!(
            signed.status.success(),
            "signing stopped without quorum: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
    }
    let started = Instant::now();
    let refused = a.err(&["key", "rotate", "web"]);
    assert!(
        refused.contains("store unavailable"),
        "not a clear error: {refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the failing rotation took {:?}",
        started.elapsed()
    );
    cluster.cont(1);
    cluster.cont(2);
    // Once etcd has a leader again, a rotation works and both serve it.
    let version = wait_for(
        "a rotation after quorum returned",
        Duration::from_secs(30),
        || {
            let out = a.cli(&["key", "rotate", "web"]);
            out.status
                .success()
                .then(|| primary(&a, "web").expect("web"))
        },
    );
    wait_primary(&b, "web", version);
    let signed = sign(&b, "web", &version.to_string());
    assert!(signed.status.success(), "b cannot sign the new version");
}

/// The leaf certificate a TLS server at `addr` serves for `name`
/// (openssl's view; self-signed, so not verified).
fn served_leaf(addr: std::net::SocketAddr, name: &str) -> Option<String> {
    let openssl = crate::common::require_tool("openssl", "openssl");
    let out = std::process::Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start..end].to_owned())
}

fn leaf_of(chain: &str) -> String {
    let end = chain
        .find("-----END CERTIFICATE-----")
        .expect("a certificate");
    chain[chain
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate")..end]
        .to_owned()
}

#[test]
fn a_proxy_on_one_node_serves_the_certificate_of_a_rotation_made_on_another() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-proxy/";
    let a = first_node(&cluster, prefix);
    let (b, bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    a.ok(&["cert", "issue", "web", "--name", "web.test"]);
    wait_for("web's certificate on b", PROPAGATION, || {
        let out = b.cli(&["cert", "show", "web"]);
        out.status.success().then_some(())
    });
    let cert = bd.path().join("web.pem");
    std::fs::write(&cert, b.ok(&["cert", "show", "web"])).expect("write cert");
    let backend = crate::common::backends::Nginx::start("b1");
    let proxy_dir = bd.path();
    let proxy = crate::common::proxy::ProxyProc::start(
        proxy_dir,
        &crate::common::proxy::config(
            &b.socket,
            &[(&["web.test"], &cert, "vault:web")],
            &[backend.addr],
            "",
            "",
        ),
    );
    let first = wait_for("the proxy serving web", PROPAGATION, || {
        served_leaf(proxy.addr, "web.test")
    });
    assert_eq!(first, leaf_of(&a.ok(&["cert", "show", "web"])));

    // Rotated and re-issued on node a; the proxy talks only to node b.
    a.ok(&["key", "rotate", "web"]);
    a.ok(&["cert", "issue", "web"]);
    let after = leaf_of(&a.ok(&["cert", "show", "web"]));
    assert_ne!(after, first);
    let rotated = Instant::now();
    wait_for("the proxy on b serving a's rotation", PROPAGATION, || {
        (served_leaf(proxy.addr, "web.test")? == after).then_some(())
    });
    eprintln!(
        "served {:?} after the rotation on the other node",
        rotated.elapsed()
    );
}

fn signal(v: &VaultProc, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(v.child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal the vault");
}

#[test]
fn a_node_behind_an_etcd_compaction_lists_again_and_keeps_up() {
    let mut cluster = EtcdCluster::start(3);
    let prefix = "/vg-compact/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node_with(
        &cluster,
        prefix,
        "b",
        &a,
        Opts {
            metrics: true,
            ..Opts::default()
        },
    );
    let restarts = || {
        let text = crate::common::vault::http_get(b.metrics.expect("metrics"), "/metrics");
        crate::common::proxy::metric(&text, "vaultgate_vault_store_watch_restarts_total", &[])
    };
    a.ok(&["key", "create", "web", "--type", "ed25519"]);
    wait_primary(&b, "web", 1);
    let before = restarts();
    // b is frozen while every member restarts, so its watch is cut with
    // nothing pending; the changes after that are compacted away before
    // b wakes up to watch again from where it was.
    signal(&b, nix::sys::signal::Signal::SIGSTOP);
    for i in 0..3 {
        cluster.restart(i);
    }
    for _ in 0..3 {
        a.ok(&["key", "rotate", "web"]);
    }
    a.ok(&["key", "create", "later", "--type", "ed25519"]);
    cluster.compact_now();
    signal(&b, nix::sys::signal::Signal::SIGCONT);
    wait_primary(&b, "web", 4);
    wait_primary(&b, "later", 1);
    assert!(restarts() > before, "b caught up without listing again");
    // ... and follows the changes after it.
    a.ok(&["key", "rotate", "later"]);
    wait_primary(&b, "later", 2);
}

#[test]
fn signing_through_two_nodes_loses_nothing_while_the_etcd_leader_is_killed() {
    let mut cluster = EtcdCluster::start(3);
    let prefix = "/vg-leader/";
    let a = first_node(&cluster, prefix);
    let (b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    wait_primary(&b, "web", 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (signed, failed) = std::thread::scope(|s| {
        let load = |node: &VaultProc| {
            let socket = node.socket.clone();
            let stop = &stop;
            s.spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = crate::common::vault::run_cli(
                        std::process::Command::new(crate::common::bin()).args([
                            "key",
                            "sign",
                            "web",
                            "--scheme",
                            "ecdsa-p256-sha256",
                        ]),
                        &socket,
                        b"under a leader change",
                    );
                    if out.status.success() {
                        ok += 1;
                    } else {
                        failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
                (ok, failed)
            })
        };
        let la = load(&a);
        let lb = load(&b);
        // Signing goes on before, during and after the leader's death.
        let leader = cluster.leader();
        cluster.kill(leader);
        let killed = Instant::now();
        let version = wait_for(
            "a rotation after the leader died",
            Duration::from_secs(15),
            || {
                let out = a.cli(&["key", "rotate", "web"]);
                out.status
                    .success()
                    .then(|| primary(&a, "web").expect("web"))
            },
        );
        eprintln!(
            "changes resumed {:?} after the leader was killed",
            killed.elapsed()
        );
        wait_primary(&b, "web", version);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (oa, fa) = la.join().expect("a's load");
        let (ob, fb) = lb.join().expect("b's load");
        (oa + ob, [fa, fb].concat())
    });
    assert!(failed.is_empty(), "failed signatures: {failed:?}");
    assert!(signed > 10, "only {signed} signatures made");
}

#[test]
fn a_node_killed_amid_racing_rotations_leaves_consecutive_versions() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-kill/";
    let a = first_node(&cluster, prefix);
    let (mut b, _bd) = another_node(&cluster, prefix, "b", &a);
    a.ok(&["key", "create", "hot", "--type", "ed25519"]);
    wait_primary(&b, "hot", 1);
    let rotations = |node: &VaultProc, n: usize| {
        let socket = node.socket.clone();
        move || (0..n).filter(|_| rotate_on(&socket).is_ok()).count() as u64
    };
    let on_a = std::thread::spawn(rotations(&a, 12));
    let on_b = std::thread::spawn(rotations(&b, 40));
    // Killed once some of its rotations have landed.
    wait_for("rotations from b", Duration::from_secs(20), || {
        (primary(&a, "hot")? >= 6).then_some(())
    });
    b.kill9();
    let made_a = on_a.join().expect("a");
    let made_b = on_b.join().expect("b");
    assert_eq!(made_a, 12, "a's rotations must all succeed");
    let v = versions(&a, "hot");
    let newest = *v.last().expect("versions");
    assert_eq!(
        v,
        (1..=newest).collect::<Vec<u64>>(),
        "versions not consecutive"
    );
    // Every acknowledged rotation is there; one of b's may have committed
    // with its answer lost to the kill.
    let acknowledged = 1 + made_a + made_b;
    assert!(
        newest == acknowledged || newest == acknowledged + 1,
        "{newest} versions for {acknowledged} acknowledged"
    );
    assert_eq!(primary(&a, "hot"), Some(newest));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_state_dir_put_back_from_an_older_copy_is_found_by_the_anchor_in_etcd() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-anchor/";
    let a = first_node(&cluster, prefix);
    let (mut b, bd) = another_node(&cluster, prefix, "b", &a);
    b.ok(&["key", "create", "web", "--type", "ed25519"]);
    // A consistent copy of b's whole state dir: log, head, manifests.
    b.stop();
    let old = bd.path().join("old-state");
    copy_dir(&b.state, &old);
    let (child, metrics) = b.try_start_again().expect("b restarts");
    b.child = child;
    b.metrics = metrics;
    for _ in 0..3 {
        b.ok(&["key", "rotate", "web"]);
    }
    b.ok(&["audit", "verify"]);
    // The older copy put back while b is stopped: consistent in itself,
    // so only the anchor outside the node can tell.
    b.stop();
    std::fs::remove_dir_all(&b.state).expect("rm state");
    copy_dir(&old, &b.state);
    let (child, metrics) = b.try_start_again().expect("b restarts");
    b.child = child;
    b.metrics = metrics;
    let log = b.audit_log();
    assert!(
        log.lines()
            .any(|l| l.contains("audit-rolled-back") && l.contains("shared store")),
        "the put-back log was not found out: {log}"
    );
    // Its keys are still the cluster's newest.
    wait_primary(&b, "web", 4);
}

fn scheduler_gauge(v: &VaultProc) -> f64 {
    let text = crate::common::vault::http_get(v.metrics.expect("metrics"), "/metrics");
    crate::common::proxy::metric(&text, "vaultgate_vault_scheduler", &[])
}

fn scheduled_rotations(v: &VaultProc) -> usize {
    v.audit_log()
        .lines()
        .filter(|l| l.contains("\"op\":\"scheduled-rotate\"") && !l.contains("\"error\""))
        .count()
}

#[test]
fn one_node_runs_scheduled_rotations_and_another_takes_over_when_it_dies() {
    let cluster = EtcdCluster::start(3);
    let prefix = "/vg-sched/";
    let with_metrics = Opts {
        metrics: true,
        ..Opts::default()
    };
    let mut a = VaultProc::start_with(Opts {
        config: Some(store_config(&cluster, prefix, "a")),
        ..with_metrics.clone()
    });
    let (mut b, _bd) = another_node_with(&cluster, prefix, "b", &a, with_metrics);
    a.ok(&[
        "key",
        "create",
        "auto",
        "--type",
        "ed25519",
        "--rotate-every",
        "2s",
    ]);
    // Exactly one scheduler, and only it rotates.
    let leader = wait_for("one scheduler elected", Duration::from_secs(20), || match (
        scheduler_gauge(&a),
        scheduler_gauge(&b),
    ) {
        (x, y) if x == 1.0 && y == 0.0 => Some('a'),
        (x, y) if x == 0.0 && y == 1.0 => Some('b'),
        _ => None,
    });
    wait_for("two scheduled rotations", Duration::from_secs(20), || {
        (primary(&a, "auto")? >= 3).then_some(())
    });
    let (sched, other) = if leader == 'a' {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // A rotation is served before its record reaches the log.
    wait_for("the scheduler's records", Duration::from_secs(10), || {
        (scheduled_rotations(sched) >= 2).then_some(())
    });
    assert_eq!(scheduled_rotations(other), 0, "the other node rotated too");
    let versions_now = versions(other, "auto");
    assert_eq!(
        versions_now,
        (1..=*versions_now.last().expect("versions")).collect::<Vec<u64>>()
    );
    // The scheduler dies; the other is elected within its lease and
    // carries on.
    sched.kill9();
    let before = primary(other, "auto").expect("auto");
    wait_for("the survivor scheduling", Duration::from_secs(30), || {
        (scheduler_gauge(other) == 1.0 && primary(other, "auto")? > before + 1).then_some(())
    });
    wait_for("the survivor's records", Duration::from_secs(10), || {
        (scheduled_rotations(other) >= 1).then_some(())
    });
}
