//! Session tickets: ChaCha20-Poly1305 under a random key that rustls's
//! `TicketRotator` replaces every `rotation` (the previous key still
//! decrypts for one more period, so tickets live at most twice that).
//! Our own ticketer only because rustls's is fixed at 6 hours.

use std::sync::Arc;
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::GetRandomFailed;
use rustls::server::ProducesTickets;
use rustls::ticketer::TicketRotator;

use super::TlsError;

/// A ticket producer whose keys rotate every `rotation` (at least 1 s).
pub fn rotating(rotation: Duration) -> Result<Arc<dyn ProducesTickets>, TlsError> {
    let secs = rotation.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
    Ok(Arc::new(TicketRotator::new(secs, TicketKey::generate)?))
}

/// One ticket key. Tickets are `nonce || ciphertext || tag`.
struct TicketKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("TicketKey")
    }
}

impl TicketKey {
    fn generate() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
        let rng = SystemRandom::new();
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(&mut bytes[..]).map_err(|_| GetRandomFailed)?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes[..]).map_err(|_| GetRandomFailed)?;
        Ok(Box::new(TicketKey {
            key: LessSafeKey::new(key),
            rng,
        }))
    }
}

impl ProducesTickets for TicketKey {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // The rotator reports the real lifetime; this one is not consulted.
        0
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        // One allocation: the tag is appended without growing.
        let tag_len = CHACHA20_POLY1305.tag_len();
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + tag_len);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = cipher.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_only_under_their_key() {
        let a = TicketKey::generate().unwrap();
        let b = TicketKey::generate().unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(a.decrypt(&t).unwrap(), b"session state");
        assert!(b.decrypt(&t).is_none());
        let mut bad = t.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(a.decrypt(&bad).is_none());
        assert!(a.decrypt(&t[..5]).is_none());
    }
}
