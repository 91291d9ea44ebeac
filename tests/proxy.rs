//! Integration tests of `vaultgate proxy`, `run` and `check`: real vault
//! and proxy processes, real nginx and Apache backends, curl and rustls
//! clients.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

mod common;

#[path = "proxy/check.rs"]
mod check;
#[path = "proxy/deployment.rs"]
mod deployment;
#[path = "proxy/failures.rs"]
mod failures;
#[path = "proxy/faults.rs"]
mod faults;
#[path = "proxy/floods.rs"]
mod floods;
#[path = "proxy/forwarding.rs"]
mod forwarding;
#[path = "proxy/h2.rs"]
mod h2;
#[path = "proxy/http1.rs"]
mod http1;
#[path = "proxy/isolation.rs"]
mod isolation;
#[path = "proxy/logs.rs"]
mod logs;
#[path = "proxy/metrics.rs"]
mod metrics;
#[path = "proxy/mtls.rs"]
mod mtls;
#[path = "proxy/notify.rs"]
mod notify;
#[path = "proxy/origin.rs"]
mod origin;
#[path = "proxy/privdrop.rs"]
mod privdrop;
#[path = "proxy/reload.rs"]
mod reload;
#[path = "proxy/routes.rs"]
mod routes;
#[path = "proxy/run.rs"]
mod run;
#[path = "proxy/scanners.rs"]
mod scanners;
#[path = "proxy/smuggling.rs"]
mod smuggling;
#[path = "proxy/status.rs"]
mod status;
#[path = "proxy/tls.rs"]
mod tls;
#[path = "proxy/under_load.rs"]
mod under_load;

use std::path::{Path, PathBuf};

use common::proxy::TestCa;
use common::vault::{Opts, VaultProc};

/// A vault (with metrics), a test CA and a temp dir for configs and certs.
pub struct Setup {
    pub vault: VaultProc,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn start() -> Setup {
        let vault = VaultProc::start_with(Opts {
            metrics: true,
            ..Opts::default()
        });
        let dir = tempfile::Builder::new()
            .prefix("vg-proxy-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let ca = TestCa::new(dir.path());
        Setup { vault, ca, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A vault key `name` with a certificate for `names`; returns the cert path.
    pub fn vault_cert(&self, name: &str, key_type: &str, names: &[&str]) -> PathBuf {
        let out = self.path(&format!("{name}.pem"));
        self.ca.vault_cert(&self.vault, name, key_type, names, &out);
        out
    }

    /// `vaultgate proxy` with one certificate for `localhost` whose key
    /// (`tls-local`, ECDSA P-256) is in the vault, in front of `backends`;
    /// `extra` and `upstream_extra` as for [`common::proxy::config`].
    pub fn localhost_proxy(
        &self,
        backends: &[std::net::SocketAddr],
        extra: &str,
        upstream_extra: &str,
    ) -> common::proxy::ProxyProc {
        let cert = self.vault_cert("tls-local", "ecdsa-p256", &["localhost"]);
        let cfg = common::proxy::config(
            &self.vault.socket,
            &[(&["localhost"], &cert, "vault:tls-local")],
            backends,
            extra,
            upstream_extra,
        );
        common::proxy::ProxyProc::start(self.dir.path(), &cfg)
    }

    /// A second vault holding the same key `ha` as this one (imported, as
    /// after a backup restore), and `vaultgate proxy` listing both vaults
    /// for a `localhost` certificate of that key, in front of `backends`.
    pub fn two_vault_proxy(
        &self,
        backends: &[std::net::SocketAddr],
        extra: &str,
    ) -> (VaultProc, common::proxy::ProxyProc) {
        let standby = VaultProc::start();
        let (cert, key_file) = (self.path("ha.pem"), self.path("ha.key"));
        self.ca.file_cert(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &["localhost"],
            &cert,
            &key_file,
        );
        let key_arg = key_file.to_str().expect("utf-8");
        self.vault.ok(&["key", "import", "ha", "--pem", key_arg]);
        standby.ok(&["key", "import", "ha", "--pem", key_arg]);
        let sockets = format!(
            "vault_sockets = [\"{}\", \"{}\"]\n{extra}",
            self.vault.socket.display(),
            standby.socket.display()
        );
        let cfg = common::proxy::config(
            &self.vault.socket,
            &[(&["localhost"], &cert, "vault:ha")],
            backends,
            &sockets,
            "",
        );
        let p = common::proxy::ProxyProc::start(self.dir.path(), &cfg);
        (standby, p)
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca.pem_path
    }

    pub fn vault_metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = common::vault::http_get(self.vault.metrics.expect("vault metrics"), "/metrics");
        common::proxy::metric(&text, name, labels)
    }
}
