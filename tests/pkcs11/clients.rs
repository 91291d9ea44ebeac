//! Command-line clients: pkcs11-tool, p11tool, ssh-keygen, openssl.

use std::process::Command;

use crate::common::pkcs11::{
    self, engine_conf, key_id, module, ok_stdout, pkcs11_tool, provider_conf, public_pem, web_vault,
};
use crate::common::{require_tool, require_user};

fn openssl() -> std::path::PathBuf {
    require_tool("openssl", "openssl")
}

/// `openssl dgst -verify` of `sig` over `msg` with `pem`, plus options.
fn verify(dir: &std::path::Path, pem: &str, msg: &[u8], sig: &[u8], opts: &[&str]) {
    let (p, m, s) = (dir.join("pub.pem"), dir.join("msg"), dir.join("sig"));
    std::fs::write(&p, pem).expect("write pem");
    std::fs::write(&m, msg).expect("write msg");
    std::fs::write(&s, sig).expect("write sig");
    let out = Command::new(openssl())
        .args(["dgst", "-sha256", "-verify"])
        .arg(&p)
        .args(opts)
        .arg("-signature")
        .arg(&s)
        .arg(&m)
        .output()
        .expect("run openssl");
    let text = ok_stdout("openssl dgst -verify", &out);
    assert!(text.contains("Verified OK"), "{text}");
}

#[test]
fn pkcs11_tool_lists_reads_and_signs_with_vault_keys() {
    let v = web_vault();
    v.ok(&["key", "create", "ed", "--type", "ed25519"]);
    v.ok(&["key", "create", "data", "--type", "aes-256"]);
    let dir = tempfile::tempdir().expect("tmp");

    let slots = ok_stdout("pkcs11-tool -L", &pkcs11_tool(&v, &["-L"]));
    assert!(slots.contains("token label        : vaultgate"), "{slots}");
    let mechs = ok_stdout("pkcs11-tool -M", &pkcs11_tool(&v, &["-M"]));
    for m in [
        "ECDSA,",
        "RSA-PKCS,",
        "RSA-PKCS-PSS,",
        "SHA256-RSA-PKCS-PSS,",
        "EDDSA,",
    ] {
        assert!(mechs.contains(m), "{m} missing: {mechs}");
    }
    assert!(!mechs.contains("RSA-X-509"), "raw RSA offered: {mechs}");

    // Private and public objects of each signing key, sharing CKA_ID and
    // label; the certificate bound in the vault; nothing for AES.
    let objects = ok_stdout("pkcs11-tool -O", &pkcs11_tool(&v, &["-O"]));
    let web_id = key_id(&v, "web");
    assert_eq!(
        objects.matches(&format!("ID:         {web_id}")).count(),
        3,
        "{objects}"
    );
    assert!(objects.contains("Private Key Object; EC"), "{objects}");
    assert!(
        objects.contains("Public Key Object; RSA 2048 bits"),
        "{objects}"
    );
    assert!(
        objects.contains("Certificate Object; type = X.509 cert"),
        "{objects}"
    );
    assert!(
        objects.contains("Private Key Object; EC_EDWARDS"),
        "{objects}"
    );
    assert!(objects.contains("never extractable"), "{objects}");
    assert!(!objects.contains("label:      data"), "{objects}");

    // The public key object is the vault's public key, byte for byte.
    let der = dir.path().join("web.der");
    let der_arg = der.display().to_string();
    ok_stdout(
        "pkcs11-tool --read-object",
        &pkcs11_tool(
            &v,
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                &web_id,
                "-o",
                &der_arg,
            ],
        ),
    );
    let out = Command::new(openssl())
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .output()
        .expect("openssl pkey");
    assert_eq!(ok_stdout("openssl pkey", &out), public_pem(&v, "web"));

    let msg = b"signed through the vault".to_vec();
    let digest = ring::digest::digest(&ring::digest::SHA256, &msg);
    let rsa_id = key_id(&v, "rsa");
    let sign = |mech: &[&str], id: &str, input: &[u8]| -> Vec<u8> {
        let (i, o) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&i, input).expect("write input");
        let mut args = vec!["--sign", "--id", id];
        args.extend_from_slice(mech);
        let out = Command::new(require_tool("pkcs11-tool", "opensc"))
            .arg("--module")
            .arg(module())
            .args(&args)
            .arg("-i")
            .arg(&i)
            .arg("-o")
            .arg(&o)
            .env("VAULTGATE_SOCKET", &v.socket)
            .output()
            .expect("pkcs11-tool --sign");
        ok_stdout(&format!("pkcs11-tool --sign {mech:?}"), &out);
        std::fs::read(&o).expect("read signature")
    };
    // ECDSA over a digest the caller made: r||s, here asked for as DER.
    let sig = sign(
        &["-m", "ECDSA", "--signature-format", "openssl"],
        &web_id,
        digest.as_ref(),
    );
    verify(dir.path(), &public_pem(&v, "web"), &msg, &sig, &[]);
    let raw = sign(&["-m", "ECDSA"], &web_id, digest.as_ref());
    assert_eq!(raw.len(), 64, "CKM_ECDSA answers r||s");
    let sig = sign(
        &["-m", "ECDSA-SHA256", "--signature-format", "openssl"],
        &web_id,
        &msg,
    );
    verify(dir.path(), &public_pem(&v, "web"), &msg, &sig, &[]);
    // RSA PKCS#1 v1.5: hash-and-sign, and a DigestInfo the caller made.
    let rsa_pem = public_pem(&v, "rsa");
    let sig = sign(&["-m", "SHA256-RSA-PKCS"], &rsa_id, &msg);
    verify(dir.path(), &rsa_pem, &msg, &sig, &[]);
    let mut info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    info.extend_from_slice(digest.as_ref());
    let sig = sign(&["-m", "RSA-PKCS"], &rsa_id, &info);
    verify(dir.path(), &rsa_pem, &msg, &sig, &[]);
    // PSS, hash-and-sign and over a digest, with its parameters.
    let pss = [
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
    ];
    let sig = sign(&["-m", "SHA256-RSA-PKCS-PSS"], &rsa_id, &msg);
    verify(dir.path(), &rsa_pem, &msg, &sig, &pss);
    let sig = sign(
        &[
            "-m",
            "RSA-PKCS-PSS",
            "--hash-algorithm",
            "SHA256",
            "--mgf",
            "MGF1-SHA256",
        ],
        &rsa_id,
        digest.as_ref(),
    );
    verify(dir.path(), &rsa_pem, &msg, &sig, &pss);
    // EdDSA signs the message itself.
    let sig = sign(&["-m", "EDDSA"], &key_id(&v, "ed"), &msg);
    let (p, m, s) = (
        dir.path().join("ed.pem"),
        dir.path().join("m"),
        dir.path().join("s"),
    );
    std::fs::write(&p, public_pem(&v, "ed")).expect("write");
    std::fs::write(&m, &msg).expect("write");
    std::fs::write(&s, &sig).expect("write");
    let out = Command::new(openssl())
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&p)
        .arg("-in")
        .arg(&m)
        .arg("-sigfile")
        .arg(&s)
        .output()
        .expect("openssl pkeyutl");
    assert!(ok_stdout("pkeyutl -verify", &out).contains("Signature Verified Successfully"));

    // Raw RSA (a bare digest under CKM_RSA_PKCS) is refused, not padded
    // and signed.
    std::fs::write(dir.path().join("in"), digest.as_ref()).expect("write");
    let out = Command::new(require_tool("pkcs11-tool", "opensc"))
        .arg("--module")
        .arg(module())
        .args(["--sign", "-m", "RSA-PKCS", "--id", &rsa_id, "-i"])
        .arg(dir.path().join("in"))
        .env("VAULTGATE_SOCKET", &v.socket)
        .output()
        .expect("pkcs11-tool");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CKR_DATA_INVALID"));

    // Every signature is in the audit log, as the caller's uid.
    pkcs11::wait_audited(&v, "sign-digest", 0, Some("ok"));
    pkcs11::wait_audited(&v, "sign", 0, Some("ok"));
}

#[test]
fn p11tool_and_ssh_keygen_see_the_vault_keys() {
    let v = web_vault();
    let p11tool = require_tool("p11tool", "gnutls-bin");
    let out = Command::new(p11tool)
        .arg("--provider")
        .arg(module())
        .args(["--list-all", "pkcs11:token=vaultgate"])
        .env("VAULTGATE_SOCKET", &v.socket)
        .output()
        .expect("p11tool");
    let text = ok_stdout("p11tool --list-all", &out);
    for want in [
        "object=web;type=private",
        "object=web;type=public",
        "object=rsa;type=private",
        "Private key (EC/ECDSA-SECP256R1)",
        "Private key (RSA-2048)",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }

    let keygen = require_tool("ssh-keygen", "openssh-client");
    let out = Command::new(keygen)
        .arg("-D")
        .arg(module())
        .env("VAULTGATE_SOCKET", &v.socket)
        .output()
        .expect("ssh-keygen -D");
    let text = ok_stdout("ssh-keygen -D", &out);
    // The same keys ssh-keygen derives from the vault's public keys.
    let dir = tempfile::tempdir().expect("tmp");
    for key in ["web", "rsa"] {
        let p = dir.path().join(format!("{key}.pem"));
        std::fs::write(&p, public_pem(&v, key)).expect("write");
        let out = Command::new(require_tool("ssh-keygen", "openssh-client"))
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(&p)
            .output()
            .expect("ssh-keygen -i");
        let want = ok_stdout("ssh-keygen -i", &out);
        let blob = want.split_whitespace().nth(1).expect("key blob");
        assert!(text.contains(blob), "{key}'s public key missing: {text}");
    }
}

#[test]
fn openssl_makes_a_certificate_with_a_vault_key_through_the_engine_and_the_provider() {
    let v = web_vault();
    let dir = tempfile::tempdir().expect("tmp");
    let req = |conf: &std::path::Path, engine: &[&str], key: &str, cert: &std::path::Path| {
        let out = Command::new(openssl())
            .args([
                "req",
                "-new",
                "-x509",
                "-subj",
                "/CN=localhost",
                "-days",
                "1",
            ])
            .args(engine)
            .args([
                "-key",
                &format!("pkcs11:token=vaultgate;object={key};type=private"),
            ])
            .arg("-out")
            .arg(cert)
            .env("OPENSSL_CONF", conf)
            .env("VAULTGATE_SOCKET", &v.socket)
            .output()
            .expect("openssl req");
        ok_stdout(&format!("openssl req {engine:?} with {key}"), &out);
        self_signed_by(cert, &public_pem(&v, key));
    };
    let engine = ["-engine", "pkcs11", "-keyform", "engine"];
    req(
        &engine_conf(dir.path()),
        &engine,
        "web",
        &dir.path().join("engine.pem"),
    );
    req(
        &provider_conf(dir.path()),
        &[],
        "rsa",
        &dir.path().join("provider.pem"),
    );
    // The key was used where it lives: signed by the vault.
    pkcs11::audit_until(&v, "signatures by web and rsa", |records| {
        ["web", "rsa"].iter().all(|k| {
            pkcs11::matching(records, "sign-digest", 0, Some("ok")).any(|r| r["key"] == *k)
        })
    });
}

/// The certificate verifies under itself and carries `pem`'s key.
fn self_signed_by(cert: &std::path::Path, pem: &str) {
    let out = Command::new(openssl())
        .args(["verify", "-CAfile"])
        .arg(cert)
        .arg(cert)
        .output()
        .expect("openssl verify");
    ok_stdout("openssl verify", &out);
    let out = Command::new(openssl())
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    assert_eq!(ok_stdout("openssl x509 -pubkey", &out), pem);
}

#[test]
fn a_uid_without_a_grant_sees_no_objects() {
    let v = web_vault();
    let (nobody, _) = require_user("nobody");
    let (_, www_gid) = require_user("www-data");
    // nobody reaches the socket (through its group), but has no grant.
    use std::os::unix::process::CommandExt;
    let out = Command::new(require_tool("pkcs11-tool", "opensc"))
        .arg("--module")
        .arg(module())
        .arg("-O")
        .env("VAULTGATE_SOCKET", &v.socket)
        .uid(nobody)
        .gid(www_gid)
        .output()
        .expect("pkcs11-tool as nobody");
    let text = ok_stdout("pkcs11-tool -O as nobody", &out);
    assert!(!text.contains("Object"), "nobody sees objects: {text}");
    // Its search was answered, and audited as its own.
    pkcs11::wait_audited(&v, "list", nobody, None);
    // root, with grants, sees them.
    let text = ok_stdout("pkcs11-tool -O", &pkcs11_tool(&v, &["-O"]));
    assert!(text.contains("label:      web"), "{text}");
}

#[test]
fn the_config_file_names_the_socket_and_the_keys_and_the_log_tells_failures() {
    let v = web_vault();
    let dir = tempfile::tempdir().expect("tmp");
    let (conf, log) = (dir.path().join("pkcs11.toml"), dir.path().join("p11.log"));
    std::fs::write(
        &conf,
        format!(
            "socket = {:?}\nkeys = [\"rs*\"]\nlog = {:?}\n",
            v.socket.display().to_string(),
            log.display().to_string()
        ),
    )
    .expect("write pkcs11.toml");
    let tool = |socket: Option<&std::path::Path>| {
        let mut c = Command::new(require_tool("pkcs11-tool", "opensc"));
        c.arg("--module")
            .arg(module())
            .arg("-O")
            .env_remove("VAULTGATE_SOCKET")
            .env("VAULTGATE_PKCS11_CONFIG", &conf);
        if let Some(s) = socket {
            c.env("VAULTGATE_SOCKET", s);
        }
        c.output().expect("pkcs11-tool")
    };
    // The file's socket, and only the keys its patterns name.
    let text = ok_stdout("pkcs11-tool -O (config file)", &tool(None));
    assert!(text.contains("label:      rsa"), "{text}");
    assert!(!text.contains("label:      web"), "{text}");
    assert!(!log.exists(), "a log line without a failure");

    // VAULTGATE_SOCKET wins over the file; the vault it names is not
    // there, and the log (the module prints nothing) says so.
    let gone = dir.path().join("gone.sock");
    let out = tool(Some(&gone));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("label:"),
        "objects from a missing vault"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("vaultgate"),
        "the module printed"
    );
    let line = std::fs::read_to_string(&log).expect("the module's log");
    assert!(
        line.contains(&format!(
            "cannot connect to the vault at {}",
            gone.display()
        )),
        "{line}"
    );
}

#[test]
fn the_module_exports_only_c_get_function_list() {
    let nm = require_tool("nm", "binutils");
    let out = Command::new(nm)
        .args(["-D", "--defined-only"])
        .arg(module())
        .output()
        .expect("nm -D");
    let text = ok_stdout("nm -D", &out);
    let functions: Vec<&str> = text
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "T", name] => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(functions, ["C_GetFunctionList"], "{text}");
}

#[test]
fn java_sunpkcs11_lists_the_keys_and_signs_a_certificate_request() {
    let v = web_vault();
    let keytool = require_tool("keytool", "openjdk-17-jre-headless");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("vaultgate-pkcs11.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = vaultgate\nlibrary = {}\nslot = 0\n",
            module().display()
        ),
    )
    .expect("write cfg");
    let run = |args: &[&str]| {
        let out = Command::new(&keytool)
            .args(args)
            .args(["-keystore", "NONE", "-storetype", "PKCS11"])
            .args(["-providerClass", "sun.security.pkcs11.SunPKCS11"])
            .arg("-providerArg")
            .arg(&cfg)
            .args(["-storepass", "any"])
            .env("VAULTGATE_SOCKET", &v.socket)
            .output()
            .expect("run keytool");
        ok_stdout(&format!("keytool {args:?}"), &out)
    };
    let list = run(&["-list"]);
    for key in ["web", "rsa"] {
        assert!(list.contains(&format!("{key}, PrivateKeyEntry")), "{list}");
    }
    // A certificate request signed with each key, by the vault.
    for key in ["web", "rsa"] {
        let csr = dir.path().join(format!("{key}.csr"));
        let csr_arg = csr.display().to_string();
        run(&["-certreq", "-alias", key, "-file", &csr_arg]);
        let out = Command::new(openssl())
            .args(["req", "-verify", "-noout", "-in"])
            .arg(&csr)
            .output()
            .expect("openssl req -verify");
        ok_stdout("openssl req -verify", &out);
        let out = Command::new(openssl())
            .args(["req", "-noout", "-pubkey", "-in"])
            .arg(&csr)
            .output()
            .expect("openssl req -pubkey");
        assert_eq!(ok_stdout("openssl req -pubkey", &out), public_pem(&v, key));
    }
    pkcs11::audit_until(&v, "Java's signatures", |records| {
        ["web", "rsa"].iter().all(|k| {
            pkcs11::matching(records, "sign-digest", 0, Some("ok")).any(|r| r["key"] == *k)
        })
    });
}
