//! HTTP/2 specifics: many streams in flight on one connection, run in the
//! connection's task and their responses sent together (see
//! src/proxy/h2/), streams cancelled by the client, and the drain.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::common::backends::Nginx;
use crate::common::proxy::h2_connect;
use crate::common::wait_for;

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
    let rt = crate::common::current_thread_rt();
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

fn get(addr: SocketAddr, path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(Empty::<Bytes>::new())
        .expect("request")
}

#[test]
fn streams_the_client_cancels_leave_their_siblings_and_the_connection_intact() {
    let s = crate::Setup::start();
    let nginx = Nginx::start("h2cancel");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(nginx.www().join("f.bin"), &data).expect("write");
    let p = s.localhost_proxy(&[nginx.addr], "", "");
    let addr = p.addr;
    let ca = s.ca_path().to_path_buf();
    let rt = crate::common::current_thread_rt();
    let (kept, after) = rt.block_on(async move {
        let send = h2_connect(addr, &ca).await;
        // Every other stream is dropped after its first DATA frame: the
        // client resets it (CANCEL) while the proxy is still sending it.
        let requests = (0..16).map(|k| {
            let mut send = send.clone();
            async move {
                let resp = send
                    .send_request(get(addr, "/f.bin"))
                    .await
                    .expect("response");
                assert_eq!(resp.status(), 200);
                let mut body = resp.into_body();
                if k % 2 == 1 {
                    let first = body.frame().await.expect("a frame").expect("data");
                    assert!(first.is_data());
                    return None;
                }
                Some(body.collect().await.expect("body").to_bytes())
            }
        });
        let kept: Vec<Bytes> = futures_util::future::join_all(requests)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut send = send.clone();
        let resp = send.send_request(get(addr, "/f.bin")).await.expect("after");
        let after = resp.into_body().collect().await.expect("body").to_bytes();
        (kept, after)
    });
    assert_eq!(kept.len(), 8);
    for body in kept.iter().chain([&after]) {
        assert!(
            body[..] == data[..],
            "{} bytes, want {}",
            body.len(),
            data.len()
        );
    }
}

#[test]
fn a_stream_in_flight_when_the_proxy_drains_finishes_and_then_the_connection_ends() {
    let s = crate::Setup::start();
    let nginx = Nginx::start("h2drain");
    // Larger than the client's stream window: the proxy cannot send it
    // all until the client reads, so it is still sending at SIGTERM.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(nginx.www().join("big.bin"), &data).expect("write");
    let mut p = s.localhost_proxy(&[nginx.addr], "shutdown_timeout = \"20s\"", "");
    let addr = p.addr;
    let ca = s.ca_path().to_path_buf();
    let rt = crate::common::current_thread_rt();
    let (got, refused) = rt.block_on(async {
        let mut send = h2_connect(addr, &ca).await;
        let resp = send
            .send_request(get(addr, "/big.bin"))
            .await
            .expect("response");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let first = body.frame().await.expect("a frame").expect("data");
        got.extend_from_slice(first.data_ref().expect("data"));
        p.sigterm();
        wait_for("the listener to close", Duration::from_secs(5), || {
            std::net::TcpStream::connect(addr).err().map(|_| ())
        });
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.expect("frame").into_data() {
                got.extend_from_slice(&d);
            }
        }
        // Told to close (GOAWAY), the connection takes no new stream.
        let refused = match send.ready().await {
            Err(_) => true,
            Ok(()) => send.send_request(get(addr, "/big.bin")).await.is_err(),
        };
        (got, refused)
    });
    assert!(got == data, "{} bytes, want {}", got.len(), data.len());
    assert!(refused, "a new stream after the drain began was served");
    let exit = p.child.wait().expect("wait proxy");
    assert!(
        exit.success(),
        "proxy exit status after a clean drain: {exit}"
    );
}
