//! `vaultgate run`: one command gives a vault child, a dev CA, a key and
//! a certificate, and a proxy; the printed curl line works; a killed
//! vault is restarted and the proxy carries on; a second start reuses
//! everything.

use std::process::Command;
use std::time::Duration;

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, https_get, ProxyProc};
use crate::common::{bin, require_tool, wait_for};

pub fn run_config(dir: &std::path::Path, backend: std::net::SocketAddr) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vaultgate.toml"),
    )
    .expect("read the shipped config");
    // The shipped embedded default, moved to a temp dir, port 0 and the test's backend.
    let text = shipped
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:8080", &backend.to_string());
    let cfg_dir = dir.join("config");
    std::fs::create_dir_all(&cfg_dir).expect("mkdir");
    let path = cfg_dir.join("vaultgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn run_bootstraps_serves_the_printed_curl_line_and_restarts_the_vault() {
    let nginx = Nginx::start("n1");
    std::fs::write(nginx.www().join("index.html"), "hello from nginx\n").expect("index");
    let dir = tempfile::Builder::new()
        .prefix("vg-run-")
        .tempdir_in("/tmp")
        .expect("temp");
    let cfg = run_config(dir.path(), nginx.addr);
    let cfg_s = cfg.display().to_string();
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg_s]);
    let early = p.early.join("\n");
    assert!(
        early.contains("created dev CA")
            && early.contains("created key vault:default")
            && early.contains("issued"),
        "{early}"
    );
    let vault_pid = p.vault_pid();
    let try_line = p
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .expect("the curl line");
    let cmd = try_line.strip_prefix("try: ").expect("try: line");
    assert!(
        cmd.starts_with("curl --cacert ")
            && cmd.contains(&format!("https://localhost:{}/", p.addr.port())),
        "{cmd}"
    );

    // The printed command, as printed (localhost may try ::1 first; curl falls back).
    let curl_bin = require_tool("curl", "curl");
    let run_printed = || {
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        Command::new(&curl_bin)
            .args(["-sS"])
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("curl")
    };
    let out = run_printed();
    assert!(
        out.status.success() && out.stdout == b"hello from nginx\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = dir.path().join("certs/dev-ca.pem");
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(&ca, false, &[]),
        "/whoami",
    );
    assert_eq!(
        (f.status, f.body.as_slice(), f.version),
        (200, &b"n1\n"[..], Some(rustls::ProtocolVersion::TLSv1_3))
    );

    // Admin commands find the embedded vault through the config.
    let out = Command::new(bin())
        .args(["key", "list", "--config", &cfg_s])
        .output()
        .expect("key list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && list.contains("default") && list.contains("dev-ca"),
        "{list}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The vault dies; run restarts it and new full handshakes work again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vault_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill vault");
    let fresh = || client_config(&ca, false, &[]);
    wait_for(
        "handshakes after the vault restart",
        Duration::from_secs(20),
        || {
            let ok = std::panic::catch_unwind(|| {
                https_get(p.addr, "localhost", &fresh(), "/whoami").status == 200
            });
            ok.unwrap_or(false).then_some(())
        },
    );
    assert!(p.log().contains("vault child died"), "{}", p.log());

    // A clean stop, then a second start reuses the CA, key and certificate.
    p.sigterm();
    let mut p = p;
    let status = p.child.wait().expect("wait run");
    assert!(status.success(), "run exit: {status}");
    let p2 = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg_s]);
    let early = p2.early.join("\n");
    assert!(
        !early.contains("created") && !early.contains("issued"),
        "{early}"
    );
    let f = https_get(
        p2.addr,
        "localhost",
        &client_config(&ca, false, &[]),
        "/whoami",
    );
    assert_eq!(f.status, 200);
}

#[test]
fn rotating_the_default_key_alone_changes_the_certificate_served() {
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-run-")
        .tempdir_in("/tmp")
        .expect("temp");
    let cfg = run_config(dir.path(), nginx.addr);
    let cfg_s = cfg.display().to_string();
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg_s]);
    let ca = dir.path().join("certs/dev-ca.pem");
    let before = https_get(
        p.addr,
        "localhost",
        &client_config(&ca, false, &[]),
        "/whoami",
    );
    assert_eq!(before.status, 200);

    let out = Command::new(bin())
        .args(["key", "rotate", "default", "--config", &cfg_s])
        .output()
        .expect("key rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = std::time::Instant::now();
    // A new connection (fresh client, so no resumption) sees the new
    // certificate, verified against the dev CA, and is served.
    let after = wait_for(
        "a certificate for the rotated key",
        Duration::from_secs(10),
        || {
            let f = https_get(
                p.addr,
                "localhost",
                &client_config(&ca, false, &[]),
                "/whoami",
            );
            (f.peer_cert != before.peer_cert).then_some(f)
        },
    );
    let delay = rotated.elapsed();
    eprintln!("rotation to new certificate served: {delay:?}");
    assert_eq!((after.status, after.body.as_slice()), (200, &b"n1\n"[..]));
    // Pushed by the vault's key event, not found by a periodic check: well
    // under the 10 s allowed above even on a loaded 2-core machine.
    assert!(delay < Duration::from_secs(5), "took {delay:?}");
    // The certificate's key is the vault's new primary version.
    let out = Command::new(bin())
        .args(["key", "describe", "default", "--config", &cfg_s])
        .output()
        .expect("describe");
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("describe json");
    assert_eq!(d["primary"], 2);
    let spki = vaultgate::pki::cert_spki(&after.peer_cert)
        .expect("spki")
        .to_vec();
    let id = hex::encode(ring::digest::digest(&ring::digest::SHA256, &spki));
    assert_eq!(d["versions"][1]["spki_sha256"], id.as_str());
}

#[test]
fn dev_certificates_are_reissued_before_they_expire() {
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-run-")
        .tempdir_in("/tmp")
        .expect("temp");
    let cfg = run_config(dir.path(), nginx.addr);
    // Certificates valid for 4 s, renewed when under 3 s remain.
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        "cert_validity = \"90d\"",
        "cert_validity = \"4s\"\nrenew_before = \"3s\"",
    );
    std::fs::write(&cfg, text).expect("write config");
    let cfg_s = cfg.display().to_string();
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg_s]);
    let ca = dir.path().join("certs/dev-ca.pem");
    let get = || {
        https_get(
            p.addr,
            "localhost",
            &client_config(&ca, false, &[]),
            "/whoami",
        )
    };
    let first = get();
    assert_eq!(first.status, 200);
    let not_after = |der: &[u8]| vaultgate::pki::cert_not_after(der).expect("not after");
    // Without any rotation, a new certificate (for the same key) replaces
    // the expiring one, and every request is served meanwhile.
    let renewed = wait_for("a renewed certificate", Duration::from_secs(15), || {
        let f = get();
        assert_eq!(f.status, 200, "a request failed during renewal");
        (f.peer_cert != first.peer_cert).then_some(f)
    });
    assert!(not_after(&renewed.peer_cert) > not_after(&first.peer_cert));
    assert_eq!(
        vaultgate::pki::cert_spki(&renewed.peer_cert).expect("spki"),
        vaultgate::pki::cert_spki(&first.peer_cert).expect("spki"),
        "renewal keeps the key"
    );
}

#[test]
fn run_away_from_a_checkout_uses_the_default_home() {
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-run-home-")
        .tempdir_in("/tmp")
        .expect("temp");
    let (cwd, home) = (dir.path().join("elsewhere"), dir.path().join("home"));
    std::fs::create_dir_all(&cwd).expect("mkdir");
    // The home's config, as `run` writes it from the built-in default
    // (here with port 0 and the test's backend, as a user would edit it).
    let written = run_config(&home, nginx.addr);
    assert_eq!(written, home.join("config/vaultgate.toml"));
    let cmd = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args).current_dir(&cwd).env("VAULTGATE_HOME", &home);
        c
    };

    // From a directory with no config/, and no --config: the home's.
    let mut child = cmd(&["run"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run.log")).expect("log"))
        .spawn()
        .expect("run");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let mut listen = None;
    for line in lines.map_while(Result::ok) {
        if let Some(a) = line.strip_prefix("listen ") {
            listen = a.parse::<std::net::SocketAddr>().ok();
            break;
        }
    }
    let addr = listen.unwrap_or_else(|| {
        panic!(
            "run did not listen: {}",
            std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
        )
    });
    let ca = home.join("certs/dev-ca.pem");
    assert!(
        ca.exists() && home.join("var/vault").is_dir(),
        "state and certificates under the home"
    );
    let f = https_get(
        addr,
        "localhost",
        &client_config(&ca, false, &[]),
        "/whoami",
    );
    assert_eq!(f.body, b"n1\n");
    // Admin commands from the same directory find that vault.
    let out = cmd(&["key", "list"]).output().expect("key list");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("default"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    // `check` reads what is there and writes nothing: with no home config,
    // it names the file it looked for.
    let empty = dir.path().join("empty-home");
    let out = Command::new(bin())
        .arg("check")
        .current_dir(&cwd)
        .env("VAULTGATE_HOME", &empty)
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("empty-home/config/vaultgate.toml"),
        "{err}"
    );
    assert!(!empty.exists(), "check created the home");
}
