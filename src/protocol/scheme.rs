//! TLS SignatureScheme code points (RFC 8446 §4.2.3) carried in sign
//! requests, and the names the CLI uses for them.

pub const RSA_PKCS1_SHA256: u16 = 0x0401;
pub const RSA_PKCS1_SHA384: u16 = 0x0501;
pub const RSA_PKCS1_SHA512: u16 = 0x0601;
pub const ECDSA_P256_SHA256: u16 = 0x0403;
pub const ECDSA_P384_SHA384: u16 = 0x0503;
pub const RSA_PSS_SHA256: u16 = 0x0804;
pub const RSA_PSS_SHA384: u16 = 0x0805;
pub const RSA_PSS_SHA512: u16 = 0x0806;
pub const ED25519: u16 = 0x0807;

const NAMES: [(u16, &str); 9] = [
    (RSA_PKCS1_SHA256, "rsa-pkcs1-sha256"),
    (RSA_PKCS1_SHA384, "rsa-pkcs1-sha384"),
    (RSA_PKCS1_SHA512, "rsa-pkcs1-sha512"),
    (ECDSA_P256_SHA256, "ecdsa-p256-sha256"),
    (ECDSA_P384_SHA384, "ecdsa-p384-sha384"),
    (RSA_PSS_SHA256, "rsa-pss-sha256"),
    (RSA_PSS_SHA384, "rsa-pss-sha384"),
    (RSA_PSS_SHA512, "rsa-pss-sha512"),
    (ED25519, "ed25519"),
];

pub fn name(code: u16) -> Option<&'static str> {
    NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// Accepts a name from the table, or a hex code point such as `0x0403`.
pub fn from_name(name: &str) -> Option<u16> {
    if let Some(hex) = name.strip_prefix("0x") {
        return u16::from_str_radix(hex, 16).ok();
    }
    NAMES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}
