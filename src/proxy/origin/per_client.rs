//! Backend connections private to one client connection, for upstreams
//! that get a PROXY protocol v2 header: the header names the client, so
//! a connection that carries one must never serve another client (as
//! HAProxy does with `send-proxy-v2`). Each client connection keeps at
//! most one idle backend connection per backend for keep-alive.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proxy::origin::Pool;
use crate::sync::Locked;

/// The private backend pools of one client connection, by backend.
#[derive(Default)]
pub struct PerClientPools {
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
}

impl std::fmt::Debug for PerClientPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerClientPools")
    }
}

impl PerClientPools {
    /// This client's connections to `backend`: new ones start with a
    /// PROXY v2 header for `client` → `local`. One idle connection is
    /// kept (a second request in flight meanwhile gets its own rather
    /// than queue behind the first's body).
    pub fn to(
        &self,
        backend: SocketAddr,
        client: SocketAddr,
        local: SocketAddr,
        connect_timeout: Duration,
    ) -> Arc<Pool> {
        self.pools
            .locked()
            .entry(backend)
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    backend,
                    connect_timeout,
                    Some(proxy_v2_header(client, local)),
                    1,
                ))
            })
            .clone()
    }
}

const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// The PROXY protocol v2 header (PROXY command, TCP) for a connection
/// from `src` to `dst`. Mixed families are sent as IPv6.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21);
    match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_header_bytes() {
        let h = proxy_v2_header(
            "192.0.2.1:5000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(
            &h[16..28],
            &[192, 0, 2, 1, 10, 0, 0, 1, 0x13, 0x88, 0x01, 0xbb]
        );
        let h = proxy_v2_header("[::1]:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert_eq!((h[13], h.len()), (0x21, 16 + 36));
    }
}
