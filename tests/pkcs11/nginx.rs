//! Debian 12's nginx 1.22, unmodified, with its keys in the vault: a root
//! master that loads them (start, `nginx -t`, reload) and four workers
//! that sign, each over its own vault connection under its own uid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::backends::free_port;
use crate::common::pkcs11::{
    self, audited_pids, cert_file, curl, engine_conf, own_vault_connections, provider_conf,
    provider_uri_pem, web_vault,
};
use crate::common::vault::VaultProc;
use crate::common::{require_root, require_tool, require_user, wait_for};

/// How nginx reaches the keys.
#[derive(Clone, Copy)]
pub enum Route {
    /// libp11's engine: `engine:pkcs11:<URI>`.
    Engine,
    /// pkcs11-provider: a PEM file wrapping the URI.
    Provider,
}

pub struct Nginx {
    pub dir: tempfile::TempDir,
    pub ec_port: u16,
    pub rsa_port: u16,
    conf: PathBuf,
    openssl_conf: PathBuf,
}

/// `/proc/PID/stat`'s parent pid and command name.
fn stat(pid: i32) -> Option<(i32, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// The live children of `pid` named `comm`.
pub fn children(pid: i32, comm: &str) -> BTreeSet<i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|c| stat(*c).is_some_and(|(ppid, name)| ppid == pid && name == comm))
        .collect()
}

impl Nginx {
    /// nginx as a daemon (as a service runs it), workers as `user`.
    pub fn start(v: &VaultProc, route: Route, user: &str) -> Nginx {
        require_root("nginx's master switches its workers to www-data");
        let nginx = require_tool("nginx", "nginx");
        let dir = pkcs11::server_dir("vg-p11-nginx-");
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs")).expect("mkdir");
        let (ec_port, rsa_port) = (free_port(), free_port());
        let (openssl_conf, ec_key, rsa_key) = match route {
            Route::Engine => (
                engine_conf(d),
                "\"engine:pkcs11:pkcs11:token=vaultgate;object=web;type=private\"".to_owned(),
                "\"engine:pkcs11:pkcs11:token=vaultgate;object=rsa;type=private\"".to_owned(),
            ),
            Route::Provider => {
                let conf = provider_conf(d);
                let mut keys = Vec::new();
                for name in ["web", "rsa"] {
                    let p = d.join(format!("{name}.uri.pem"));
                    let uri = format!("pkcs11:token=vaultgate;object={name};type=private");
                    std::fs::write(&p, provider_uri_pem(&uri)).expect("write uri pem");
                    keys.push(p.display().to_string());
                }
                (conf, keys[0].clone(), keys[1].clone())
            }
        };
        let ec_cert = cert_file(v, "web", d);
        let rsa_cert = cert_file(v, "rsa", d);
        let dd = d.display();
        // No `env VAULTGATE_SOCKET`: workers get an emptied environment,
        // and the module keeps what their master found.
        let conf = format!(
            r#"user {user};
worker_processes 4;
pid {dd}/nginx.pid;
error_log {dd}/logs/error.log notice;
env OPENSSL_CONF;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dd}/body;
  proxy_temp_path {dd}/proxy;
  fastcgi_temp_path {dd}/fastcgi;
  uwsgi_temp_path {dd}/uwsgi;
  scgi_temp_path {dd}/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
  ssl_session_cache off;
  ssl_session_tickets off;
  server {{
    listen 127.0.0.1:{ec_port} ssl;
    ssl_certificate {ec};
    ssl_certificate_key {ec_key};
    location / {{ return 200 "ec\n"; }}
  }}
  server {{
    listen 127.0.0.1:{rsa_port} ssl;
    ssl_certificate {rsa};
    ssl_certificate_key {rsa_key};
    location / {{ return 200 "rsa\n"; }}
  }}
}}
"#,
            ec = ec_cert.display(),
            rsa = rsa_cert.display(),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let n = Nginx {
            dir,
            ec_port,
            rsa_port,
            conf: conf_path,
            openssl_conf,
        };
        // `nginx -t` loads the keys too (a root process, like the master).
        n.run(v, &nginx, &["-t"]);
        n.run(v, &nginx, &[]);
        wait_for("nginx's four workers", Duration::from_secs(20), || {
            (n.workers().len() == 4).then_some(())
        });
        n
    }

    fn run(&self, v: &VaultProc, nginx: &Path, args: &[&str]) {
        let out = Command::new(nginx)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .env("OPENSSL_CONF", &self.openssl_conf)
            .env("VAULTGATE_SOCKET", &v.socket)
            .output()
            .expect("run nginx");
        assert!(
            out.status.success(),
            "nginx {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.error_log()
        );
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    pub fn master(&self) -> i32 {
        let pid = std::fs::read_to_string(self.dir.path().join("nginx.pid")).expect("nginx.pid");
        pid.trim().parse().expect("pid")
    }

    pub fn workers(&self) -> BTreeSet<i32> {
        children(self.master(), "nginx")
    }

    /// `nginx -s reload`, then waits until four workers run and none of
    /// those before does.
    pub fn reload(&self, v: &VaultProc) {
        let before = self.workers();
        self.run(v, &require_tool("nginx", "nginx"), &["-s", "reload"]);
        wait_for(
            "nginx's workers after reload",
            Duration::from_secs(20),
            || {
                let now = self.workers();
                (now.len() == 4 && now.is_disjoint(&before)).then_some(())
            },
        );
    }

    /// SIGKILLs one worker and waits for the master to replace it.
    pub fn kill_a_worker(&self) {
        let victim = *self.workers().iter().next().expect("a worker");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill worker");
        wait_for("a replacement worker", Duration::from_secs(20), || {
            let w = self.workers();
            (w.len() == 4 && !w.contains(&victim)).then_some(())
        });
    }

    pub fn ec_ca(&self) -> PathBuf {
        self.dir.path().join("web.crt")
    }

    pub fn rsa_ca(&self) -> PathBuf {
        self.dir.path().join("rsa.crt")
    }

    /// Both servers answer over TLS 1.2 and 1.3.
    pub fn assert_serving(&self) {
        for tls in ["1.2", "1.3"] {
            for (port, ca, body) in [
                (self.ec_port, self.ec_ca(), "ec\n"),
                (self.rsa_port, self.rsa_ca(), "rsa\n"),
            ] {
                let got = curl(port, &ca, tls).unwrap_or_else(|e| {
                    panic!("TLS {tls} to port {port}: {e}\n{}", self.error_log())
                });
                assert_eq!(got, body);
            }
        }
    }

    /// `n` full handshakes to each server, 8 at a time, so that the
    /// kernel spreads them over the workers.
    pub fn handshakes(&self, n: usize) {
        std::thread::scope(|s| {
            for t in 0..8 {
                s.spawn(move || {
                    for i in (t..n).step_by(8) {
                        let tls = if i % 2 == 0 { "1.3" } else { "1.2" };
                        for (port, ca) in
                            [(self.ec_port, self.ec_ca()), (self.rsa_port, self.rsa_ca())]
                        {
                            if let Err(e) = curl(port, &ca, tls) {
                                panic!("handshake {i} to {port}: {e}\n{}", self.error_log());
                            }
                        }
                    }
                });
            }
        });
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("nginx.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let workers = children(pid, "nginx");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let gone =
                    |p: &i32| !Path::new(&format!("/proc/{p}")).exists() || stat(*p).is_none();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline
                    && !(gone(&pid) && workers.iter().all(gone))
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The workers that signed: audited signatures under `uid`, every pid a
/// worker of this nginx and never the master.
fn signing_workers(v: &VaultProc, n: &Nginx, uid: u32) -> BTreeSet<i64> {
    let pids = pkcs11::wait_audited(v, "sign-digest", uid, Some("ok"));
    assert!(!pids.contains(&i64::from(n.master())), "the master signed");
    pids
}

fn serves_with_workers_as_www_data(route: Route) {
    let (www, _) = require_user("www-data");
    let v = web_vault();
    let n = Nginx::start(&v, route, "www-data");
    n.assert_serving();
    n.handshakes(32);

    // Signatures come from the workers, as www-data; the root master
    // only read the keys.
    let workers = n.workers();
    let signers = signing_workers(&v, &n, www);
    assert!(
        signers.iter().all(|p| workers.contains(&(*p as i32))),
        "signers {signers:?} are not all workers {workers:?}"
    );
    assert!(
        audited_pids(&v, "sign-digest", 0, None).is_empty(),
        "root signed"
    );
    assert!(
        !audited_pids(&v, "list", 0, Some("ok")).is_empty(),
        "root read no keys"
    );
    // Each worker that signed did so over its own one connection: none
    // shares the master's, inherited across the fork.
    let own = own_vault_connections(&v.socket);
    for p in &signers {
        assert_eq!(own.get(p), Some(&1), "worker {p}: {own:?}");
    }

    n.reload(&v);
    n.assert_serving();

    // A worker killed outright is replaced, and its successor signs.
    n.kill_a_worker();
    n.handshakes(16);
    n.assert_serving();
    let signers = signing_workers(&v, &n, www);
    let workers = n.workers();
    assert!(
        workers.iter().any(|w| signers.contains(&i64::from(*w))),
        "no current worker signed: {signers:?} {workers:?}"
    );
}

#[test]
fn nginx_engine_route_workers_sign_as_www_data_through_reload_and_sigkill() {
    serves_with_workers_as_www_data(Route::Engine);
}

#[test]
fn nginx_provider_route_workers_sign_as_www_data_through_reload_and_sigkill() {
    serves_with_workers_as_www_data(Route::Provider);
}

#[test]
fn a_rotated_key_keeps_signing_until_reload_then_the_new_version_signs() {
    let v = web_vault();
    let n = Nginx::start(&v, Route::Engine, "www-data");
    n.assert_serving();
    v.ok(&["key", "rotate", "web"]);
    // The running workers, and one started after the rotation, sign with
    // the version whose certificate nginx loaded.
    n.kill_a_worker();
    let seq = pkcs11::audit(&v).len();
    n.handshakes(16);
    // Every one of the 16 handshakes to the ECDSA server signed once.
    let versions = |from: usize, n: u64| -> BTreeSet<i64> {
        let records = pkcs11::audit_until(&v, "the handshakes' signatures", |r| {
            r.len() >= from
                && pkcs11::total(
                    r[from..]
                        .iter()
                        .filter(|r| r["op"] == "sign-digest" && r["key"] == "web"),
                ) >= n
        });
        records[from..]
            .iter()
            .filter(|r| r["op"] == "sign-digest" && r["key"] == "web")
            .filter_map(|r| r["version"].as_i64())
            .collect()
    };
    assert_eq!(versions(seq, 16), BTreeSet::from([1]));
    // The new version's certificate, and a reload: the master finds the
    // new version, the new workers sign with it.
    v.ok(&["cert", "issue", "web"]);
    cert_file(&v, "web", n.dir.path());
    n.reload(&v);
    let seq = pkcs11::audit(&v).len();
    n.handshakes(8);
    assert_eq!(versions(seq, 8), BTreeSet::from([2]));
    n.assert_serving();
}

#[test]
fn a_key_disabled_in_the_vault_stops_signing_in_the_running_nginx() {
    let v = web_vault();
    let n = Nginx::start(&v, Route::Engine, "www-data");
    n.assert_serving();
    v.ok(&["key", "disable", "web"]);
    for tls in ["1.2", "1.3"] {
        assert!(
            curl(n.ec_port, &n.ec_ca(), tls).is_err(),
            "signed with a disabled key"
        );
    }
    assert_eq!(curl(n.rsa_port, &n.rsa_ca(), "1.3").as_deref(), Ok("rsa\n"));
    pkcs11::audit_until(&v, "the refused signature", |records| {
        pkcs11::matching(
            records,
            "sign-digest",
            require_user("www-data").0,
            Some("error"),
        )
        .any(|r| r["key"] == "web")
    });
    v.ok(&["key", "enable", "web"]);
    n.assert_serving();
}

#[test]
fn workers_whose_uid_has_no_grant_cannot_sign_and_the_refusal_is_audited() {
    let (nobody, _) = require_user("nobody");
    // Only root is granted: the master loads the keys, the workers (as
    // nobody, in www-data's group to reach the socket) may not sign.
    let v = pkcs11::vault(&[]);
    for (name, t) in [("web", "ecdsa-p256"), ("rsa", "rsa-2048")] {
        v.ok(&["key", "create", name, "--type", t]);
        v.ok(&["cert", "issue", name, "--name", "localhost"]);
    }
    let n = Nginx::start(&v, Route::Engine, "nobody www-data");
    for tls in ["1.2", "1.3"] {
        assert!(
            curl(n.ec_port, &n.ec_ca(), tls).is_err(),
            "an ungranted worker signed"
        );
    }
    let denied = pkcs11::wait_audited(&v, "sign-digest", nobody, Some("denied"));
    let workers = n.workers();
    assert!(
        !denied.is_empty() && denied.iter().all(|p| workers.contains(&(*p as i32))),
        "denied {denied:?}, workers {workers:?}"
    );
    assert!(audited_pids(&v, "sign-digest", nobody, Some("ok")).is_empty());
}
