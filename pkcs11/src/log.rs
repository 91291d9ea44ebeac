//! The only output the module makes: with `log` in the config file (or
//! `VAULTGATE_PKCS11_LOG`), one line per failure, appended. A PKCS#11
//! module must not write to a host's stdout or stderr (they may be a TLS
//! server's log or a pipe someone parses).
//!
//! The path lives in its own lock, not the module's, so that a failure
//! (or a panic) noted while the module's state is locked cannot deadlock.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use vaultgate::sync::Locked;

use crate::error::Error;

static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Where failures go from now on (`None`: nowhere).
pub fn set(path: Option<PathBuf>) {
    *PATH.locked() = path;
}

/// Appends one line about `e`, if a log is set and `e` is worth one.
pub fn note(e: &Error) {
    if e.is_notable() {
        let path = PATH.locked().clone();
        if let Some(path) = path {
            write_line(&path, &e.to_string());
        }
    }
}

/// Replaces the default panic message on stderr with a log line. This
/// library has its own copy of `std` (a cdylib links it statically), so
/// the hook only sees this library's panics, never the host's.
pub fn quiet_panics() {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            // try_lock: a panic while `set` or `note` holds the path is
            // dropped rather than deadlocked.
            let path = PATH.try_lock().ok().and_then(|p| p.clone());
            if let Some(path) = path {
                write_line(
                    &path,
                    &format!("panic (answered CKR_GENERAL_ERROR): {info}"),
                );
            }
        }));
    });
}

fn write_line(path: &std::path::Path, text: &str) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let pid = std::process::id();
    let uid = nix::unistd::getuid();
    let text = text.replace('\n', " ");
    let line = format!("{secs} pid={pid} uid={uid} vaultgate-pkcs11: {text}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line, so lines of several processes do not mix.
        let _ = f.write_all(line.as_bytes());
    }
}
