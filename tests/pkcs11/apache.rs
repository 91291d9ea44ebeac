//! Debian 12's Apache 2.4 (event MPM: many threads per child), unmodified,
//! with its keys in the vault: engine route (`SSLCryptoDevice pkcs11`)
//! and provider route (pkcs11-provider's URI file).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::backends::free_port;
use crate::common::pkcs11::{
    audited_pids, cert_file, curl, engine_conf, own_vault_connections, provider_conf,
    provider_uri_pem, wait_audited, web_vault,
};
use crate::common::vault::VaultProc;
use crate::common::{require_root, require_tool, require_user, wait_for};
use crate::nginx::{children, Route};

struct Apache {
    dir: tempfile::TempDir,
    child: Child,
    ec_port: u16,
    rsa_port: u16,
}

impl Apache {
    fn start(v: &VaultProc, route: Route) -> Apache {
        require_root("Apache's master switches its children to www-data");
        let httpd = require_tool("apache2", "apache2");
        let dir = crate::common::pkcs11::server_dir("vg-p11-apache-");
        let d = dir.path();
        for sub in ["logs", "run", "www"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::write(d.join("www/index.html"), "apache\n").expect("write index");
        let (ec_port, rsa_port) = (free_port(), free_port());
        let (openssl_conf, device, keys) = match route {
            // With the engine installed, Debian's mod_ssl hands `pkcs11:`
            // URIs to it; SSLCryptoDevice makes that explicit.
            Route::Engine => (
                engine_conf(d),
                "SSLCryptoDevice pkcs11",
                ["web", "rsa"]
                    .map(|k| format!("\"pkcs11:token=vaultgate;object={k};type=private\"")),
            ),
            Route::Provider => (
                provider_conf(d),
                "",
                ["web", "rsa"].map(|k| {
                    let p = d.join(format!("{k}.uri.pem"));
                    let uri = format!("pkcs11:token=vaultgate;object={k};type=private");
                    std::fs::write(&p, provider_uri_pem(&uri)).expect("write uri pem");
                    p.display().to_string()
                }),
            ),
        };
        let certs = ["web", "rsa"].map(|k| cert_file(v, k, d).display().to_string());
        let m = "/usr/lib/apache2/modules";
        let dd = d.display();
        let mut vhosts = String::new();
        for ((port, cert), key) in [ec_port, rsa_port].iter().zip(&certs).zip(&keys) {
            vhosts += &format!(
                "Listen 127.0.0.1:{port}\n<VirtualHost 127.0.0.1:{port}>\n  SSLEngine on\n  \
                 SSLCertificateFile {cert}\n  SSLCertificateKeyFile {key}\n</VirtualHost>\n"
            );
        }
        let conf = format!(
            r#"ServerRoot "{dd}"
ServerName localhost
PidFile {dd}/run/httpd.pid
DefaultRuntimeDir {dd}/run
ErrorLog {dd}/logs/error.log
LogLevel warn
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so
LoadModule ssl_module {m}/mod_ssl.so
LoadModule dir_module {m}/mod_dir.so
DirectoryIndex index.html
User www-data
Group www-data
StartServers 2
ServerLimit 4
ThreadsPerChild 16
MaxRequestWorkers 64
{device}
SSLSessionCache none
SSLSessionTickets off
SSLProtocol -all +TLSv1.2 +TLSv1.3
SSLCipherSuite ECDHE+AESGCM:ECDHE+CHACHA20
DocumentRoot "{dd}/www"
<Directory "{dd}/www">
  Require all granted
</Directory>
{vhosts}"#
        );
        std::fs::write(d.join("httpd.conf"), conf).expect("write httpd.conf");
        let child = Command::new(httpd)
            .arg("-f")
            .arg(d.join("httpd.conf"))
            .arg("-DFOREGROUND")
            .env("OPENSSL_CONF", openssl_conf)
            .env("VAULTGATE_SOCKET", &v.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apache2");
        let mut a = Apache {
            dir,
            child,
            ec_port,
            rsa_port,
        };
        wait_for("Apache's children", Duration::from_secs(20), || {
            if let Ok(Some(status)) = a.child.try_wait() {
                panic!("apache2 exited ({status}): {}", a.error_log());
            }
            (a.children().len() >= 2).then_some(())
        });
        a
    }

    fn master(&self) -> i32 {
        self.child.id() as i32
    }

    fn children(&self) -> BTreeSet<i32> {
        children(self.master(), "apache2")
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    fn assert_serving(&self) {
        for tls in ["1.2", "1.3"] {
            for (port, key) in [(self.ec_port, "web"), (self.rsa_port, "rsa")] {
                let ca = self.dir.path().join(format!("{key}.crt"));
                let got = curl(port, &ca, tls).unwrap_or_else(|e| {
                    panic!("TLS {tls} to {key} on {port}: {e}\n{}", self.error_log())
                });
                assert_eq!(got, "apache\n");
            }
        }
    }

    /// Many handshakes at once, so that the children's threads sign
    /// concurrently.
    fn handshakes(&self, n: usize) {
        std::thread::scope(|s| {
            for t in 0..8 {
                s.spawn(move || {
                    for _ in (t..n).step_by(8) {
                        self.assert_serving();
                    }
                });
            }
        });
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.master());
        let kids = self.children();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        wait_for("Apache's children to exit", Duration::from_secs(10), || {
            kids.iter()
                .all(|k| !std::path::Path::new(&format!("/proc/{k}")).exists())
                .then_some(())
        });
    }
}

fn serves_with_children_as_www_data(route: Route) {
    let (www, _) = require_user("www-data");
    let v = web_vault();
    let a = Apache::start(&v, route);
    a.handshakes(24);
    let kids = a.children();
    let signers = wait_audited(&v, "sign-digest", www, Some("ok"));
    assert!(
        signers.iter().all(|p| kids.contains(&(*p as i32))),
        "signers {signers:?}, children {kids:?}"
    );
    assert!(
        audited_pids(&v, "sign-digest", 0, None).is_empty(),
        "root signed"
    );
    // Threads of one child share its pooled connections; none is the
    // master's, inherited.
    let own = own_vault_connections(&v.socket);
    for p in &signers {
        assert!(own.get(p).is_some_and(|n| *n >= 1), "child {p}: {own:?}");
    }

    // A graceful restart (what `apachectl graceful` sends) re-reads the
    // keys in the master and starts new children.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.master()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("SIGUSR1");
    wait_for(
        "new children after graceful",
        Duration::from_secs(30),
        || {
            let now = a.children();
            (now.len() >= 2 && now.is_disjoint(&kids)).then_some(())
        },
    );
    a.assert_serving();

    let victim = *a.children().iter().next().expect("a child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    wait_for("the killed child to go", Duration::from_secs(10), || {
        (!a.children().contains(&victim)).then_some(())
    });
    a.handshakes(16);
}

#[test]
fn apache_engine_route_children_sign_as_www_data_through_graceful_and_sigkill() {
    serves_with_children_as_www_data(Route::Engine);
}

#[test]
fn apache_provider_route_children_sign_as_www_data_through_graceful_and_sigkill() {
    serves_with_children_as_www_data(Route::Provider);
}
