//! Faults under load: the vault killed (and restarted by hand or by
//! `vaultgate run`), the vault failing over to a second one, backends
//! killed or frozen and returning. Concurrent clients run throughout;
//! every request is timed and its outcome kept, and the claims are checked
//! against those records: which requests may fail, how fast, and when
//! everything works again.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::backends::Nginx;
use crate::common::proxy::{client_config, metric, ProxyProc};
use crate::common::raw::{keep_alive_get, tls_error, try_tls_connect};
use crate::common::wait_for;
use crate::Setup;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Requests on one keep-alive connection opened before any fault.
    KeepAlive,
    /// A new connection per request, resuming the client's TLS session.
    Resumed,
    /// A new connection per request, a full handshake (no resumption).
    Full,
}

#[derive(Debug, Clone)]
struct Event {
    kind: Kind,
    start: Instant,
    took: Duration,
    /// The body on a 200; otherwise what went wrong.
    result: Result<String, String>,
    resumed: bool,
}

/// Concurrent clients of each kind, each recording every request.
struct Load {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    threads: Vec<JoinHandle<()>>,
}

const PACE: Duration = Duration::from_millis(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn one_shot(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    path: &str,
) -> (Result<String, String>, bool) {
    let mut t = match try_tls_connect(addr, cfg, IO_TIMEOUT) {
        Ok(t) => t,
        Err(e) => return (Err(format!("handshake: {}", tls_error(&e))), false),
    };
    let resumed = matches!(
        t.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if let Err(e) = t.write_all(req.as_bytes()) {
        return (Err(format!("write: {e}")), resumed);
    }
    let mut raw = Vec::new();
    let _ = t.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let result = match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        Some((head, _)) => Err(head.lines().next().unwrap_or("").to_owned()),
        None => Err(format!("no response: {text:?}")),
    };
    (result, resumed)
}

impl Load {
    fn start(addr: SocketAddr, ca: &Path, mix: &[(Kind, usize)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for &(kind, n) in mix {
            for _ in 0..n {
                let (stop, events, ca) = (stop.clone(), events.clone(), ca.to_owned());
                threads.push(std::thread::spawn(move || {
                    client(kind, addr, &ca, &stop, &events)
                }));
            }
        }
        Load {
            stop,
            events,
            threads,
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `n` requests of `kind` started after `since` have had
    /// the outcome `ok`.
    fn wait(&self, kind: Kind, ok: bool, since: Instant, n: usize, limit: Duration) {
        let what = format!(
            "{n} {} {kind:?} requests",
            if ok { "good" } else { "failed" }
        );
        wait_for(&what, limit, || {
            let c = self
                .events()
                .iter()
                .filter(|e| e.kind == kind && e.start >= since && e.result.is_ok() == ok)
                .count();
            (c >= n).then_some(())
        });
    }

    fn finish(self) -> Vec<Event> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let mut e = self.events.lock().unwrap().clone();
        e.sort_by_key(|e| e.start);
        e
    }
}

fn client(kind: Kind, addr: SocketAddr, ca: &Path, stop: &AtomicBool, events: &Mutex<Vec<Event>>) {
    let path = "/whoami";
    let resuming = client_config(ca, false, &[b"http/1.1"]);
    let full = {
        let mut c = (*resuming).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let (result, resumed) = match kind {
            Kind::Full => one_shot(addr, &full, path),
            Kind::Resumed => one_shot(addr, &resuming, path),
            Kind::KeepAlive => {
                if conn.is_none() {
                    conn = Some(try_tls_connect(addr, &resuming, IO_TIMEOUT));
                }
                match conn.as_mut().expect("set") {
                    Err(e) => {
                        let e = format!("reconnect: {}", tls_error(e));
                        conn = None;
                        (Err(e), false)
                    }
                    Ok(t) => match keep_alive_get(t, path) {
                        Ok((200, body)) => (Ok(String::from_utf8_lossy(&body).into_owned()), false),
                        Ok((status, _)) => (Err(format!("status {status}")), false),
                        Err(e) => {
                            conn = None;
                            (Err(e), false)
                        }
                    },
                }
            }
        };
        events.lock().unwrap().push(Event {
            kind,
            start,
            took: start.elapsed(),
            result,
            resumed,
        });
        std::thread::sleep(PACE);
    }
}

/// Whether a vault answers a ping on `socket` within 200 ms.
fn vault_answers(socket: &std::path::Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut out = bytes::BytesMut::new();
    let ping = vaultgate::protocol::Request::Ping {
        payload: b"up?".to_vec(),
    };
    if ping.to_frame(1).encode(&mut out).is_err() || s.write_all(&out).is_err() {
        return false;
    }
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 512];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match vaultgate::protocol::frame::decode(&mut buf) {
            Ok(Some(f)) => return f.request_id == 1,
            Ok(None) => continue,
            Err(_) => return false,
        }
    }
}

fn of(events: &[Event], kind: Kind) -> impl Iterator<Item = &Event> {
    events.iter().filter(move |e| e.kind == kind)
}

/// When full handshakes work again for good: the start of the first
/// request of the unbroken run of successes that ends the record.
fn recovered_at(events: &[Event]) -> Option<Instant> {
    let full: Vec<&Event> = of(events, Kind::Full).collect();
    let last_failure = full.iter().rposition(|e| e.result.is_err());
    let first_good = match last_failure {
        Some(i) => full.get(i + 1)?,
        None => full.first()?,
    };
    Some(first_good.start)
}

/// The failed requests of `kind`, described (the first 10).
fn failures(events: &[Event], kind: Kind) -> Vec<String> {
    let all: Vec<String> = of(events, kind)
        .filter_map(|e| {
            e.result
                .as_ref()
                .err()
                .map(|r| format!("{r} after {:?}", e.took))
        })
        .collect();
    let n = all.len();
    all.into_iter()
        .take(10)
        .chain((n > 10).then(|| format!("... {n} in all")))
        .collect()
}

/// While the vault is down, what the issue asks of each kind of client,
/// checked on the record of a load run: `down` is (when the kill was
/// sent, when the vault was known dead, when it was started again),
/// `back` when it answered again.
fn check_vault_outage(
    events: &[Event],
    down: (Instant, Instant, Instant),
    back: Instant,
    sign_timeout: Duration,
) -> usize {
    let (killing, killed, restarting) = down;
    // Established keep-alive connections and resumed handshakes: no errors at all.
    let ka = failures(events, Kind::KeepAlive);
    assert!(ka.is_empty(), "keep-alive requests failed: {ka:?}");
    let res = failures(events, Kind::Resumed);
    assert!(res.is_empty(), "resumed requests failed: {res:?}");
    let in_outage =
        |e: &&Event| e.start > killed + Duration::from_millis(20) && e.start < restarting;
    let ka_down = of(events, Kind::KeepAlive).filter(in_outage).count();
    let res_down: Vec<&Event> = of(events, Kind::Resumed).filter(in_outage).collect();
    assert!(
        ka_down >= 10,
        "only {ka_down} keep-alive requests while the vault was down"
    );
    assert!(
        res_down.len() >= 10,
        "only {} resumed requests while the vault was down",
        res_down.len()
    );
    assert!(
        res_down.iter().all(|e| e.resumed),
        "a handshake without the vault was not resumed"
    );

    // Full handshakes while it is down: every one fails, with an alert,
    // within the signature timeout; none hangs.
    let full_down: Vec<&Event> = of(events, Kind::Full).filter(in_outage).collect();
    let mut kinds = std::collections::BTreeMap::new();
    for e in &full_down {
        *kinds
            .entry(format!("{:?}", e.result.as_ref().err()))
            .or_insert(0) += 1;
    }
    eprintln!("outage full handshake outcomes: {kinds:?}");
    assert!(
        full_down.len() >= 10,
        "only {} full handshakes while the vault was down",
        full_down.len()
    );
    for e in &full_down {
        let err = e
            .result
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("a full handshake succeeded without a vault: {e:?}"));
        assert!(
            err.contains("tls: received fatal alert"),
            "not an alert: {err}"
        );
        assert!(
            e.took < sign_timeout + Duration::from_millis(300),
            "failed after {:?} (sign timeout {sign_timeout:?}): {err}",
            e.took
        );
    }
    let slowest = full_down.iter().map(|e| e.took).max().unwrap_or_default();
    // Before the kill every full handshake worked (one in flight as the
    // signal lands may end with a bare close: rustls sends no alert when a
    // signature fails).
    let before: Vec<String> = of(events, Kind::Full)
        .filter(|e| e.start + e.took < killing)
        .filter_map(|e| e.result.clone().err())
        .collect();
    assert!(
        before.is_empty(),
        "full handshakes failed before the kill: {before:?}"
    );
    // Back within a second of the vault answering, and for good.
    let recovered = recovered_at(events).expect("full handshakes after the restart");
    let delay = recovered.saturating_duration_since(back);
    eprintln!(
        "vault outage: {ka_down} keep-alive and {} resumed requests served while down; {} full handshakes refused (slowest alert {slowest:?}); full handshakes back {delay:?} after the vault answered",
        res_down.len(),
        full_down.len()
    );
    assert!(
        delay < Duration::from_secs(1),
        "full handshakes came back {delay:?} after the vault"
    );
    full_down.len()
}

const MIX: [(Kind, usize); 3] = [(Kind::KeepAlive, 3), (Kind::Resumed, 3), (Kind::Full, 3)];

#[test]
fn a_vault_killed_under_load_spares_established_and_resumed_connections_and_full_handshakes_fail_fast_then_recover(
) {
    let sign_timeout = Duration::from_millis(200);
    let mut s = Setup::start();
    let nginx = Nginx::start("n1");
    let p = s.localhost_proxy(
        &[nginx.addr],
        "sign_timeout = \"200ms\"\naccess_log = false",
        "",
    );
    let load = Load::start(p.addr, s.ca_path(), &MIX);
    let t0 = Instant::now();
    for (kind, _) in MIX {
        load.wait(kind, true, t0, 10, Duration::from_secs(10));
    }

    let killing = Instant::now();
    s.vault.kill9();
    let killed = Instant::now();
    // Down long enough for each kind of client to show what it does, and
    // for the signer's reconnect backoff to grow.
    load.wait(Kind::Full, false, killed, 20, Duration::from_secs(10));
    load.wait(Kind::Resumed, true, killed, 20, Duration::from_secs(10));
    load.wait(Kind::KeepAlive, true, killed, 20, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(killed.elapsed()));

    let restarting = Instant::now();
    s.vault.restart();
    let back = Instant::now();
    load.wait(Kind::Full, true, back, 20, Duration::from_secs(10));
    let events = load.finish();
    let refused = check_vault_outage(&events, (killing, killed, restarting), back, sign_timeout);
    let m = p.metrics_text();
    let vault_failures = metric(
        &m,
        "vaultgate_proxy_vault_errors_total",
        &["reason=\"unavailable\""],
    );
    assert!(
        vault_failures >= refused as f64,
        "{vault_failures} handshakes refused for want of a vault counted, {refused} seen"
    );
}

#[test]
fn a_vault_killed_under_vaultgate_run_is_restarted_and_full_handshakes_recover_within_a_second() {
    let nginx = Nginx::start("n1");
    let dir = tempfile::Builder::new()
        .prefix("vg-fault-")
        .tempdir_in("/tmp")
        .expect("temp");
    let cfg = super::run::run_config(dir.path(), nginx.addr);
    // The shipped sign_timeout (100ms), access log off to keep the load cheap.
    let text = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace("access_log = true", "access_log = false");
    std::fs::write(&cfg, text).expect("config");
    let p = ProxyProc::spawn(dir.path(), &["run", "--config", &cfg.display().to_string()]);
    let ca = dir.path().join("certs/dev-ca.pem");
    let socket = dir.path().join("var/vault.sock");
    let vault_pid = p.vault_pid();
    let load = Load::start(p.addr, &ca, &MIX);
    let t0 = Instant::now();
    for (kind, _) in MIX {
        load.wait(kind, true, t0, 10, Duration::from_secs(10));
    }

    let killing = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vault_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill vault");
    // kill() returns before the process is gone: wait until run has
    // reaped it, so the socket that answers next is the new vault's.
    wait_for("the vault to die", Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{vault_pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    });
    // Dead for sure from here: a handshake signed just before cannot pass
    // for a recovery.
    let killed = Instant::now();
    // The socket file stays behind a SIGKILL; the restarted vault answers
    // a ping on it again: that is "back". (A bare connect is not enough:
    // the dead vault's listener can take connections while its last
    // threads exit.)
    let back = wait_for(
        "the restarted vault to answer",
        Duration::from_secs(15),
        || vault_answers(&socket).then(Instant::now),
    );
    load.wait(Kind::Full, true, back, 20, Duration::from_secs(10));
    let events = load.finish();
    // "Down" ends when run started the vault again, which is at most its
    // answering; the check uses the conservative end.
    let restarting = back.min(
        of(&events, Kind::Full)
            .find(|e| e.start > killed && e.result.is_ok())
            .map_or(back, |e| e.start),
    );
    eprintln!(
        "vaultgate run: vault dead {:?} after the kill signal, answered again {:?} after that",
        killed - killing,
        back - killed
    );
    check_vault_outage(
        &events,
        (killing, killed, restarting),
        back,
        Duration::from_millis(100),
    );
    assert!(p.log().contains("vault child died"), "{}", p.log());
}

#[test]
fn with_two_vaults_a_killed_one_fails_over_and_no_full_handshake_fails() {
    let mut s = Setup::start();
    let nginx = Nginx::start("n1");
    let (mut standby, p) = s.two_vault_proxy(&[nginx.addr], "access_log = false");
    let failovers = || {
        metric(
            &p.metrics_text(),
            "vaultgate_proxy_vault_failovers_total",
            &[],
        )
    };
    let load = Load::start(
        p.addr,
        s.ca_path(),
        &[(Kind::Full, 4), (Kind::KeepAlive, 2)],
    );
    let t0 = Instant::now();
    load.wait(Kind::Full, true, t0, 20, Duration::from_secs(10));

    // The primary dies mid-load: its signatures move to the standby.
    s.vault.kill9();
    let killed = Instant::now();
    load.wait(Kind::Full, true, killed, 40, Duration::from_secs(10));
    // It returns: signatures move back to it (the first live socket wins).
    s.vault.restart();
    let back = Instant::now();
    wait_for(
        "the failback to the primary",
        Duration::from_secs(5),
        || (failovers() >= 2.0).then_some(()),
    );
    load.wait(Kind::Full, true, back, 40, Duration::from_secs(10));
    // The standby dies: nothing to notice.
    standby.kill9();
    let standby_killed = Instant::now();
    load.wait(
        Kind::Full,
        true,
        standby_killed,
        40,
        Duration::from_secs(10),
    );
    let events = load.finish();
    let full = of(&events, Kind::Full).count();
    let failed: Vec<String> = failures(&events, Kind::Full);
    let ka_failed = failures(&events, Kind::KeepAlive);
    let n = failovers();
    eprintln!(
        "failover: {full} full handshakes across primary kill, restart and standby kill, {} failed; {} keep-alive requests, {} failed; {n} failovers",
        failed.len(),
        of(&events, Kind::KeepAlive).count(),
        ka_failed.len()
    );
    assert!(failed.is_empty(), "full handshakes failed: {failed:?}");
    assert!(
        ka_failed.is_empty(),
        "keep-alive requests failed: {ka_failed:?}"
    );
    assert!(n >= 2.0, "failovers: {n}");
}

/// Requests that were in flight at `at`: started before it, not yet done.
fn in_flight_at(events: &[Event], at: Instant) -> usize {
    events
        .iter()
        .filter(|e| e.start <= at && e.start + e.took > at)
        .count()
}

fn bodies_after(events: &[Event], after: Instant) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.start > after)
        .filter_map(|e| e.result.clone().ok())
        .collect()
}

fn health(interval: &str) -> String {
    format!(
        "response_timeout = \"1s\"\n[proxy.upstream.web.health]\npath = \"/whoami\"\ninterval = \"{interval}\"\ntimeout = \"300ms\"\nhealthy = 2\nunhealthy = 1\n"
    )
}

#[test]
fn a_backend_killed_under_load_fails_only_requests_in_flight_on_it_and_returns_by_itself() {
    let s = Setup::start();
    let mut n1 = Nginx::start("n1");
    let n2 = Nginx::start("n2");
    let p = s.localhost_proxy(&[n1.addr, n2.addr], "access_log = false", &health("100ms"));
    let load = Load::start(p.addr, s.ca_path(), &[(Kind::KeepAlive, 8)]);
    let t0 = Instant::now();
    load.wait(Kind::KeepAlive, true, t0, 200, Duration::from_secs(10));

    n1.stop(); // SIGKILL: requests on it die with it
    let killed = Instant::now();
    load.wait(Kind::KeepAlive, true, killed, 300, Duration::from_secs(10));
    let bodies = bodies_after(&load.events(), killed + Duration::from_millis(500));
    assert!(
        bodies.iter().all(|b| b == "n2\n"),
        "n1 is dead but answered? {bodies:?}"
    );

    n1.restart();
    let restarted = Instant::now();
    // The health check (2 passes, 100 ms apart) brings it back.
    wait_for("n1 to get traffic again", Duration::from_secs(5), || {
        bodies_after(&load.events(), restarted)
            .iter()
            .any(|b| b == "n1\n")
            .then_some(())
    });
    let returned = restarted.elapsed();
    load.wait(
        Kind::KeepAlive,
        true,
        restarted + returned,
        200,
        Duration::from_secs(10),
    );
    let events = load.finish();

    let at_kill = in_flight_at(&events, killed);
    let failed: Vec<&Event> = events.iter().filter(|e| e.result.is_err()).collect();
    let last_n1 = events
        .iter()
        .filter(|e| e.start < killed && e.result.as_deref() == Ok("n1\n"))
        .count();
    eprintln!(
        "backend killed: {} requests, {at_kill} in flight at the kill, {} failed, n1 back {returned:?} after its restart; {last_n1} served by n1 before",
        events.len(),
        failed.len()
    );
    // Only what was on the dead backend at the moment it died may fail.
    for e in &failed {
        assert!(
            e.start <= killed,
            "a request started {:?} after the kill failed: {:?}",
            e.start - killed,
            e.result
        );
    }
    assert!(
        failed.len() <= at_kill,
        "{} failures, {at_kill} requests in flight at the kill",
        failed.len()
    );
    let after_return: Vec<String> = bodies_after(&events, restarted + returned);
    assert!(
        after_return.iter().any(|b| b == "n2\n"),
        "traffic not shared again after n1 returned"
    );
    let log = p.log();
    assert!(log.contains("backend healthy again"), "{log}");
}

#[test]
fn a_frozen_backend_is_taken_out_by_the_health_check_and_only_requests_sent_before_fail() {
    let s = Setup::start();
    let n1 = Nginx::start("n1");
    let n2 = Nginx::start("n2");
    let p = s.localhost_proxy(&[n1.addr, n2.addr], "access_log = false", &health("100ms"));
    let load = Load::start(p.addr, s.ca_path(), &[(Kind::KeepAlive, 6)]);
    let t0 = Instant::now();
    load.wait(Kind::KeepAlive, true, t0, 100, Duration::from_secs(10));

    // SIGSTOP: it still accepts connections (the kernel does) and never
    // answers, so only the active health check can tell.
    let pid = nix::unistd::Pid::from_raw(n1.pid().expect("n1 running"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP n1");
    let frozen = Instant::now();
    wait_for(
        "the health check to take n1 out",
        Duration::from_secs(5),
        || p.log().contains("backend unhealthy").then_some(()),
    );
    let out_after = frozen.elapsed();
    let out = Instant::now();
    load.wait(Kind::KeepAlive, true, out, 200, Duration::from_secs(10));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT n1");
    let thawed = Instant::now();
    wait_for("n1 to get traffic again", Duration::from_secs(5), || {
        bodies_after(&load.events(), thawed)
            .iter()
            .any(|b| b == "n1\n")
            .then_some(())
    });
    let returned = thawed.elapsed();
    load.wait(
        Kind::KeepAlive,
        true,
        thawed + returned,
        100,
        Duration::from_secs(10),
    );
    let events = load.finish();

    let failed: Vec<&Event> = events.iter().filter(|e| e.result.is_err()).collect();
    eprintln!(
        "backend frozen: {} requests, {} failed (504), taken out {out_after:?} after the freeze, back {returned:?} after the thaw",
        events.len(),
        failed.len()
    );
    // Failures: only requests sent to n1 before the check took it out,
    // each a 504 at the response timeout: in flight at the freeze, or
    // sent before the check noticed.
    for e in &failed {
        assert!(
            e.start + e.took >= frozen && e.start <= out,
            "a request outside the freeze window failed: {e:?}, begun {:?} after the load, {:?} before the freeze\n{}",
            e.start.duration_since(t0),
            frozen.saturating_duration_since(e.start),
            p.log()
        );
        assert_eq!(
            e.result.as_ref().err().map(String::as_str),
            Some("status 504"),
            "{e:?}"
        );
    }
    assert!(
        out_after < Duration::from_secs(2),
        "the health check took {out_after:?}"
    );
    assert!(
        failed.len() <= 6 * 2,
        "{} failures with 6 clients",
        failed.len()
    );
    assert!(bodies_after(&events, out)
        .iter()
        .take(150)
        .all(|b| b == "n2\n"));
}
