//! Shared support for the integration tests: real processes, started on
//! temp sockets and loopback ports, waited on by readiness, killed on drop.
#![allow(dead_code)]

pub mod backends;
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
