//! Hostile and broken callers: bad frames of every kind, a storm of them,
//! one uid holding idle connections, names and lifetimes past their
//! limits. Each is cut off or refused, audited and counted; the vault
//! stays up and everyone else is served. And group grants, which must
//! cover a group's members and no one else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use vaultgate::client::VaultClient;
use vaultgate::protocol::scheme;

use crate::common::vault::{http_get, run_cli, Opts, VaultProc};

fn metric(v: &VaultProc, name: &str, labels: &[&str]) -> f64 {
    let text = http_get(v.metrics.expect("vault metrics"), "/metrics");
    crate::common::proxy::metric(&text, name, labels)
}

/// The audit lines of `op` so far (flushed first).
fn audited(v: &VaultProc, op: &str) -> Vec<String> {
    v.ok(&["audit", "verify"]);
    let needle = format!("\"op\":\"{op}\"");
    v.audit_log()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// A frame header: version, opcode, flags, request id 9, body length.
fn header(version: u8, opcode: u8, flags: u16, len: u32) -> Vec<u8> {
    let mut h = vec![version, opcode];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&9u32.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// A frame with `body`.
fn frame(opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = header(1, opcode, 0, body.len() as u32);
    f.extend_from_slice(body);
    f
}

/// One field: tag, length, value.
fn field(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(value.len() as u32).to_be_bytes());
    f.extend_from_slice(value);
    f
}

#[test]
fn every_kind_of_bad_frame_is_cut_off_audited_and_counted() {
    let v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let key = field(0x01, b"web");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "unsupported protocol version 71",
        ),
        (
            "wrong version",
            header(2, 0x01, 0, 0),
            "unsupported protocol version 2",
        ),
        (
            "reserved flags",
            header(1, 0x01, 0x8000, 0),
            "reserved header flags",
        ),
        (
            "huge length",
            header(1, 0x02, 0, u32::MAX),
            "exceeds the 1048576-byte limit",
        ),
        ("unknown opcode", frame(0x77, &[]), "unknown opcode 0x77"),
        ("an answer's opcode", frame(0x82, &[]), "opcode 0x82"),
        (
            "truncated field",
            frame(0x13, &[0x01, 0, 0, 0, 9, b'w']),
            "runs past the end",
        ),
        (
            "unknown tag",
            frame(0x13, &[key.clone(), field(0x7f, b"")].concat()),
            "unknown field tag 0x7f",
        ),
        (
            "repeated tag",
            frame(0x13, &[key.clone(), key.clone()].concat()),
            "appears twice",
        ),
        (
            "tag not for this opcode",
            frame(0x13, &[key.clone(), field(0x09, &[0, 0, 0, 1])].concat()),
            "not allowed for this opcode",
        ),
        ("missing field", frame(0x02, &key), "is missing"),
        (
            "malformed value",
            frame(0x02, &[key.clone(), field(0x03, &[4])].concat()),
            "malformed value",
        ),
        (
            "closed mid-frame",
            header(1, 0x01, 0, 100)[..7].to_vec(),
            "closed inside a frame",
        ),
    ];
    let rt = crate::rt();
    let good = rt
        .block_on(VaultClient::connect(&v.socket))
        .expect("connect");
    for (i, (what, bytes, reason)) in cases.iter().enumerate() {
        let mut s = UnixStream::connect(&v.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        if *what == "closed mid-frame" {
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("{what}: the vault did not close the connection: {e}"));
        if *what != "closed mid-frame" {
            // An error answer (bad-request, code 1), then the end.
            assert!(
                answer.len() > 12 && answer[1] == 0xff,
                "{what}: no error frame: {answer:?}"
            );
            assert!(
                String::from_utf8_lossy(&answer).contains(reason),
                "{what}: the answer does not say {reason:?}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let lines = audited(&v, "bad-frame");
        assert_eq!(lines.len(), i + 1, "{what}: {lines:#?}");
        let line = &lines[i];
        assert!(
            line.contains(reason) && line.contains(&format!("\"pid\":{}", std::process::id())),
            "{what}: audited as {line}"
        );
        assert_eq!(
            metric(&v, "vaultgate_vault_bad_frames_total", &[]),
            (i + 1) as f64,
            "{what}"
        );
        assert_eq!(
            metric(
                &v,
                "vaultgate_vault_disconnects_total",
                &["reason=\"bad-frame\""]
            ),
            (i + 1) as f64,
            "{what}"
        );
        // The caller on its own connection is served throughout.
        rt.block_on(good.sign("web", None, scheme::ECDSA_P256_SHA256, what.as_bytes()))
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}

#[test]
fn a_storm_of_bad_callers_does_not_disturb_a_signing_caller() {
    let v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    const BAD: usize = 400;
    // Connected before the storm starts, so that it is a caller the
    // storm could disturb.
    let rt = crate::rt();
    let c = rt
        .block_on(VaultClient::connect(&v.socket))
        .expect("connect");
    let storm: Vec<_> = (0..4)
        .map(|t| {
            let socket = v.socket.clone();
            std::thread::spawn(move || {
                for i in 0..BAD / 4 {
                    let mut s = UnixStream::connect(&socket).expect("connect");
                    let junk: Vec<u8> = (0..64).map(|b| (b * 7 + i + t) as u8).collect();
                    let mut bad = vec![0xee];
                    bad.extend_from_slice(&junk);
                    let _ = s.write_all(&bad);
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            })
        })
        .collect();
    let signed = rt.block_on(async {
        let mut signed = 0;
        // At least one batch, however quickly the storm ends (on a loaded
        // machine it can finish before this caller is scheduled), then
        // batches for as long as it lasts.
        loop {
            let calls = (0..100u32).map(|i| {
                let c = c.clone();
                async move {
                    c.sign("web", None, scheme::ECDSA_P256_SHA256, &i.to_be_bytes())
                        .await
                }
            });
            for r in futures_util::future::join_all(calls).await {
                r.expect("a good caller refused during the storm");
                signed += 1;
            }
            if signed >= 20_000 || storm.iter().all(|t| t.is_finished()) {
                break;
            }
        }
        signed
    });
    for t in storm {
        t.join().expect("storm thread");
    }
    assert!(signed >= 100, "{signed}");
    assert_eq!(audited(&v, "bad-frame").len(), BAD);
    assert_eq!(
        metric(&v, "vaultgate_vault_bad_frames_total", &[]),
        BAD as f64
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"sign\"", "result=\"ok\""]
        ),
        signed as f64
    );
}

#[test]
fn one_uid_holding_idle_connections_cannot_starve_the_others() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs a client as another uid and must run as root (CI does)"
    );
    let v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some(
            "[vault]\nsocket_mode = \"0660\"\nsocket_group = \"65534\"\n\
             [[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"*\"]\nops = [\"all\"]\n\
             [[vault.grant]]\nprincipal = \"uid:65534\"\nkeys = [\"*\"]\nops = [\"list\"]\n"
                .into(),
        ),
        ..Opts::default()
    });
    let limit = vaultgate::protocol::MAX_CONNECTIONS_PER_UID;
    // This uid opens more connections than it may hold, and never speaks.
    let idle: Vec<UnixStream> = (0..limit + 20)
        .map(|_| UnixStream::connect(&v.socket).expect("connect"))
        .collect();
    // The ones past the limit are told why and closed at once (which ones
    // depends on the order the vault's threads take them in).
    for s in &idle {
        s.set_nonblocking(true).expect("nonblocking");
    }
    // What each has said so far, and whether it ended.
    let mut answers = vec![(Vec::new(), false); idle.len()];
    let refused = crate::common::wait_for(
        "the connections past the limit to be refused",
        Duration::from_secs(10),
        || {
            for (mut s, (said, ended)) in idle.iter().zip(answers.iter_mut()) {
                let mut buf = [0u8; 512];
                while !*ended {
                    match s.read(&mut buf) {
                        Ok(0) => *ended = true,
                        Ok(n) => said.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            let n = answers.iter().filter(|(_, ended)| *ended).count();
            (n >= 20).then_some(n)
        },
    );
    assert_eq!(refused, 20);
    for (said, _) in answers.iter().filter(|(_, ended)| *ended) {
        let said = String::from_utf8_lossy(said);
        assert!(
            said.contains("connections, the most one uid may"),
            "{said:?}"
        );
    }
    // Another uid is served meanwhile.
    let mut cmd = Command::new(crate::common::bin());
    cmd.args(["key", "list"])
        .uid(65534)
        .gid(65534)
        .current_dir("/");
    let out = run_cli(&mut cmd, &v.socket, b"");
    assert!(
        out.status.success(),
        "another uid was not served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(idle);
    // …and this uid again once it lets go.
    crate::common::wait_for(
        "the idle connections to be closed",
        Duration::from_secs(10),
        || v.cli(&["key", "list"]).status.success().then_some(()),
    );
    // Each refusal is in the log, past the first few a second folded into
    // a counted record.
    let lines = audited(&v, "connection-refused");
    assert!(lines[0].contains(&format!("\"uid\":{}", nix::unistd::geteuid())));
    crate::common::wait_for(
        "every refusal to be in the audit log",
        Duration::from_secs(10),
        || (audited_count(&v, "connection-refused", "denied") == refused as u64).then_some(()),
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_disconnects_total",
            &["reason=\"too-many-connections\""]
        ),
        refused as f64
    );
}

/// The audit records of `op` with `result`, each counted as the
/// occurrences it stands for (a counted summary says how many).
pub fn audited_count(v: &VaultProc, op: &str, result: &str) -> u64 {
    v.ok(&["audit", "verify"]);
    v.audit_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["op"] == op && r["result"] == result)
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

/// Sends `requests` pipelined on one raw connection (request id = index)
/// and reads the answers until all came or the vault hung up: each
/// answer's request id and opcode (`0x80 | op` or 0xff, an error), in the
/// order they came.
pub fn pipeline(
    socket: &std::path::Path,
    requests: &[vaultgate::protocol::Request],
) -> Vec<(u32, u8)> {
    use vaultgate::protocol::{frame, OP_ERROR};
    let mut wire = bytes::BytesMut::new();
    for (id, r) in (0u32..).zip(requests) {
        r.to_frame(id).encode(&mut wire).expect("encode");
    }
    let mut s = UnixStream::connect(socket).expect("connect");
    let writer = {
        let mut s = s.try_clone().expect("clone");
        // A cut connection stops taking requests: not the writer's error.
        std::thread::spawn(move || drop(s.write_all(&wire)))
    };
    let mut answers = Vec::new();
    let mut pending = bytes::BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // A request answered twice, or an answer for none, ends it too.
    while answers.len() < requests.len() + 1 {
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            // Closed with requests unread: what is queued is read first.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read answers: {e}"),
        };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(f) = frame::decode(&mut pending).expect("an answer frame") {
            assert!(
                f.opcode == OP_ERROR || f.opcode & 0x80 != 0,
                "not an answer: {:#x}",
                f.opcode
            );
            answers.push((f.request_id, f.opcode));
        }
        if answers.len() == requests.len() {
            break;
        }
    }
    writer.join().expect("writer");
    answers
}

pub fn sign_request(key: &str, i: u32) -> vaultgate::protocol::Request {
    vaultgate::protocol::Request::Sign {
        key: key.into(),
        version: None,
        scheme: scheme::ECDSA_P256_SHA256,
        message: i.to_be_bytes().to_vec(),
    }
}

#[test]
fn signatures_hidden_among_a_flood_of_refusals_are_all_audited() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs a client as another uid and must run as root (CI does)"
    );
    let me = nix::unistd::geteuid().as_raw();
    // The caller may sign with `web` only (and administer, to set up);
    // uid 65534 may list.
    let v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some(format!(
            "[vault]\nsocket_mode = \"0660\"\nsocket_group = \"65534\"\n\
             [[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"*\"]\nops = [\"admin\"]\n\
             [[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"web\"]\nops = [\"sign\"]\n\
             [[vault.grant]]\nprincipal = \"uid:65534\"\nkeys = [\"*\"]\nops = [\"list\"]\n"
        )),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    v.ok(&["key", "create", "other", "--type", "ecdsa-p256"]);
    // On each flooding connection one request in ten is a granted
    // signature, the rest refused: far more refusals than a connection
    // may send in a second.
    const FLOODS: usize = 4;
    const PER_FLOOD: u32 = 5_000;
    let flood: Vec<_> = (0..PER_FLOOD)
        .map(|i| sign_request(if i % 10 == 0 { "web" } else { "other" }, i))
        .collect();
    let rt = crate::rt();
    let (answered, signed) = rt.block_on(async {
        let floods = (0..FLOODS).map(|_| {
            let (socket, flood) = (v.socket.clone(), flood.clone());
            tokio::task::spawn_blocking(move || pipeline(&socket, &flood))
        });
        // Another connection of the same uid, signing meanwhile.
        let signer = async {
            let c = VaultClient::connect(&v.socket).await.expect("connect");
            let mut signed = 0u64;
            for i in 0..300u32 {
                c.sign("web", None, scheme::ECDSA_P256_SHA256, &i.to_be_bytes())
                    .await
                    .expect("a granted signature on another connection");
                signed += 1;
            }
            signed
        };
        let (answered, signed) = tokio::join!(futures_util::future::join_all(floods), signer);
        let answered: Vec<_> = answered.into_iter().map(|a| a.expect("flood")).collect();
        (answered, signed)
    });
    let (mut flood_signed, mut flood_denied) = (0u64, 0u64);
    for answers in &answered {
        // Cut: not every request was answered, and the last answer (id 0,
        // for no request) says why.
        assert!(
            answers.len() < PER_FLOOD as usize,
            "a flooding connection was not cut: {} answers",
            answers.len()
        );
        assert_eq!(answers.last(), Some(&(0, 0xff)), "the cut is told");
        for &(id, opcode) in &answers[..answers.len() - 1] {
            match (id % 10 == 0, opcode) {
                (true, 0x82) => flood_signed += 1,
                (false, 0xff) => flood_denied += 1,
                other => panic!("request {id}: answer {other:?}"),
            }
        }
    }
    // Every answered signature is audited, on the cut connections too,
    // and every answered refusal.
    assert_eq!(audited_count(&v, "sign", "ok"), signed + flood_signed);
    assert_eq!(audited_count(&v, "sign", "denied"), flood_denied);
    assert!(flood_signed > 0 && flood_denied > FLOODS as u64 * 1000);
    // Each cut is audited (past a few a second folded, vault-wide, like
    // refused connections) and counted.
    let cuts = audited(&v, "disconnect");
    assert!(
        cuts.iter()
            .all(|l| l.contains("refused requests within a second") && l.contains("\"denied\"")),
        "{cuts:#?}"
    );
    assert_eq!(audited_count(&v, "disconnect", "denied"), FLOODS as u64);
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_disconnects_total",
            &["reason=\"refusals\""]
        ),
        FLOODS as f64
    );
    // The same uid on a new connection, and another uid, are served.
    v.ok(&["key", "list"]);
    let mut cmd = Command::new(crate::common::bin());
    cmd.args(["key", "list"])
        .uid(65534)
        .gid(65534)
        .current_dir("/");
    let out = run_cli(&mut cmd, &v.socket, b"");
    assert!(
        out.status.success(),
        "another uid was not served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn names_and_lifetimes_past_their_limits_are_refused_and_audited_briefly() {
    let v = VaultProc::start();
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    // A 100 KB key name: refused before any grant check, and its record
    // does not carry it.
    let long = "a".repeat(100_000);
    let e = crate::rt()
        .block_on(async {
            let c = VaultClient::connect(&v.socket).await.expect("connect");
            c.sign(&long, None, scheme::ECDSA_P256_SHA256, b"m").await
        })
        .expect_err("a 100 KB key name");
    assert_eq!(
        e.code(),
        Some(vaultgate::protocol::ErrorCode::InvalidInput),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("a key name of 100000 bytes: names are 1-64 bytes"),
        "{e}"
    );
    // A lifetime past what a certificate can carry: an answer, not a
    // worker's panic, and audited.
    let err = v.err(&[
        "cert",
        "issue",
        "web",
        "--name",
        "a.example",
        "--days",
        "3000000",
    ]);
    assert!(
        err.contains("a certificate lifetime of 3000000 days: at most 36500"),
        "{err}"
    );
    v.ok(&[
        "cert",
        "issue",
        "web",
        "--name",
        "a.example",
        "--days",
        "36500",
    ]);
    v.ok(&["audit", "verify"]);
    let log = v.audit_log();
    assert!(
        log.lines().all(|l| l.len() < 1024),
        "an audit line over 1 KiB"
    );
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"op\":\"sign\"") && l.contains("\"result\":\"error\""))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(!refused[0].contains("\"key\""), "{}", refused[0]);
    let issued: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"op\":\"cert-issue\""))
        .collect();
    assert_eq!(issued.len(), 2, "{issued:#?}");
    assert!(issued[0].contains("\"result\":\"error\""), "{}", issued[0]);
    assert!(issued[1].contains("\"result\":\"ok\""), "{}", issued[1]);
}

#[test]
fn a_group_grant_covers_the_groups_members() {
    crate::common::require_root("this test runs a client as another uid");
    let setpriv = crate::common::require_tool("setpriv", "util-linux");
    let v = VaultProc::start_with(Opts {
        config: Some(
            "[vault]\nsocket_mode = \"0660\"\nsocket_group = \"65534\"\n\
             [[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"*\"]\nops = [\"all\"]\n\
             [[vault.grant]]\nprincipal = \"gid:4242\"\nkeys = [\"*\"]\nops = [\"list\"]\n"
                .into(),
        ),
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    // uid 65534, gid 65534, and the supplementary groups given.
    let list_as = |groups: &str| {
        let mut cmd = Command::new(&setpriv);
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            &format!("--groups={groups}"),
        ])
        .arg(crate::common::bin())
        .args(["key", "list"])
        .current_dir("/");
        run_cli(&mut cmd, &v.socket, b"")
    };
    let member = list_as("100,4242");
    assert!(
        member.status.success(),
        "a member of group 4242 was refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert!(String::from_utf8_lossy(&member.stdout).contains("web"));
    let outsider = list_as("100,4243");
    assert!(!outsider.status.success(), "a non-member was served");
    let lines = audited(&v, "list");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"uid\":65534") && l.contains("\"result\":\"denied\"")),
        "{lines:#?}"
    );
}

/// A backup-import request with a passphrase that opens nothing: what a
/// caller sends to make the vault stretch passphrases (argon2id, 19 MiB).
/// A well-formed empty backup, so the stretch is reached; each `n` its own
/// salt, so no stretch is the vault's cached last one.
fn stretch_request(n: u32) -> vaultgate::protocol::Request {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut salt = vec![7; 16];
    salt[..4].copy_from_slice(&n.to_be_bytes());
    let blob = serde_json::json!({
        "format": 2, "salt": b64(&salt), "created": 1, "count": 0,
        "check": b64(&[0; 32]), "keys": [], "tag": b64(&[0; 32]),
    });
    vaultgate::protocol::Request::BackupImport {
        blob: blob.to_string().into_bytes(),
        passphrase: zeroize::Zeroizing::new(b"not the passphrase".to_vec()),
        skip_existing: false,
    }
}

/// The vault's resident memory, MiB.
fn rss_mib(v: &VaultProc) -> u64 {
    let pid = i32::try_from(v.child.id()).expect("pid");
    crate::common::raw::rss_kib(pid) / 1024
}

#[test]
fn a_caller_without_a_backup_import_grant_never_has_a_passphrase_stretched() {
    let me = nix::unistd::geteuid().as_raw();
    let v = VaultProc::start_with(Opts {
        config: Some(format!(
            "[vault]\n[[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"*\"]\n\
             ops = [\"create\", \"sign\", \"list\", \"audit-verify\"]\n"
        )),
        ..Opts::default()
    });
    let before = rss_mib(&v);
    // 16 connections with 8 requests in flight each.
    let answers = crate::rt().block_on(async {
        let conns = (0..16).map(|i| {
            let socket = v.socket.clone();
            async move {
                let c = VaultClient::connect(&socket).await.expect("connect");
                let calls = (0..8).map(|j| {
                    let c = c.clone();
                    async move { c.call(&stretch_request(i * 8 + j)).await }
                });
                futures_util::future::join_all(calls).await
            }
        });
        futures_util::future::join_all(conns).await
    });
    for r in answers.into_iter().flatten() {
        let e = r.expect_err("an ungranted backup import");
        assert_eq!(
            e.code(),
            Some(vaultgate::protocol::ErrorCode::Denied),
            "{e}"
        );
    }
    assert_eq!(audited_count(&v, "backup-import", "denied"), 128);
    let after = rss_mib(&v);
    assert!(
        after < before + 32,
        "the vault grew from {before} to {after} MiB for refused requests"
    );
}

#[test]
fn passphrase_stretches_run_one_at_a_time_and_are_dropped_when_their_caller_leaves() {
    let v = VaultProc::start_with(Opts {
        metrics: true,
        ..Opts::default()
    });
    v.ok(&["key", "create", "web", "--type", "ecdsa-p256"]);
    let before = rss_mib(&v);
    // 16 connections send 12 requests each (8 may run at once per
    // connection) and leave without reading an answer.
    let conns: Vec<UnixStream> = (0..16u32)
        .map(|i| {
            let mut frames = bytes::BytesMut::new();
            for id in 1..=12 {
                stretch_request(i * 12 + id)
                    .to_frame(id)
                    .encode(&mut frames)
                    .expect("encode");
            }
            let mut s = UnixStream::connect(&v.socket).expect("connect");
            s.write_all(&frames).expect("send");
            s
        })
        .collect();
    let ran = || {
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"backup-import\"", "result=\"error\""],
        )
    };
    let abandoned = || {
        metric(
            &v,
            "vaultgate_vault_requests_total",
            &["op=\"backup-import\"", "result=\"abandoned\""],
        )
    };
    crate::common::wait_for("the first stretch to run", Duration::from_secs(30), || {
        (ran() >= 1.0).then_some(())
    });
    drop(conns);
    // Meanwhile, and after, one stretch at a time is all the memory taken.
    let mut peak = 0;
    let (ran, abandoned) = crate::common::wait_for(
        "every request to have run or been dropped",
        Duration::from_secs(60),
        || {
            peak = peak.max(rss_mib(&v));
            let (r, a) = (ran(), abandoned());
            (r + a >= 128.0).then_some((r, a))
        },
    );
    eprintln!("{ran} stretches ran, {abandoned} dropped; RSS {before} MiB, peak {peak}");
    assert!(
        abandoned > 0.0 && ran < 64.0,
        "{ran} stretches ran for callers gone, {abandoned} dropped"
    );
    assert!(
        peak < before + 100,
        "the vault grew from {before} to {peak} MiB"
    );
    let after = rss_mib(&v);
    assert!(
        after < before + 40,
        "the vault kept {after} MiB after the flood (from {before})"
    );
    // Everyone else was and is served.
    v.ok(&["key", "rotate", "web"]);
    assert!(audited_count(&v, "backup-import", "error") as f64 >= ran);
}

/// Opens `n` connections to `socket` as uid 65533 (whom no grant names)
/// and reports "connected", then, one line each, once all have ended: how many the vault
/// refused (with what it said), then how many it closed without a word.
const STRANGER: &str = r#"
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    conns.append(s)
print("connected", flush=True)
import select
deadline = time.time() + 30
said = {}
while len(said) < n and time.time() < deadline:
    ready, _, _ = select.select([s for s in conns if s not in said], [], [], 1.0)
    for s in ready:
        data = s.recv(4096)
        said[s] = data
refused = [d for d in said.values() if d]
print(len(refused), refused[0][12:].decode("latin-1", "replace").replace("\n", " ") if refused else "", flush=True)
print(len(said) - len(refused), flush=True)
"#;

#[test]
fn callers_no_grant_names_keep_few_connections_and_none_idle() {
    let (setpriv, python) = VaultProc::other_uid_tools();
    let v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some(
            "[vault]\nsocket_mode = \"0660\"\nsocket_group = \"65534\"\nclient_read_timeout = \"2s\"\n\
             [[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"*\"]\nops = [\"all\"]\n\
             [[vault.grant]]\nprincipal = \"uid:65534\"\nkeys = [\"*\"]\nops = [\"list\"]\n"
                .into(),
        ),
        ..Opts::default()
    });
    let share = 64; // the share callers no grant names have together
    let mut stranger = Command::new(&setpriv)
        .args(["--reuid=65533", "--regid=65534", "--clear-groups", "--"])
        .arg(python)
        .args(["-c", STRANGER])
        .arg(&v.socket)
        .arg((share + 10).to_string())
        .current_dir("/")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the stranger");
    let mut lines = std::io::BufReader::new(stranger.stdout.take().expect("stdout"));
    let mut connected = String::new();
    std::io::BufRead::read_line(&mut lines, &mut connected).expect("stranger's report");
    assert_eq!(connected.trim(), "connected");
    // While the stranger holds its share, a granted caller (another uid)
    // is served…
    let mut cmd = Command::new(crate::common::bin());
    cmd.args(["key", "list"])
        .uid(65534)
        .gid(65534)
        .current_dir("/");
    let out = run_cli(&mut cmd, &v.socket, b"");
    assert!(
        out.status.success(),
        "a granted uid was not served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …those past the share were refused at once, saying why…
    let mut first = String::new();
    std::io::BufRead::read_line(&mut lines, &mut first).expect("stranger's report");
    assert!(
        first.starts_with("10 ") && first.contains("callers no grant names hold"),
        "{first:?}"
    );
    // …and the rest, idle, are closed after the read timeout.
    let mut second = String::new();
    std::io::BufRead::read_line(&mut lines, &mut second).expect("stranger's report");
    assert_eq!(second.trim(), share.to_string());
    assert!(stranger.wait().expect("stranger").success());
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_disconnects_total",
            &["reason=\"idle\""]
        ),
        share as f64
    );
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_disconnects_total",
            &["reason=\"no-grant-full\""]
        ),
        10.0
    );
    let cut = audited(&v, "disconnect");
    assert!(
        cut.iter()
            .filter(|l| l.contains("no request within 2s from a caller no grant names"))
            .count()
            == share,
        "{cut:#?}"
    );
}

#[test]
fn a_request_sent_slowly_is_cut_off_and_holds_no_memory_meanwhile() {
    let v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some("[vault]\nclient_read_timeout = \"2s\"\n".into()),
        ..Opts::default()
    });
    // 200 connections each announce a 1 MiB frame and send 10 bytes of it.
    let slow: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&v.socket).expect("connect");
            let mut f = header(1, 0x10, 0, (1 << 20) - 1);
            f.extend_from_slice(&[0u8; 10]);
            s.write_all(&f).expect("send");
            s
        })
        .collect();
    // A normal caller beside them is served, and the vault did not buffer
    // 200 MiB for them.
    v.ok(&["key", "list"]);
    assert!(rss_mib(&v) < 150, "vault RSS {} MiB", rss_mib(&v));
    // Each is cut once the read timeout passes.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut rest = Vec::new();
        assert!(
            s.read_to_end(&mut rest).is_ok(),
            "a slow request was not cut off"
        );
    }
    assert_eq!(
        metric(
            &v,
            "vaultgate_vault_disconnects_total",
            &["reason=\"slow-request\""]
        ),
        200.0
    );
    let cut = audited(&v, "disconnect");
    assert_eq!(
        cut.iter()
            .filter(|l| l.contains("a request begun was not complete within 2s"))
            .count(),
        200,
        "{:#?}",
        &cut[..cut.len().min(3)]
    );
}

#[test]
fn admin_on_a_ca_key_is_not_issuing_with_it() {
    let grants = |extra: &str| {
        format!(
            "[vault]\n[[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"app-*\"]\nops = [\"admin\", \"list\"]\n{extra}"
        )
    };
    let mut v = VaultProc::start_with(Opts {
        config: Some(grants("")),
        ..Opts::default()
    });
    let config = v.config.clone().expect("config");
    v.ok(&["key", "create", "app-ca", "--type", "ecdsa-p256"]);
    // a self-signed CA names only itself: admin on it is enough
    v.ok(&[
        "cert",
        "issue",
        "app-ca",
        "--is-ca",
        "--common-name",
        "app CA",
    ]);
    v.ok(&["key", "create", "app-web", "--type", "ecdsa-p256"]);
    let leaf = [
        "cert",
        "issue",
        "app-web",
        "--ca",
        "app-ca",
        "--name",
        "www.victim.example",
    ];
    let err = v.err(&leaf);
    assert!(err.contains("ca-issue") && err.contains("app-ca"), "{err}");
    let refused = audited(&v, "cert-issue");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("\"ca\":\"app-ca\"") && l.contains("denied")),
        "{refused:#?}"
    );

    // `ca-issue` signs leaves, not CA certificates
    let ca_issue =
        "[[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"app-ca\"]\nops = [\"ca-issue\"]\n";
    std::fs::write(&config, grants(ca_issue)).expect("config");
    v.restart();
    v.ok(&leaf);
    v.ok(&["key", "create", "app-int", "--type", "ecdsa-p256"]);
    let sub_ca = [
        "cert",
        "issue",
        "app-int",
        "--ca",
        "app-ca",
        "--is-ca",
        "--common-name",
        "sub",
    ];
    let err = v.err(&sub_ca);
    assert!(err.contains("ca-issue-ca"), "{err}");

    // `ca-issue-ca`: the intermediate gets a path length below its issuer's
    let both = "[[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"app-*\"]\nops = [\"ca-issue\", \"ca-issue-ca\"]\n";
    std::fs::write(&config, grants(both)).expect("config");
    v.restart();
    v.ok(&sub_ca);
    let pem = v.ok(&["cert", "show", "app-int"]);
    let mut openssl = Command::new(crate::common::require_tool("openssl", "openssl"))
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    openssl
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("pem");
    let text =
        String::from_utf8_lossy(&openssl.wait_with_output().expect("openssl").stdout).into_owned();
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    v.ok(&["key", "create", "app-deeper", "--type", "ecdsa-p256"]);
    let err = v.err(&[
        "cert",
        "issue",
        "app-deeper",
        "--ca",
        "app-int",
        "--is-ca",
        "--common-name",
        "deeper",
    ]);
    assert!(err.contains("path"), "{err}");
}

#[test]
fn a_flood_of_refusals_is_folded_into_counted_records_not_written_one_by_one() {
    let me = nix::unistd::geteuid().as_raw();
    let v = VaultProc::start_with(Opts {
        metrics: true,
        config: Some(format!(
            "[vault]\n[[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"*\"]\nops = [\"admin\"]\n\
             [[vault.grant]]\nprincipal = \"uid:{me}\"\nkeys = [\"web\"]\nops = [\"sign\"]\n"
        )),
        ..Opts::default()
    });
    v.ok(&["key", "create", "other", "--type", "ecdsa-p256"]);
    v.ok(&["audit", "verify"]);
    let before = v.audit_log().len();
    // Raw pipelined refusals, as fast as the vault answers them: as many
    // as a connection may send within a second without being cut.
    const N: u32 = 1000;
    let flood: Vec<_> = (0..N).map(|i| sign_request("other", i)).collect();
    // Every request is answered.
    assert_eq!(pipeline(&v.socket, &flood).len(), N as usize);
    // Each refusal is counted, in the metrics and in the log…
    assert_eq!(
        metric(&v, "vaultgate_vault_denied_total", &["op=\"sign\""]),
        f64::from(N)
    );
    assert_eq!(audited_count(&v, "sign", "denied"), u64::from(N));
    // …but the log holds a few records a second, not one per refusal.
    let log = v.audit_log();
    let grown = log.len() - before;
    let records = log[before..].lines().count();
    eprintln!("{N} refusals: {records} records, {grown} bytes of audit log");
    assert!(
        records <= 12 && grown < 4 << 10,
        "{grown} bytes of audit log for {N} refusals ({records} records)"
    );
}
