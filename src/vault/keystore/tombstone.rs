//! A deleted key's mark in a shared store. Locally the manifest keeps
//! deleted names; a store other nodes read keeps a tombstone in the
//! key's place instead, so a node that was down when the key was deleted
//! learns it, and a record put back from before the deletion (an older
//! generation than the tombstone's) is refused. Authenticated under the
//! manifest subkey, bound to the key's name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    deleted: String,
    generation: u64,
    mac: String,
}

fn mac_input(name: &str, generation: u64) -> Vec<u8> {
    format!("vaultgate tombstone v1\0{name}\0{generation}").into_bytes()
}

/// The tombstone of `name`, deleted at `generation`.
pub fn seal(key: &ring::hmac::Key, name: &str, generation: u64) -> Vec<u8> {
    let t = Tombstone {
        deleted: name.to_owned(),
        generation,
        mac: hex::encode(ring::hmac::sign(key, &mac_input(name, generation))),
    };
    serde_json::to_vec(&t).unwrap_or_default()
}

/// What bytes found in `name`'s place say about a tombstone.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Not a tombstone (a key record, or garbage for the record parser
    /// to name).
    NotOne,
    /// `name` was deleted at this generation.
    Deleted(u64),
    /// Shaped as a tombstone but not authentic, or another key's.
    Forged,
}

pub fn read(key: &ring::hmac::Key, name: &str, bytes: &[u8]) -> Read {
    let Ok(t) = serde_json::from_slice::<Tombstone>(bytes) else {
        return Read::NotOne;
    };
    let ok = t.deleted == name
        && hex::decode(&t.mac)
            .is_ok_and(|m| ring::hmac::verify(key, &mac_input(name, t.generation), &m).is_ok());
    if ok {
        Read::Deleted(t.generation)
    } else {
        Read::Forged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_opens_only_for_its_key_and_under_its_mac_key() {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1; 32]);
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[2; 32]);
        let t = seal(&k, "web", 7);
        assert_eq!(read(&k, "web", &t), Read::Deleted(7));
        assert_eq!(read(&k, "api", &t), Read::Forged);
        assert_eq!(read(&other, "web", &t), Read::Forged);
        let edited = String::from_utf8(t)
            .unwrap()
            .replace("\"generation\":7", "\"generation\":9");
        assert_eq!(read(&k, "web", edited.as_bytes()), Read::Forged);
        assert_eq!(read(&k, "web", b"{\"format\":1}"), Read::NotOne);
    }
}
