//! Object attributes, as clients read and search them.
//!
//! libp11 reads the RSA modulus and exponent and the EC parameters on the
//! *private* object, and the EC point on the public one with the same
//! CKA_ID; pkcs11-provider also reads CKA_ALLOWED_MECHANISMS and
//! CKA_PUBLIC_KEY_INFO. The private values themselves are never anywhere
//! in the module: asking for them is answered CKR_ATTRIBUTE_SENSITIVE.

use cryptoki_sys::*;

use crate::catalogue::{push_der_len, Class, Object, Public};
use crate::mechanism;

/// `CK_UNAVAILABLE_INFORMATION` (a macro in the C headers).
pub const UNAVAILABLE: CK_ULONG = CK_ULONG::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    /// Exists but may not be revealed.
    Sensitive,
    /// Not an attribute of this object.
    Invalid,
}

fn ulong(v: CK_ULONG) -> Value {
    Value::Bytes(v.to_ne_bytes().to_vec())
}

fn flag(b: bool) -> Value {
    Value::Bytes(vec![if b { CK_TRUE } else { CK_FALSE }])
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

/// The value of attribute `t` of `obj`.
pub fn value(obj: &Object, t: CK_ATTRIBUTE_TYPE) -> Value {
    let key = &obj.key;
    let cert = key.cert.as_ref();
    // Attributes of every object.
    match t {
        CKA_CLASS => return ulong(obj.class.ck()),
        CKA_TOKEN => return flag(true),
        // No login is needed to use anything: authority is the uid.
        CKA_PRIVATE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE => return flag(false),
        CKA_LABEL => return bytes(key.name.as_bytes()),
        CKA_ID => return bytes(&key.id),
        CKA_START_DATE | CKA_END_DATE => return bytes(&[]),
        _ => {}
    }
    if obj.class == Class::Certificate {
        let Some(c) = cert else {
            return Value::Invalid;
        };
        return match t {
            CKA_CERTIFICATE_TYPE => ulong(CKC_X_509),
            CKA_TRUSTED => flag(false),
            CKA_CERTIFICATE_CATEGORY => ulong(0),
            CKA_SUBJECT => bytes(&c.subject),
            CKA_ISSUER => bytes(&c.issuer),
            CKA_SERIAL_NUMBER => bytes(&c.serial),
            CKA_VALUE => bytes(&c.der),
            CKA_URL => bytes(&[]),
            CKA_JAVA_MIDP_SECURITY_DOMAIN => ulong(0),
            _ => Value::Invalid,
        };
    }
    // Attributes of both key objects.
    match t {
        CKA_KEY_TYPE => return ulong(key.key_type_ck()),
        CKA_DERIVE => return flag(false),
        CKA_LOCAL => return flag(key.local),
        CKA_KEY_GEN_MECHANISM => return ulong(UNAVAILABLE),
        CKA_ALLOWED_MECHANISMS => {
            let mut out = Vec::new();
            for m in mechanism::allowed(key.key_type) {
                out.extend_from_slice(&m.to_ne_bytes());
            }
            return Value::Bytes(out);
        }
        CKA_SUBJECT => return bytes(cert.map_or(&[][..], |c| &c.subject)),
        CKA_PUBLIC_KEY_INFO => return bytes(&key.spki),
        _ => {}
    }
    match (&key.public, t) {
        (Public::Rsa { modulus, .. }, CKA_MODULUS) => return bytes(modulus),
        (Public::Rsa { exponent, .. }, CKA_PUBLIC_EXPONENT) => return bytes(exponent),
        (Public::Rsa { .. }, CKA_MODULUS_BITS) => return ulong(key.modulus_bits() as CK_ULONG),
        (Public::Ec { params, .. }, CKA_EC_PARAMS) => return bytes(params),
        (Public::Ec { point, .. }, CKA_EC_POINT) if obj.class == Class::Public => {
            // DER OCTET STRING around the point, as PKCS#11 wants it.
            let mut der = vec![0x04];
            push_der_len(&mut der, point.len());
            der.extend_from_slice(point);
            return Value::Bytes(der);
        }
        _ => {}
    }
    match obj.class {
        Class::Private => match t {
            CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE | CKA_SIGN => flag(true),
            CKA_DECRYPT
            | CKA_SIGN_RECOVER
            | CKA_UNWRAP
            | CKA_EXTRACTABLE
            | CKA_WRAP_WITH_TRUSTED
            | CKA_ALWAYS_AUTHENTICATE => flag(false),
            CKA_VALUE | CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1
            | CKA_EXPONENT_2 | CKA_COEFFICIENT => Value::Sensitive,
            _ => Value::Invalid,
        },
        // The module signs; verifying is the public key's holder's job
        // (every TLS stack does it with the certificate).
        Class::Public => match t {
            CKA_ENCRYPT | CKA_VERIFY | CKA_VERIFY_RECOVER | CKA_WRAP | CKA_TRUSTED => flag(false),
            _ => Value::Invalid,
        },
        Class::Certificate => Value::Invalid,
    }
}

/// Whether `obj` has every `(type, value)` of a search template.
pub fn matches(obj: &Object, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
    template
        .iter()
        .all(|(t, want)| matches!(value(obj, *t), Value::Bytes(b) if &b == want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{VaultKey, P256_PARAMS};
    use std::sync::Arc;
    use vaultgate::protocol::KeyType;

    fn obj(class: Class) -> Object {
        Object {
            class,
            key: Arc::new(VaultKey {
                name: "web".into(),
                id: vec![7; 16],
                key_type: KeyType::EcdsaP256,
                version: 1,
                local: true,
                spki: vec![0x30],
                public: Public::Ec {
                    params: P256_PARAMS,
                    point: vec![4; 65],
                },
                cert: None,
            }),
        }
    }

    #[test]
    fn the_private_key_says_what_it_is_and_hides_what_it_has() {
        let p = obj(Class::Private);
        assert_eq!(value(&p, CKA_CLASS), ulong(CKO_PRIVATE_KEY));
        assert_eq!(value(&p, CKA_SENSITIVE), flag(true));
        assert_eq!(value(&p, CKA_EXTRACTABLE), flag(false));
        assert_eq!(value(&p, CKA_VALUE), Value::Sensitive);
        assert_eq!(value(&p, CKA_EC_PARAMS), bytes(P256_PARAMS));
        // the point lives on the public object
        assert_eq!(value(&p, CKA_EC_POINT), Value::Invalid);
        let q = obj(Class::Public);
        let Value::Bytes(point) = value(&q, CKA_EC_POINT) else {
            panic!("no point")
        };
        assert_eq!((point[0], point[1], point.len()), (0x04, 65, 67));
    }

    #[test]
    fn templates_match_by_exact_value() {
        let p = obj(Class::Private);
        let class = CKO_PRIVATE_KEY.to_ne_bytes().to_vec();
        assert!(matches(
            &p,
            &[(CKA_CLASS, class.clone()), (CKA_ID, vec![7; 16])]
        ));
        assert!(!matches(
            &p,
            &[(CKA_CLASS, class), (CKA_LABEL, b"web2".to_vec())]
        ));
        assert!(!matches(&p, &[(CKA_VALUE, vec![])]));
        assert!(matches(&p, &[]));
    }
}
