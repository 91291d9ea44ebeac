//! HTTP/2 specifics: many streams in flight on one connection, their
//! responses sent together (see `Coalesce` in src/proxy/h2.rs).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::common::backends::Nginx;
use crate::common::proxy::h2_connect;

#[test]
fn concurrent_streams_of_mixed_sizes_arrive_intact_on_one_connection() {
    let s = crate::Setup::start();
    let nginx = Nginx::start("h2many");
    // Empty, tiny, around a 1 KiB body, around one full DATA frame, past
    // the proxy's hold limit, and several frames and flow-control windows.
    let sizes = [
        0usize,
        1,
        1023,
        1025,
        16 * 1024 + 9,
        40_000,
        300_000,
        2 * 1024 * 1024 + 3,
    ];
    let mut files = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let mut data = vec![0u8; *n];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data)
            .expect("random");
        std::fs::write(nginx.www().join(format!("f{i}.bin")), &data).expect("write");
        files.push(data);
    }
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    let addr: SocketAddr = p.addr;
    let ca = s.ca_path().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let results = rt.block_on(async move {
        let send = h2_connect(addr, &ca).await;
        // Eight rounds over every size, all 64 requests in flight at once.
        let requests = (0..8 * sizes.len()).map(|k| {
            let mut send = send.clone();
            let i = k % sizes.len();
            async move {
                let req =
                    hyper::Request::get(format!("https://localhost:{}/f{i}.bin", addr.port()))
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                let resp = send.send_request(req).await.expect("response");
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (i, status, body)
            }
        });
        futures_util::future::join_all(requests).await
    });
    assert_eq!(results.len(), 8 * sizes.len());
    for (i, status, body) in results {
        assert_eq!(status, 200, "f{i}.bin");
        assert!(
            body[..] == files[i][..],
            "f{i}.bin: {} bytes, want {} (or different bytes)",
            body.len(),
            files[i].len()
        );
    }
}
