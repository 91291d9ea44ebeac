//! Shared support for the integration tests: real processes, started on
//! temp sockets and loopback ports, waited on by readiness, killed on drop.
#![allow(dead_code)]

pub mod backends;
pub mod etcd;
pub mod pkcs11;
pub mod proxy;
pub mod raw;
pub mod vault;

use std::time::{Duration, Instant};

/// The `vaultgate` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vaultgate")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
/// For conditions with no event to wait on (a file appearing, a deletion
/// taking effect); processes are waited on through their sockets.
/// A current-thread runtime for a test's async client.
pub fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the test, saying how to install a missing tool.
pub fn require_tool(tool: &str, package: &str) -> std::path::PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = std::path::Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{tool}` is needed by this test and is not installed: run `apt-get install {package}` (scripts/test.sh does this)");
}

/// The uid and primary gid of system user `name`, which a test needs:
/// fails (not skips) if it is missing, saying how to add it.
pub fn require_user(name: &str) -> (u32, u32) {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
        _ => panic!(
            "user `{name}` is needed by this test and does not exist: \
             add it with `useradd --system --no-create-home --shell /usr/sbin/nologin {name}` \
             (Debian's base-passwd has `nobody` and `www-data`)"
        ),
    }
}

/// Fails unless the test runs as root (it starts processes that must
/// switch users).
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{why}: this test must run as root (CI does; locally: sudo -E scripts/test.sh)"
    );
}

/// The `Key:\tvalue` lines of one /proc status file; `None` if its
/// thread ended since it was listed (a blocking-pool thread idles out).
fn status_fields(path: &std::path::Path) -> Option<std::collections::HashMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect(),
    )
}

/// Asserts that every thread of `pid` (each has its own credentials and
/// no-new-privs flag) runs as `uid`/`gid` — real, effective, saved and
/// filesystem ids alike — with exactly `groups` as supplementary groups,
/// no capabilities, and no-new-privs set.
pub fn assert_runs_as(pid: i32, uid: u32, gid: u32, groups: &[u32]) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    let mut n = 0;
    for task in tasks {
        let path = task.expect("task entry").path().join("status");
        let Some(f) = status_fields(&path) else {
            continue;
        };
        let want_groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let ctx = format!("{}: {f:?}", path.display());
        assert_eq!(f["Uid"], format!("{uid} {uid} {uid} {uid}"), "{ctx}");
        assert_eq!(f["Gid"], format!("{gid} {gid} {gid} {gid}"), "{ctx}");
        assert_eq!(f["Groups"], want_groups.join(" "), "{ctx}");
        assert_eq!(f["NoNewPrivs"], "1", "{ctx}");
        assert_eq!(f["CapEff"], "0000000000000000", "{ctx}");
        assert_eq!(f["CapPrm"], "0000000000000000", "{ctx}");
        n += 1;
    }
    assert!(n > 1, "expected the threads of pid {pid}");
}

/// Asserts that `pid` is not dumpable although it runs as `uid`: its
/// /proc files belong to root (the kernel's mark of a non-dumpable
/// process; the /proc/PID directory itself keeps the euid), a process
/// of that same uid cannot read its environment (which a dumpable one's
/// owner could, as it could ptrace it), and its core file size limit is
/// zero.
pub fn assert_not_dumpable(pid: i32, uid: u32, gid: u32) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/environ")).expect("stat environ");
    assert_eq!(
        meta.uid(),
        0,
        "/proc/{pid}/environ belongs to uid {}: the process is dumpable",
        meta.uid()
    );
    let cat = require_tool("cat", "coreutils");
    let out = std::process::Command::new(cat)
        .arg(format!("/proc/{pid}/environ"))
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run cat");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.stdout.is_empty() && err.contains("Permission denied"),
        "uid {uid} could read /proc/{pid}/environ of its own process: {err}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
}
