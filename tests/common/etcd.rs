//! A real etcd cluster for the tests: members on their own loopback
//! addresses with temp data dirs, waited on by health, killed on drop.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::wait_for;

/// Clusters started by this process; with the pid it picks addresses no
/// other test's cluster uses.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// How long a (re)started member may take to report healthy: a health
/// check needs the cluster's quorum, and on a loaded 2-core machine with
/// other clusters starting beside it an election has taken over 20 s.
const READY: Duration = Duration::from_secs(60);
/// How long a SIGSTOPped member's threads may take to all stop: tens of
/// milliseconds on a loaded machine.
const STOPPED: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    Stopped,
    Dead,
}

struct Member {
    name: String,
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Child,
    state: State,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    /// The client side of a cluster started with [`EtcdCluster::start_tls`].
    pub tls: Option<ClientTls>,
    dir: tempfile::TempDir,
}

/// The CA that signed the members' certificate, and a client
/// certificate they accept.
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn etcd_bin(tool: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = std::path::Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed. install etcd-server: apt-get install etcd-server etcd-client (scripts/test-deps.sh does)"
    );
}

/// A port free on `addr` now: bound, then released for etcd to take.
/// The address is this cluster's own, so nobody else races for it.
fn free_port(addr: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((addr, 0)).unwrap_or_else(|e| panic!("bind {addr}:0: {e}"));
    l.local_addr().expect("local addr").port()
}

impl EtcdCluster {
    /// `n` members, all healthy when this returns.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, false)
    }

    /// As [`start`](Self::start), clients served over https only and
    /// only with a client certificate of the cluster's test CA
    /// (`--client-cert-auth`).
    pub fn start_tls(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> EtcdCluster {
        assert!((1..=9).contains(&n), "1 to 9 members");
        let etcd = etcd_bin("etcd");
        etcd_bin("etcdctl");
        let dir = tempfile::Builder::new()
            .prefix("vg-etcd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // 127.P.C.i: P from the pid, C from this process's count, i the
        // member; all of 127/8 is loopback on Linux.
        let c = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (p, c) = (1 + (pid % 250) as u8, (c % 250) as u8 + 1);
        let addrs: Vec<Ipv4Addr> = (0..n)
            .map(|i| Ipv4Addr::new(127, p, c, 10 + i as u8))
            .collect();
        let peers: Vec<String> = addrs
            .iter()
            .map(|a| format!("http://{a}:{}", free_port(*a)))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}={p}"))
            .collect();
        let token = format!("vg-{pid}-{c}");
        let (scheme, server_tls, client_tls) = if tls {
            let (server, client) = tls_files(dir.path(), &addrs);
            ("https", server, Some(client))
        } else {
            ("http", Vec::new(), None)
        };
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("{scheme}://{addr}:{}", free_port(*addr));
            let mut args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &dir.path().join(&name).display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peers[i],
                "--initial-advertise-peer-urls",
                &peers[i],
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend(server_tls.iter().cloned());
            let log = dir.path().join(format!("{name}.log"));
            let child = spawn(&etcd, &args, &log);
            members.push(Member {
                name,
                client_url,
                args,
                log,
                child,
                state: State::Running,
            });
        }
        let cluster = EtcdCluster {
            members,
            tls: client_tls,
            dir,
        };
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn endpoint(&self, i: usize) -> &str {
        &self.members[i].client_url
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let _ = m.child.kill();
        let _ = m.child.wait();
        m.state = State::Dead;
    }

    /// SIGSTOP: a hung member, its sockets open and silent. Returns once
    /// every thread of it has stopped: `kill` only queues the signal, and
    /// on a busy machine the member's other threads run on for tens of
    /// milliseconds until the one picked to take it is scheduled, long
    /// enough to ack a write the test means to fail for want of quorum.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.members[i].state = State::Stopped;
        let pid = self.members[i].child.id();
        wait_for(
            &format!("every thread of etcd member {i} (pid {pid}) stopped"),
            STOPPED,
            || all_threads_stopped(pid).then_some(()),
        );
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.members[i].state = State::Running;
    }

    fn signal(&self, i: usize, signal: Signal) {
        let pid = Pid::from_raw(self.members[i].child.id() as i32);
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to member {i}: {e}"));
    }

    /// Starts member `i` again on its data dir (after [`kill`](Self::kill),
    /// or kills it first): it rejoins with what it had, and is healthy
    /// when this returns.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].state != State::Dead {
            self.kill(i);
        }
        let m = &mut self.members[i];
        m.child = spawn(&etcd_bin("etcd"), &m.args, &m.log);
        m.state = State::Running;
        self.wait_healthy(i);
    }

    fn wait_healthy(&self, i: usize) {
        let m = &self.members[i];
        wait_for(&format!("etcd member {} healthy", m.name), READY, || {
            let out = self.etcdctl_at(&[m.client_url.as_str()], &["endpoint", "health"]);
            out.status.success().then_some(())
        });
    }

    /// The index of the member that leads, waiting for the running ones
    /// to agree on one.
    pub fn leader(&self) -> usize {
        wait_for("an etcd leader", READY, || {
            self.running().find(|&i| {
                let out = self.etcdctl_at(
                    &[self.members[i].client_url.as_str()],
                    &["endpoint", "status", "-w", "json"],
                );
                out.status.success() && member_leads(&out.stdout)
            })
        })
    }

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.members[i].state == State::Running)
    }

    /// `etcdctl ARGS` against the running members; stdout. Panics with
    /// stderr if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let urls: Vec<&str> = self
            .running()
            .map(|i| self.members[i].client_url.as_str())
            .collect();
        let out = self.etcdctl_at(&urls, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn etcdctl_at(&self, urls: &[&str], args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(etcd_bin("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", urls.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=3s"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.cert)
                .arg("--key")
                .arg(&t.key);
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    /// Compacts the store's history up to its current revision, which it
    /// returns: a watch from any earlier revision is then refused.
    pub fn compact_now(&self) -> i64 {
        let out = self.etcdctl(&["get", "--prefix", "", "--limit=1", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        let revision = v["header"]["revision"].as_i64().expect("header.revision");
        self.etcdctl(&["compact", &revision.to_string(), "--physical"]);
        revision
    }

    /// The last lines of member `i`'s log, for a failing test's message.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Whether no thread of process `pid` can run: each stopped by a signal
/// (`T` in its `/proc` stat) or already gone.
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("threads of etcd pid {pid}: {e}"));
    tasks.filter_map(Result::ok).all(|task| {
        // A thread that exited meanwhile has no stat left: it runs no more.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        // The state follows the command name, which may hold spaces and
        // parentheses: take it after the last `)`.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, Some("T" | "Z" | "X"))
    })
}

/// Whether `endpoint status -w json` output is from the member that leads.
fn member_leads(stdout: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(stdout) else {
        return false;
    };
    let status = &v[0]["Status"];
    let (Some(id), Some(leader)) = (
        status["header"]["member_id"].as_u64(),
        status["leader"].as_u64(),
    ) else {
        return false;
    };
    id != 0 && id == leader
}

/// A test CA, one server certificate for every member's address, and a
/// client certificate: the members' TLS arguments and the client's files.
fn tls_files(dir: &std::path::Path, addrs: &[Ipv4Addr]) -> (Vec<String>, ClientTls) {
    let ca = super::proxy::TestCa::new(dir);
    let names: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (server_cert, server_key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    ca.file_cert(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &names,
        &server_cert,
        &server_key,
    );
    let client = ClientTls {
        ca: ca.pem_path.clone(),
        cert: dir.join("client.pem"),
        key: dir.join("client-key.pem"),
    };
    ca.file_cert(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &["vault-a"],
        &client.cert,
        &client.key,
    );
    let args = [
        ("--cert-file", &server_cert),
        ("--key-file", &server_key),
        ("--trusted-ca-file", &ca.pem_path),
    ]
    .iter()
    .flat_map(|(flag, path)| [(*flag).to_owned(), path.display().to_string()])
    .chain(["--client-cert-auth".to_owned()])
    .collect();
    (args, client)
}

fn spawn(etcd: &std::path::Path, args: &[String], log: &std::path::Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("etcd log file");
    let err = out.try_clone().expect("clone log file");
    Command::new(etcd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", etcd.display()))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if m.state != State::Dead {
                let _ = m.child.kill();
                let _ = m.child.wait();
            }
        }
    }
}
