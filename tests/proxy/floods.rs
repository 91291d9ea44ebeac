//! Floods and slow clients: a thousand slowloris connections do not keep
//! others from being served and are closed at the header timeout;
//! connection and handshake floods stop at `max_connections` (connections
//! beyond it are reset as they are accepted), are closed at the handshake
//! timeout, and leave the proxy's memory where it was.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, https_get, metric, ProxyProc};
use crate::common::raw::{open_fds, rss_kib};
use crate::common::wait_for;
use crate::Setup;

/// A full handshake and one request on a new connection; its latency.
fn timed_get(p: &ProxyProc, ca: &std::path::Path) -> Duration {
    let start = Instant::now();
    let f = https_get(
        p.addr,
        "localhost",
        &client_config(ca, false, &[]),
        "/whoami",
    );
    assert_eq!((f.status, f.body.as_slice()), (200, &b"n1\n"[..]));
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn open_connections(p: &ProxyProc) -> f64 {
    metric(&p.metrics_text(), "vaultgate_proxy_connections_open", &[])
}

/// One slowloris connection: TLS, then a request head one byte at a time
/// that never ends. Returns how long after its first byte the proxy
/// closed it, or None if the proxy never did within `limit`.
async fn slowloris(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    every: Duration,
    limit: Duration,
    established: Arc<AtomicUsize>,
) -> Result<Option<Duration>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {e}"))?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let start = Instant::now();
    established.fetch_add(1, Ordering::Relaxed);
    let reader = async {
        let mut buf = [0u8; 512];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                // Whatever the proxy answers (408, 400), it must then close.
                Ok(_) => continue,
            }
        }
    };
    let writer = async {
        for i in 0.. {
            let b = head.get(i).copied().unwrap_or(b'a');
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                // Closed by the proxy: the reader sees it too.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        closed = reader => Ok(Some(closed)),
        _ = writer => unreachable!(),
        _ = tokio::time::sleep(limit) => Ok(None),
    }
}

#[test]
fn a_thousand_slowloris_connections_do_not_stop_other_clients_and_close_at_the_header_timeout() {
    const N: usize = 1000;
    let header_timeout = Duration::from_secs(4);
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        "header_timeout = \"4s\"\naccess_log = false",
        "",
    );
    let ca = s.ca_path().to_owned();

    let mut baseline: Vec<Duration> = (0..10).map(|_| timed_get(&p, &ca)).collect();
    baseline.sort();

    let established = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (addr, established) = (p.addr, established.clone());
        let cfg = client_config(&ca, false, &[b"http/1.1"]);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let tasks: Vec<_> = (0..N)
                    .map(|_| {
                        tokio::spawn(slowloris(
                            addr,
                            cfg.clone(),
                            Duration::from_millis(400),
                            Duration::from_secs(30),
                            established.clone(),
                        ))
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.expect("slowloris task"));
                }
                out
            })
        })
    };
    wait_for("all slowloris connections", Duration::from_secs(30), || {
        (established.load(Ordering::Relaxed) == N).then_some(())
    });
    let open_during = open_connections(&p);
    // A normal client while all of them trickle: new connections (full
    // handshakes) and requests on a keep-alive connection.
    let mut during = Vec::new();
    let mut keep_alive = crate::common::raw::tls_connect(p.addr, &ca, &[b"http/1.1"]);
    let window = Instant::now();
    while window.elapsed() < header_timeout / 2 {
        during.push(timed_get(&p, &ca));
        let start = Instant::now();
        std::io::Write::write_all(
            &mut keep_alive,
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .expect("keep-alive request");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nn1\n") {
            let n = keep_alive.read(&mut buf).expect("keep-alive response");
            assert!(n > 0, "keep-alive connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        during.push(start.elapsed());
    }
    let results = flood.join().expect("flood thread");
    during.sort();
    let mut closes: Vec<Duration> = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(Some(d)) => closes.push(d),
            Ok(None) => errors.push("never closed".to_owned()),
            Err(e) => errors.push(e),
        }
    }
    closes.sort();
    eprintln!(
        "slowloris: {N} connections ({open_during} open at the proxy); normal client latency before p50 {:?} max {:?}, during p50 {:?} p99 {:?} max {:?} ({} requests); closed after first byte: min {:?} p50 {:?} max {:?}",
        percentile(&baseline, 50),
        baseline[baseline.len() - 1],
        percentile(&during, 50),
        percentile(&during, 99),
        during[during.len() - 1],
        during.len(),
        closes.first(),
        closes.get(closes.len() / 2),
        closes.last(),
    );
    assert!(
        errors.is_empty(),
        "{} slowloris connections: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        open_during >= N as f64,
        "only {open_during} connections open at the proxy"
    );
    assert!(
        during.len() >= 10,
        "too few normal requests: {}",
        during.len()
    );
    assert!(
        during[during.len() - 1] < Duration::from_secs(1),
        "a normal request took {:?} during the slowloris",
        during[during.len() - 1]
    );
    // Closed at the header timeout: not before, and not long after.
    assert!(
        closes[0] >= header_timeout - Duration::from_millis(300),
        "closed early: {:?}",
        closes[0]
    );
    assert!(
        closes[closes.len() - 1] < header_timeout + Duration::from_secs(3),
        "closed late: {:?}",
        closes[closes.len() - 1]
    );
    drop(keep_alive);
    wait_for(
        "the slowloris connections to be gone",
        Duration::from_secs(5),
        || (open_connections(&p) <= 1.0).then_some(()),
    );
}

/// Opens up to `n` TCP connections that never say anything.
fn tcp_flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let out = out.clone();
            std::thread::spawn(move || {
                for _ in 0..n / 4 {
                    if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                        out.lock().unwrap().push(s);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    let socks = std::mem::take(&mut *out.lock().unwrap());
    socks
}

/// Waits until every socket has been closed by the proxy (EOF or reset).
fn wait_all_closed(socks: &mut [TcpStream], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut open = 0;
    for s in socks.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    open += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    open
}

/// Connections that send a ClientHello, read the proxy's answer (which
/// cost it a vault signature) and then stall, never finishing.
fn handshake_flood(addr: SocketAddr, ca: &std::path::Path, n: usize) -> Vec<TcpStream> {
    let cfg = client_config(ca, false, &[b"http/1.1"]);
    let out = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (out, cfg) = (out.clone(), cfg.clone());
            std::thread::spawn(move || {
                for _ in 0..n / 8 {
                    let Ok(mut sock) =
                        TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                    else {
                        continue;
                    };
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
                    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).expect("conn");
                    // ClientHello out; ServerHello..Finished in; then nothing.
                    let _ = conn.write_tls(&mut sock);
                    let _ = conn.read_tls(&mut sock);
                    out.lock().unwrap().push(sock);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    let socks = std::mem::take(&mut *out.lock().unwrap());
    socks
}

#[test]
fn connection_and_handshake_floods_stop_at_max_connections_and_memory_stays_bounded() {
    const LIMIT: usize = 200;
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        &format!("max_connections = {LIMIT}\nhandshake_timeout = \"500ms\"\naccess_log = false"),
        "",
    );
    let ca = s.ca_path().to_owned();
    let pid = p.pid();
    for _ in 0..20 {
        timed_get(&p, &ca);
    }
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);

    // Watch the proxy while it is flooded: open connections (its own
    // gauge), file descriptors and memory, every 50 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let metrics = p.metrics.expect("metrics");
        std::thread::spawn(move || {
            let (mut open, mut fds, mut rss) = (0f64, 0usize, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let text = crate::common::vault::http_get(metrics, "/metrics");
                open = open.max(metric(&text, "vaultgate_proxy_connections_open", &[]));
                fds = fds.max(open_fds(pid));
                rss = rss.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            (open, fds, rss)
        })
    };

    let mut rounds = Vec::new();
    let mut flooded = 0;
    for round in 0..2 {
        // Connection flood: far more than the limit, saying nothing. The
        // proxy holds at most LIMIT; it resets the rest as it accepts them.
        let start = Instant::now();
        let mut socks = tcp_flood(p.addr, 1200);
        let connected = socks.len();
        // Each is closed at the handshake timeout, LIMIT at a time.
        let left_open = wait_all_closed(&mut socks, Duration::from_secs(20));
        drop(socks);
        let drained = start.elapsed();

        // Handshake flood: ClientHellos that cost a signature each, then
        // silence.
        let start = Instant::now();
        let mut socks = handshake_flood(p.addr, &ca, 600);
        let handshakes = socks.len();
        let hs_left_open = wait_all_closed(&mut socks, Duration::from_secs(20));
        drop(socks);
        let hs_drained = start.elapsed();

        // Right after, a normal client is served at once.
        let latency = timed_get(&p, &ca);
        wait_for(
            "the flood connections to be gone",
            Duration::from_secs(5),
            || (open_connections(&p) <= 0.0).then_some(()),
        );
        let rss = rss_kib(pid);
        eprintln!(
            "flood round {round}: {connected} TCP connections, all closed by the proxy after {drained:?} ({left_open} left open); {handshakes} stalled handshakes closed after {hs_drained:?} ({hs_left_open} left open); next request {latency:?}; RSS {rss} KiB"
        );
        assert_eq!(
            left_open, 0,
            "round {round}: TCP flood connections never closed"
        );
        assert_eq!(
            hs_left_open, 0,
            "round {round}: stalled handshakes never closed"
        );
        assert!(
            connected >= 3 * LIMIT,
            "round {round}: only {connected} connections made"
        );
        assert!(
            latency < Duration::from_secs(1),
            "round {round}: {latency:?}"
        );
        rounds.push(rss);
        flooded += connected + handshakes;
    }
    stop.store(true, Ordering::Relaxed);
    let (max_open, max_fds, max_rss) = watcher.join().expect("watcher");
    let m = p.metrics_text();
    let timeouts = metric(
        &m,
        "vaultgate_proxy_handshake_failures_total",
        &["reason=\"timeout\""],
    );
    let shed = metric(&m, "vaultgate_proxy_connections_shed_total", &[]);
    eprintln!(
        "floods: max open {max_open} (limit {LIMIT}), fds before {fds_before} max {max_fds}, RSS before {rss_before} KiB, peak {max_rss} KiB, after rounds {rounds:?} KiB, handshake timeouts {timeouts}, reset at the limit {shed}"
    );
    assert!(
        max_open <= LIMIT as f64,
        "{max_open} connections open, limit {LIMIT}"
    );
    assert!(
        max_fds <= fds_before + LIMIT + 16,
        "the proxy held {max_fds} descriptors (before: {fds_before}, limit {LIMIT})"
    );
    // Every flood connection was ended by the handshake timeout or reset
    // at the limit, and the limit was reached.
    assert!(shed > 0.0, "no connection was reset at the limit");
    assert!(
        timeouts + shed >= flooded as f64,
        "{timeouts} handshake timeouts and {shed} resets for {flooded} flood connections"
    );
    // Memory: bounded while flooded, and no growth from one round to the next.
    let peak_growth = max_rss.saturating_sub(rss_before);
    assert!(
        peak_growth < 64 * 1024,
        "RSS grew {peak_growth} KiB under the flood"
    );
    let round_growth = rounds[1].saturating_sub(rounds[0]);
    assert!(
        round_growth < 8 * 1024,
        "RSS grew {round_growth} KiB from round 1 to round 2"
    );
}

#[test]
fn a_connection_beyond_max_connections_is_reset_at_once_and_a_freed_slot_serves_again() {
    const LIMIT: usize = 20;
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    // A long handshake timeout: a connection left waiting for a slot
    // would wait this long; one reset at the limit does not.
    let p = s.localhost_proxy(
        &[nginx.addr],
        &format!("max_connections = {LIMIT}\nhandshake_timeout = \"30s\""),
        "",
    );
    let ca = s.ca_path().to_owned();
    let mut held: Vec<TcpStream> = (0..LIMIT)
        .map(|_| TcpStream::connect(p.addr).expect("connect"))
        .collect();
    wait_for(
        "the proxy to hold the limit",
        Duration::from_secs(10),
        || (open_connections(&p) >= LIMIT as f64).then_some(()),
    );

    let start = Instant::now();
    // The reset can be so quick that it lands before `connect` has
    // returned, which then reports it: that is the behaviour under test.
    let left_open = match TcpStream::connect(p.addr) {
        Ok(mut extra) => wait_all_closed(std::slice::from_mut(&mut extra), Duration::from_secs(10)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("connect beyond the limit: {e}"),
    };
    let reset_after = start.elapsed();
    assert_eq!(
        left_open, 0,
        "the connection beyond the limit was not closed"
    );
    assert!(
        reset_after < Duration::from_secs(5),
        "closed after {reset_after:?}: it waited for a slot"
    );
    let m = p.metrics_text();
    assert_eq!(
        metric(&m, "vaultgate_proxy_connections_shed_total", &[]),
        1.0,
        "{m}"
    );

    // A slot freed is a slot served.
    held.pop();
    wait_for("a slot to free", Duration::from_secs(10), || {
        (open_connections(&p) < LIMIT as f64).then_some(())
    });
    let latency = timed_get(&p, &ca);
    eprintln!(
        "reset beyond the limit after {reset_after:?}; next request in a freed slot {latency:?}"
    );
    drop(held);
}

/// How long until the proxy closes a connection that completed TLS, sent
/// `at_once`, then `trickled` one byte every 100 ms, and nothing more
/// (None: still open after 40 s).
fn closed_after(
    p: &ProxyProc,
    ca: &std::path::Path,
    alpn: &[u8],
    at_once: &[u8],
    trickled: &[u8],
) -> Option<Duration> {
    use std::io::Write;
    let mut t = crate::common::raw::tls_connect(p.addr, ca, &[alpn]);
    let start = Instant::now();
    let _ = t.write_all(at_once);
    for b in trickled {
        if t.write_all(&[*b]).and_then(|()| t.flush()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let quiet = Duration::from_secs(40);
    let (_, closed) = crate::common::raw::read_until_quiet(&mut t, quiet, quiet);
    closed.then(|| start.elapsed())
}

#[test]
fn a_client_that_never_finishes_its_first_request_is_closed_at_the_header_timeout() {
    use crate::common::raw::{frame, h2_request, END_STREAM, HEADERS, PREFACE, SETTINGS};
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        "header_timeout = \"500ms\"\nidle_timeout = \"5s\"",
        "",
    );
    let ca = s.ca_path().to_owned();
    let mut h2_open = PREFACE.to_vec();
    h2_open.extend(frame(SETTINGS, 0, 0, &[]));
    // HEADERS without END_HEADERS, and no CONTINUATION ever.
    h2_open.extend(frame(
        HEADERS,
        END_STREAM,
        1,
        &h2_request("GET", "/whoami", &[]),
    ));
    // What, ALPN, sent at once, then trickled.
    type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8]);
    let cases: [Case; 4] = [
        ("silent after TLS", b"http/1.1", b"", b""),
        (
            "HTTP/1.1 head, a byte at a time",
            b"http/1.1",
            b"",
            b"GET /whoami HTTP/1.1\r\nHo",
        ),
        ("h2 preface, a byte at a time", b"h2", b"", &PREFACE[..12]),
        ("h2 HEADERS never ended", b"h2", &h2_open, b""),
    ];
    let mut late = Vec::new();
    for (what, alpn, at_once, trickled) in cases {
        let took = closed_after(&p, &ca, alpn, at_once, trickled);
        let budget =
            Duration::from_millis(100) * trickled.len() as u32 + Duration::from_millis(1500);
        eprintln!("{what}: closed after {took:?} (budget {budget:?})");
        if took.is_none_or(|t| t > budget) {
            late.push(format!("{what}: closed after {took:?}"));
        }
    }
    assert!(
        late.is_empty(),
        "header_timeout 500ms, idle_timeout 5s: {late:?}"
    );
}

/// One HPACK-bomb connection, as it ended.
struct Bombed {
    /// From the first bomb block to the GOAWAY, if one came.
    cut_after: Option<Duration>,
    /// The GOAWAY's error code and debug data.
    code: Option<(u32, Vec<u8>)>,
    blocks: usize,
}

/// An HPACK bomb: a request that puts a field of `value_len` bytes into
/// the dynamic table, then, as fast as the proxy reads them, header blocks
/// of `refs` one-byte references to it (each decoding to more than
/// `max_header_size` and less than h2's own limit of four times that),
/// until the proxy sends GOAWAY or `limit` passes.
fn hpack_bomb(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    value_len: usize,
    refs: usize,
    limit: Duration,
) -> Result<Bombed, String> {
    use crate::common::raw::{
        frame, h2_request, hpack_indexed, try_tls_connect, END_HEADERS, END_STREAM, GOAWAY,
        HEADERS, PREFACE, SETTINGS,
    };
    use std::io::Write;
    let mut t = try_tls_connect(addr, cfg, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let mut first = h2_request("GET", "/whoami", &[]);
    first.extend(hpack_indexed("x-bomb", &vec![b'b'; value_len]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &first));
    t.write_all(&out)
        .map_err(|e| format!("first request: {e}"))?;
    let mut bomb = h2_request("GET", "/whoami", &[]);
    bomb.extend(std::iter::repeat_n(0xbe, refs));
    let (mut got, mut at) = (Vec::new(), 0);
    let mut buf = [0u8; 16 * 1024];
    let mut stream = 3u32;
    let start = Instant::now();
    let mut blocks = 0;
    while start.elapsed() < limit {
        let mut batch = Vec::new();
        for _ in 0..4 {
            batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &bomb));
            stream += 2;
        }
        // Written to a connection that lingers after a GOAWAY: the proxy
        // reads and drops; a write error means it closed.
        let _ = t.write_all(&batch);
        blocks += 4;
        let _ = t.sock.set_read_timeout(Some(Duration::from_millis(1)));
        loop {
            match t.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        while got.len() >= at + 9 {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            if got.len() < at + 9 + len {
                break;
            }
            if got[at + 3] == GOAWAY && len >= 8 {
                let code = u32::from_be_bytes(got[at + 13..at + 17].try_into().expect("4"));
                let debug = got[at + 17..at + 9 + len].to_vec();
                return Ok(Bombed {
                    cut_after: Some(start.elapsed()),
                    code: Some((code, debug)),
                    blocks,
                });
            }
            at += 9 + len;
        }
    }
    Ok(Bombed {
        cut_after: None,
        code: None,
        blocks,
    })
}

#[test]
fn hpack_bombs_are_cut_off_with_enhance_your_calm_and_a_normal_client_keeps_its_latency() {
    let s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(&[nginx.addr], "access_log = false", "");
    let ca = s.ca_path().to_owned();
    let addr = p.addr;
    let cut_limit = Duration::from_secs(2);
    let window = Duration::from_secs(3);

    // The normal client: one HTTP/2 connection, one request at a time;
    // its latencies before the bombs, and while they run.
    let (to_normal, phase) = std::sync::mpsc::channel::<()>();
    let (normal_ready, ready) = std::sync::mpsc::channel::<()>();
    let normal = {
        let ca = ca.clone();
        std::thread::spawn(move || {
            let rt = crate::common::current_thread_rt();
            rt.block_on(async move {
                let send = crate::common::proxy::h2_connect(addr, &ca).await;
                let get = || {
                    let req =
                        hyper::Request::get(format!("https://localhost:{}/whoami", addr.port()))
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .expect("request");
                    let start = Instant::now();
                    let mut send = send.clone();
                    async move {
                        let resp = send.send_request(req).await.expect("normal response");
                        assert_eq!(resp.status(), 200);
                        http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .expect("body");
                        start.elapsed()
                    }
                };
                let mut quiet = Vec::new();
                for _ in 0..200 {
                    quiet.push(get().await);
                }
                normal_ready.send(()).expect("ready");
                let _ = phase.recv();
                let mut during = Vec::new();
                let start = Instant::now();
                while start.elapsed() < window {
                    during.push(get().await);
                }
                (quiet, during)
            })
        })
    };
    ready.recv().expect("the normal client's quiet phase");
    drop(to_normal);

    // Two bombers, each reconnecting as soon as it is cut off: a 4 KiB
    // field named 60 times a block (~240 KiB from 60 bytes), and a
    // 38-byte field named 6,800 times (~258 KiB from 7 KiB, thousands of
    // fields to decode).
    let bombers: Vec<_> = [(4000usize, 60usize), (0, 6800)]
        .into_iter()
        .map(|(value_len, refs)| {
            let cfg = client_config(&ca, false, &[b"h2"]);
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut out = Vec::new();
                while start.elapsed() < window {
                    match hpack_bomb(addr, &cfg, value_len, refs, cut_limit) {
                        Ok(b) => {
                            let never = b.cut_after.is_none();
                            out.push(Ok(b));
                            if never {
                                break;
                            }
                        }
                        Err(e) => {
                            out.push(Err(e));
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let results: Vec<Vec<Result<Bombed, String>>> = bombers
        .into_iter()
        .map(|b| b.join().expect("bomber"))
        .collect();
    let (mut quiet, mut during) = normal.join().expect("normal client");
    quiet.sort();
    during.sort();
    let mut problems = Vec::new();
    let mut cut = 0usize;
    for (i, r) in results.iter().enumerate() {
        let conns = r.len();
        let blocks: Vec<usize> = r
            .iter()
            .filter_map(|b| b.as_ref().ok().map(|b| b.blocks))
            .collect();
        let mut after: Vec<Duration> = r
            .iter()
            .filter_map(|b| b.as_ref().ok()?.cut_after)
            .collect();
        after.sort();
        eprintln!(
            "bomber {i}: {conns} connections, blocks written per connection max {:?}, cut off after p50 {:?} max {:?}",
            blocks.iter().max(),
            after.get(after.len() / 2),
            after.last()
        );
        for b in r {
            match b {
                // The proxy's GOAWAY, not h2's own (it has limits of its
                // own that these blocks stay under).
                Ok(Bombed {
                    code: Some((0xb, debug)),
                    cut_after: Some(_),
                    ..
                }) if debug == b"header_decode_budget" => cut += 1,
                Ok(Bombed { code, blocks, .. }) => problems.push(format!(
                    "bomber {i}: {blocks} blocks, not cut off with ENHANCE_YOUR_CALM within {cut_limit:?} (GOAWAY {:?})",
                    code.as_ref().map(|(c, d)| (c, String::from_utf8_lossy(d)))
                )),
                Err(e) => problems.push(format!("bomber {i}: {e}")),
            }
        }
    }
    eprintln!(
        "normal client: quiet p50 {:?} p99 {:?} ({} requests); during the bombs p50 {:?} p99 {:?} max {:?} ({} requests)",
        percentile(&quiet, 50),
        percentile(&quiet, 99),
        quiet.len(),
        percentile(&during, 50),
        percentile(&during, 99),
        during[during.len() - 1],
        during.len(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let counted = metric(
        &p.metrics_text(),
        "vaultgate_proxy_h2_abuse_total",
        &["reason=\"hpack\""],
    );
    assert_eq!(
        counted, cut as f64,
        "connections cut off: {cut}, counted: {counted}"
    );
    // Measured in this run: a generous multiple of the quiet p99, plus a
    // little for the CPU the bombers' own reconnections take.
    let bound = percentile(&quiet, 99) * 10 + Duration::from_millis(20);
    assert!(
        percentile(&during, 99) < bound,
        "the normal client's p99 went from {:?} to {:?} (bound {bound:?})",
        percentile(&quiet, 99),
        percentile(&during, 99),
    );
}
