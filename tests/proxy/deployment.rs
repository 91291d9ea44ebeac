//! The production deployment as shipped: the vault from
//! `config/vault-only.toml` and the proxy from `config/proxy-only.toml`,
//! each as its own user, with nothing changed but paths and ports. An
//! operator (root) makes the keys and certificates with the commands
//! docs/deployment.md gives; the proxy serves them, follows a rotation,
//! and both reload with `vaultgate reload`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::backends::Nginx;
use crate::common::proxy::ProxyProc;
use crate::common::{bin, require_root, require_tool, require_user, wait_for};

/// The shipped file with `from → to` substitutions, each of which must
/// apply (so the test breaks if the shipped file changes under it).
fn shipped(name: &str, subs: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let mut text = std::fs::read_to_string(&path).expect("shipped config");
    for (from, to) in subs {
        assert!(text.contains(from), "{name} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// `user` must be a member of `group` (the vault socket's group).
fn require_member(user: &str, group: &str) {
    let ok = Command::new("id")
        .args(["-nG", user])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|g| g == group)
        });
    assert!(
        ok,
        "user `{user}` must be in group `{group}` for this test: `usermod -aG {group} {user}` \
         (scripts/test.sh does this, as docs/deployment.md says to)"
    );
}

struct Vault {
    child: Child,
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vaultgate vault --config FILE`, as an operator starts it, until ready.
fn start_vault(config: &Path, log: &Path) -> Vault {
    let mut child = Command::new(bin())
        .args(["vault", "--ready-line", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn vault");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("ready "));
    assert!(
        ready,
        "the vault did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    Vault { child }
}

/// An admin command as root, against the vault's socket.
fn admin(socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .env("VAULTGATE_SOCKET", socket)
        .output()
        .expect("vaultgate");
    assert!(
        out.status.success(),
        "vaultgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The leaf certificate (PEM) a new TLS connection is served for `name`
/// with the signature algorithms `sigalgs`.
fn served_leaf(addr: std::net::SocketAddr, name: &str, ca: &Path, sigalgs: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
        ])
        .args(["-sigalgs", sigalgs, "-verify_return_error", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    first_pem(&text)
}

fn first_pem(text: &str) -> String {
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("its end")
        + start
        + "-----END CERTIFICATE-----".len();
    text[start..end].to_owned()
}

#[test]
fn the_shipped_production_configs_work_as_shipped() {
    require_root("the vault and the proxy start as root and switch to their users");
    require_tool("openssl", "openssl");
    let (_, _) = require_user("vaultgate");
    let (proxy_uid, _) = require_user("vaultgate-proxy");
    require_member("vaultgate-proxy", "vaultgate");
    let dir = tempfile::Builder::new()
        .prefix("vg-deploy-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let show = |path: PathBuf| path.display().to_string();
    let socket = p("run/vault.sock");
    let certs = p("certs");
    std::fs::create_dir(&certs).unwrap();

    let vault_cfg = p("vault.toml");
    std::fs::write(
        &vault_cfg,
        shipped(
            "vault-only.toml",
            &[
                ("/run/vaultgate/vault.sock", show(socket.clone())),
                ("/var/lib/vaultgate", show(p("state"))),
                ("/run/vaultgate/vault.pid", show(p("run/vault.pid"))),
            ],
        ),
    )
    .unwrap();
    let _vault = start_vault(&vault_cfg, &p("vault.log"));

    // The operator's set-up, as docs/deployment.md gives it: a CA in the
    // vault, the two TLS keys, their certificates bound in the vault and
    // written where the proxy's config names them.
    admin(&socket, &["key", "create", "ca", "--type", "ecdsa-p256"]);
    admin(
        &socket,
        &[
            "cert",
            "issue",
            "ca",
            "--is-ca",
            "--common-name",
            "Example CA",
        ],
    );
    let ca_pem = p("ca.pem");
    std::fs::write(&ca_pem, admin(&socket, &["cert", "show", "ca"]).stdout).unwrap();
    for (key, kind) in [("www-ecdsa", "ecdsa-p256"), ("www-rsa", "rsa-2048")] {
        admin(&socket, &["key", "create", key, "--type", kind]);
        admin(
            &socket,
            &[
                "cert",
                "issue",
                key,
                "--ca",
                "ca",
                "--name",
                "www.example.com",
                "--name",
                "example.com",
            ],
        );
        let pem = admin(&socket, &["cert", "show", key]).stdout;
        std::fs::write(certs.join(format!("{key}.pem")), pem).unwrap();
    }

    let (n1, n2) = (Nginx::start("n1"), Nginx::start("n2"));
    let proxy_cfg = p("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        shipped(
            "proxy-only.toml",
            &[
                ("\"0.0.0.0:443\"", "\"127.0.0.1:0\"".into()),
                ("\"127.0.0.1:9102\"", "\"127.0.0.1:0\"".into()),
                (
                    "/run/vaultgate-proxy/proxy.pid",
                    show(p("run-proxy/proxy.pid")),
                ),
                ("/run/vaultgate/vault.sock", show(socket.clone())),
                ("/etc/vaultgate/certs/", format!("{}/", certs.display())),
                ("10.0.0.11:8080", n1.addr.to_string()),
                ("10.0.0.12:8080", n2.addr.to_string()),
            ],
        ),
    )
    .unwrap();
    let proxy = ProxyProc::spawn(dir.path(), &["proxy", "--config", &show(proxy_cfg.clone())]);

    // It serves both certificates, each to the clients that ask for its
    // algorithm, through the backends (whose health check passes).
    let ecdsa = "ECDSA+SHA256";
    let rsa = "rsa_pss_rsae_sha256";
    let bound = |key: &str| {
        first_pem(&String::from_utf8_lossy(
            &admin(&socket, &["cert", "show", key]).stdout,
        ))
    };
    assert_eq!(
        served_leaf(proxy.addr, "www.example.com", &ca_pem, ecdsa),
        bound("www-ecdsa")
    );
    assert_eq!(
        served_leaf(proxy.addr, "www.example.com", &ca_pem, rsa),
        bound("www-rsa")
    );
    let resolve = format!("www.example.com:{}:127.0.0.1", proxy.addr.port());
    let url = format!("https://www.example.com:{}/whoami", proxy.addr.port());
    wait_for(
        "a backend to answer through the proxy",
        Duration::from_secs(20),
        || {
            let out = Command::new("curl")
                .args([
                    "-sf",
                    "--cacert",
                    &show(ca_pem.clone()),
                    "--resolve",
                    &resolve,
                    &url,
                ])
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            (body == "n1\n" || body == "n2\n").then_some(())
        },
    );

    // A rotation and a new certificate, in the vault only: the proxy
    // follows by itself, with no file rewritten and no signal.
    let before = bound("www-ecdsa");
    admin(&socket, &["key", "rotate", "www-ecdsa"]);
    admin(&socket, &["cert", "issue", "www-ecdsa", "--ca", "ca"]);
    let after = bound("www-ecdsa");
    assert_ne!(before, after);
    wait_for(
        "the rotated certificate to be served",
        Duration::from_secs(10),
        || (served_leaf(proxy.addr, "www.example.com", &ca_pem, ecdsa) == after).then_some(()),
    );

    // Both reload through their pid files and report how it went.
    for cfg in [&proxy_cfg, &vault_cfg] {
        let out = Command::new(bin())
            .args(["reload", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("reloaded its config"),
            "reload {}: {}{}",
            cfg.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        served_leaf(proxy.addr, "www.example.com", &ca_pem, ecdsa),
        after
    );

    // The vault saw the proxy's signatures as the proxy's user.
    let _ = admin(&socket, &["audit", "verify"]); // flushes the log
    let audit = std::fs::read_to_string(p("state/audit.log")).expect("audit log");
    let signed_by_proxy = audit
        .lines()
        .any(|l| l.contains(&format!("\"uid\":{proxy_uid},")) && l.contains("\"op\":\"sign\""));
    assert!(
        signed_by_proxy,
        "no signature audited under the proxy's uid"
    );
}
