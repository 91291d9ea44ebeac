//! The PKCS#11 module as its users meet it: `libvaultgate_pkcs11.so`
//! loaded by unmodified clients from Debian (pkcs11-tool, p11tool,
//! ssh-keygen, OpenSSL's engine and provider, nginx, Apache, PyKCS11)
//! against the real vault process.

#![allow(
    clippy::too_many_lines,
    reason = "a test or bench scenario reads top to bottom"
)]

mod common;

#[path = "pkcs11/apache.rs"]
mod apache;
#[path = "pkcs11/clients.rs"]
mod clients;
#[path = "pkcs11/nginx.rs"]
mod nginx;
#[path = "pkcs11/python.rs"]
mod python;
