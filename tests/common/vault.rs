//! A real `vaultgate vault` process on a temp socket and state dir.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::bin;

pub struct VaultProc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub config: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    as_user: Option<(u32, u32)>,
}

/// A `[vault]` section switching to `user`, with the socket for
/// `socket_group`, granting root everything (the test administers) and
/// `(principal, keys, ops)` grants after that (keys and ops as TOML array
/// contents).
pub fn user_config(user: &str, socket_group: u32, grants: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[vault]\nuser = \"{user}\"\nsocket_group = \"{socket_group}\"\nmin_deletion_wait = \"1s\"\n"
    );
    for (principal, keys, ops) in [("uid:0", r#""*""#, r#""all""#)].iter().chain(grants) {
        s += &format!(
            "[[vault.grant]]\nprincipal = \"{principal}\"\nkeys = [{keys}]\nops = [{ops}]\n"
        );
    }
    s
}

/// Options for [`VaultProc::start_with`].
#[derive(Default, Clone)]
pub struct Opts {
    /// Text of a config file (`[vault]` section); `{dir}` is replaced by the
    /// temp dir.
    pub config: Option<String>,
    pub metrics: bool,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// The state dir (a mount the test made); default: `state` in the temp dir.
    pub state_dir: Option<PathBuf>,
    /// Start the vault as this uid and gid rather than the test's own.
    pub as_user: Option<(u32, u32)>,
}

impl VaultProc {
    /// `audit verify --state-dir` on this vault's state dir (with the
    /// vault stopped): whether it passed, and what it said.
    pub fn verify_offline(&self) -> (bool, String) {
        let out = std::process::Command::new(super::bin())
            .args(["audit", "verify", "--state-dir"])
            .arg(&self.state)
            .output()
            .expect("run verify");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// What runs a client as another uid: `setpriv`, and the system's
    /// python3 (one under root's home, as pyenv's, is not another uid's
    /// to run). Fails, saying how to get them, if either is missing or
    /// the test is not root.
    pub fn other_uid_tools() -> (std::path::PathBuf, &'static std::path::Path) {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test runs a client as another uid and must run as root (CI does)"
        );
        let setpriv = super::require_tool("setpriv", "util-linux");
        let python = std::path::Path::new("/usr/bin/python3");
        assert!(
            python.exists(),
            "/usr/bin/python3 is missing: apt-get install python3"
        );
        (setpriv, python)
    }

    pub fn start() -> VaultProc {
        VaultProc::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> VaultProc {
        let dir = tempfile::Builder::new()
            .prefix("vg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // Other uids (the policy tests) must be able to reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        // A vault started as another user creates its socket (and state)
        // in the temp dir.
        if let Some((uid, gid)) = opts.as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let socket = dir.path().join("vault.sock");
        let state = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let config = opts.config.map(|text| {
            let p = dir.path().join("vault.toml");
            std::fs::write(&p, text.replace("{dir}", &dir.path().display().to_string()))
                .expect("write config");
            p
        });
        let mut extra = opts.args.clone();
        if opts.metrics {
            extra.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        let (child, metrics) = spawn(
            &socket,
            &state,
            config.as_deref(),
            &extra,
            &opts.env,
            opts.as_user,
        )
        .expect("vault did not start");
        VaultProc {
            child,
            dir,
            socket,
            state,
            config,
            metrics,
            extra,
            env: opts.env,
            as_user: opts.as_user,
        }
    }

    /// Starts another vault process on the same socket and state dir, and
    /// returns its exit status and stderr if it does not become ready.
    pub fn try_start_again(&self) -> Result<(Child, Option<std::net::SocketAddr>), String> {
        spawn(
            &self.socket,
            &self.state,
            self.config.as_deref(),
            &self.extra,
            &self.env,
            self.as_user,
        )
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits: the vault stops cleanly (log synced, head
    /// and manifest written).
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill9();
        let (child, metrics) = self.try_start_again().expect("vault did not restart");
        self.child = child;
        self.metrics = metrics;
    }

    /// Runs `vaultgate ARGS` against this vault, as the test's own user.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, b"")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_cli(Command::new(bin()).args(args), &self.socket, stdin)
    }

    /// `cli`, asserting success; returns stdout as text.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "vaultgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cli`, asserting failure; returns stderr as text.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "vaultgate {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.state.join("audit.log")).unwrap_or_default()
    }
}

pub fn run_cli(cmd: &mut Command, socket: &Path, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .env("VAULTGATE_SOCKET", socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vaultgate");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    child.wait_with_output().expect("wait vaultgate")
}

/// Spawns the vault and waits for its `ready` line (the socket is bound
/// and accepting by then).
fn spawn(
    socket: &Path,
    state: &Path,
    config: Option<&Path>,
    extra: &[String],
    env: &[(String, String)],
    as_user: Option<(u32, u32)>,
) -> Result<(Child, Option<std::net::SocketAddr>), String> {
    let mut cmd = Command::new(bin());
    if let Some((uid, gid)) = as_user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd.arg("vault")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .arg("--ready-line")
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    // Drain stderr for as long as the vault lives: a full pipe would block
    // the vault on its next log line. Its tail explains a failed start.
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let log_tail = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let drain = {
        let log_tail = log_tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = log_tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() > 64 * 1024 {
                    let cut = t.len() - 32 * 1024;
                    let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                    t.drain(..cut);
                }
                t.push_str(&line);
                t.push('\n');
            }
        })
    };
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // nobody listens any more; keep draining so the vault never blocks
            }
        }
    });
    let mut metrics = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("ready") => return Ok((child, metrics)),
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("metrics ") {
                    metrics = addr.parse().ok();
                }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                let _ = drain.join(); // ends with the dead vault's pipe
                let log = log_tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(format!("vault exited ({status}) before ready: {log}"));
            }
        }
    }
}

impl Drop for VaultProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from a plain-HTTP listener; returns the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
