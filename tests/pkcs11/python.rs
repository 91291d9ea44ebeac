//! PyKCS11 (Debian's python3-pykcs11) driving the module from many
//! threads and sessions at once, and across a fork.

use std::process::Command;

use crate::common::pkcs11::{self, module, ok_stdout, public_pem, web_vault};
use crate::common::require_tool;
use crate::common::vault::VaultProc;

/// Runs `script` with Debian's python3 (the one python3-pykcs11 is for),
/// the module's path as its first argument.
fn python(v: &VaultProc, script: &str) -> String {
    let py = require_tool("python3", "python3-pykcs11");
    let py = if std::path::Path::new("/usr/bin/python3").exists() {
        std::path::PathBuf::from("/usr/bin/python3")
    } else {
        py
    };
    let check = Command::new(&py)
        .args(["-c", "import PyKCS11"])
        .output()
        .expect("run python3");
    assert!(
        check.status.success(),
        "PyKCS11 is missing: run `apt-get install python3-pykcs11` (scripts/test.sh does)"
    );
    let out = Command::new(py)
        .args(["-c", script])
        .arg(module())
        .env("VAULTGATE_SOCKET", &v.socket)
        .output()
        .expect("run python3");
    ok_stdout("python3 (PyKCS11)", &out)
}

/// The public key bits of a PEM SubjectPublicKeyInfo: the point (EC) or
/// the RSAPublicKey (RSA), as ring's verifiers take them.
fn public_bits(pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&p.contents).expect("spki");
    spki.subject_public_key.data.to_vec()
}

const THREADS: &str = r#"
import os, sys, threading, PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = lib.getSlotList(tokenPresent=True)[0]
mechs = {
    "ecdsa-sha256": ("web", PyKCS11.Mechanism(PyKCS11.CKM_ECDSA_SHA256)),
    "rsa-pkcs1-sha256": ("rsa", PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS)),
    "rsa-pss-sha256": ("rsa", PyKCS11.RSA_PSS_Mechanism(
        PyKCS11.CKM_SHA256_RSA_PKCS_PSS, PyKCS11.CKM_SHA256, PyKCS11.CKG_MGF1_SHA256, 32)),
}
out, lock, errors = [], threading.Lock(), []
def work(t):
    try:
        for i in range(12):
            # a session per signature, several open at once per thread
            s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
            name = list(mechs)[(t + i) % 3]
            label, mech = mechs[name]
            key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                 (PyKCS11.CKA_LABEL, label)])[0]
            msg = os.urandom(40)
            sig = bytes(s.sign(key, msg, mech))
            s.closeSession()
            with lock:
                out.append(f"{name} {msg.hex()} {sig.hex()}")
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("errors: " + "; ".join(errors))
print("\n".join(out))
"#;

#[test]
fn many_threads_and_sessions_sign_at_once_and_every_signature_verifies() {
    let v = web_vault();
    let text = python(&v, THREADS);
    let ec = public_bits(&public_pem(&v, "web"));
    let rsa = public_bits(&public_pem(&v, "rsa"));
    let mut n = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [name, msg, sig] = parts[..] else {
            panic!("odd line {line:?}");
        };
        let (msg, sig) = (
            hex::decode(msg).expect("hex"),
            hex::decode(sig).expect("hex"),
        );
        let (alg, key): (&dyn ring::signature::VerificationAlgorithm, &[u8]) = match name {
            "ecdsa-sha256" => (&ring::signature::ECDSA_P256_SHA256_FIXED, &ec),
            "rsa-pkcs1-sha256" => (&ring::signature::RSA_PKCS1_2048_8192_SHA256, &rsa),
            _ => (&ring::signature::RSA_PSS_2048_8192_SHA256, &rsa),
        };
        ring::signature::UnparsedPublicKey::new(alg, key)
            .verify(&msg, &sig)
            .unwrap_or_else(|_| panic!("{name} signature does not verify: {line}"));
        n += 1;
    }
    assert_eq!(n, 16 * 12);
    let records = pkcs11::audit_until(&v, "every signature", |r| {
        pkcs11::total(pkcs11::matching(r, "sign-digest", 0, Some("ok"))) >= 16 * 12
    });
    // One process, one pid, every signature by the vault.
    let pids: std::collections::BTreeSet<_> =
        pkcs11::matching(&records, "sign-digest", 0, Some("ok"))
            .filter_map(|r| r["pid"].as_i64())
            .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
}

const FORK: &str = r#"
import os, sys, PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
slot = lib.getSlotList(tokenPresent=True)[0]
def sign():
    s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "web")])[0]
    sig = bytes(s.sign(key, b"x" * 32, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
    s.closeSession()
    return sig
sign()
print("parent", os.getpid())
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    # The child signs without re-initialising (lenient), then finalises:
    # neither may touch the parent's connection.
    sign()
    lib.lib.C_Finalize()
    print("child", os.getpid())
    sys.stdout.flush()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
sign()
print("parent-again", os.getpid())
"#;

#[test]
fn a_forked_child_signs_on_its_own_connection_and_finalises_without_a_word_to_the_vault() {
    let v = web_vault();
    let text = python(&v, FORK);
    let pid = |tag: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {tag} line: {text}"))
    };
    let (parent, child) = (pid("parent "), pid("child "));
    assert!(text.contains("parent-again"), "{text}");
    let signed = |records: &[serde_json::Value], p: i64| {
        pkcs11::total(
            pkcs11::matching(records, "sign-digest", 0, Some("ok")).filter(|r| r["pid"] == p),
        )
    };
    // The vault saw the child as itself (SO_PEERCRED on a connection the
    // child made), and the parent's connection kept working after it.
    let records = pkcs11::audit_until(&v, "three signatures", |r| {
        pkcs11::total(pkcs11::matching(r, "sign-digest", 0, Some("ok"))) >= 3
    });
    assert_eq!(signed(&records, child), 1);
    assert_eq!(signed(&records, parent), 2);
    // Nothing reached the vault malformed or unasked for.
    assert!(
        !records.iter().any(|r| r["op"] == "bad-frame"),
        "{records:?}"
    );
}

const REINIT: &str = r#"
import sys, PyKCS11
lib = PyKCS11.PyKCS11Lib()
lib.load(sys.argv[1])
def objects():
    slots = lib.getSlotList(tokenPresent=True)
    s = lib.openSession(slots[0], PyKCS11.CKF_SERIAL_SESSION)
    found = sorted((o.value(), bytes(s.getAttributeValue(o, [PyKCS11.CKA_ID])[0]).hex())
                   for o in s.findObjects([]))
    web = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "web")])[0]
    s.closeSession()
    return slots, found, web
slots, found, web = objects()
# A second C_Initialize without C_Finalize is refused, as PKCS#11 says.
assert lib.lib.C_Initialize() == PyKCS11.CKR_CRYPTOKI_ALREADY_INITIALIZED
assert lib.lib.C_Finalize() == PyKCS11.CKR_OK
assert lib.lib.C_Finalize() == PyKCS11.CKR_CRYPTOKI_NOT_INITIALIZED
assert lib.lib.C_Initialize() == PyKCS11.CKR_OK
slots2, found2, _ = objects()
assert (slots, found) == (slots2, found2), ((slots, found), (slots2, found2))
# The handle found before re-initialising still names the key.
s = lib.openSession(slots2[0], PyKCS11.CKF_SERIAL_SESSION)
sig = bytes(s.sign(web, b"x" * 32, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
print(len(found2), slots2, len(sig))
"#;

#[test]
fn slot_ids_and_object_handles_stay_the_same_across_re_initialisation() {
    let v = web_vault();
    let text = python(&v, REINIT);
    // web and rsa: a private key, a public key and a certificate each;
    // slot 0; an r||s signature of P-256.
    assert_eq!(text.trim(), "6 [0] 64", "{text}");
}
