//! How `vaultgate reload` finds a running vault or proxy and learns how
//! its reload went.
//!
//! The process writes its pid file at start, and beside it a status file
//! (`PID_FILE.status`): its pid, the kernel's start time of that pid, the
//! config file it runs, how many reloads it has done and how the last one
//! went. It opens the status file once, before any switch of user, and
//! rewrites it in place through that descriptor after every reload, so the
//! directory need not be writable by the user it runs as.
//!
//! `reload` refuses a pid that is not that process (a stale pid file whose
//! pid now belongs to something else: the pid's start time or executable
//! differs, or the status names another config), sends SIGHUP, and waits
//! for the reload count to move; the verdict is the status file's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::user::RunAs;
use crate::sync::Locked;

/// What a running process says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: with the pid, names the process
    /// exactly (a pid alone is reused).
    pub start_time: u64,
    /// The config file, as given (canonical where it could be made so).
    pub config: PathBuf,
    /// Reloads done since the start (successful or not).
    pub reloads: u64,
    /// `"started"`, `"ok"` or `"error"`.
    pub result: String,
    pub error: Option<String>,
}

/// Why the running process could not be asked, or said no.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {source} (is vaultgate running with this config?)", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a pid", path = .path.display())]
    NotAPid { path: PathBuf },
    #[error("{path}: not a vaultgate status file: {source}", path = .path.display())]
    BadStatus {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "pid {pid} (from {pid_file}) is not the vaultgate process that wrote it: {why}; \
         nothing was signalled (a stale pid file? remove it)",
        pid_file = .pid_file.display()
    )]
    NotOurs {
        pid: u32,
        pid_file: PathBuf,
        why: String,
    },
    #[error("cannot signal pid {pid}: {source}")]
    Signal { pid: u32, source: nix::Error },
    #[error("pid {pid} did not report its reload within {0:?}", .timeout)]
    NoVerdict { pid: u32, timeout: Duration },
    #[error(
        "the reload failed in the running process (pid {pid}), which keeps its config: {error}"
    )]
    Failed { pid: u32, error: String },
}

/// The status file of a pid file.
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut p = pid_file.as_os_str().to_owned();
    p.push(".status");
    PathBuf::from(p)
}

/// The running process's side: the status file, kept open for its life.
pub struct StatusFile {
    file: std::sync::Mutex<File>,
    status: std::sync::Mutex<Status>,
}

impl StatusFile {
    /// Creates (or takes over) the status file beside `pid_file` and
    /// writes `started`. Call it where the pid file is written, before any
    /// switch of user; `owner` is given the file so it stays the process's.
    pub fn create(
        pid_file: &Path,
        config: &Path,
        owner: Option<&RunAs>,
    ) -> std::io::Result<StatusFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = status_path(pid_file);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)?;
        if let Some(u) = owner {
            std::os::unix::fs::fchown(&file, Some(u.uid), Some(u.gid))?;
        }
        let pid = std::process::id();
        let status = Status {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            config: std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned()),
            reloads: 0,
            result: "started".into(),
            error: None,
        };
        let s = StatusFile {
            file: std::sync::Mutex::new(file),
            status: std::sync::Mutex::new(status),
        };
        s.write()?;
        Ok(s)
    }

    /// Records the outcome of a reload: its error, as the log shows it.
    pub fn record<E: std::fmt::Display>(&self, outcome: Result<(), E>) {
        {
            let mut st = self.status.locked();
            st.reloads += 1;
            match outcome {
                Ok(()) => {
                    st.result = "ok".into();
                    st.error = None;
                }
                Err(e) => {
                    st.result = "error".into();
                    st.error = Some(e.to_string());
                }
            }
        }
        if let Err(e) = self.write() {
            tracing::warn!(error = %e, "cannot update the status file; `vaultgate reload` will not see this reload's verdict");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&*self.status.locked()).map_err(std::io::Error::other)?;
        text.push(b'\n');
        let mut f = self.file.locked();
        // In place: a reader that catches it half written retries.
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&text)?;
        f.sync_data()
    }
}

/// The start time of `pid`, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count
    // fields after its closing parenthesis (state is field 3).
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn read_status(pid_file: &Path) -> Result<Status, ControlError> {
    let path = status_path(pid_file);
    let mut last = None;
    // A read that meets the file mid-rewrite sees it empty or cut: again.
    for _ in 0..20 {
        let mut text = String::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|source| ControlError::Read {
                path: path.clone(),
                source,
            })?;
        match serde_json::from_str(&text) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(ControlError::BadStatus {
        path,
        source: last
            .unwrap_or_else(|| serde_json::Error::io(std::io::ErrorKind::InvalidData.into())),
    })
}

/// The pid in `pid_file`, checked to be the vaultgate process that runs
/// `config` and wrote the status file beside it.
pub fn running(pid_file: &Path, config: &Path) -> Result<Status, ControlError> {
    let text = std::fs::read_to_string(pid_file).map_err(|source| ControlError::Read {
        path: pid_file.to_owned(),
        source,
    })?;
    let pid: u32 =
        text.trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ControlError::NotAPid {
                path: pid_file.to_owned(),
            })?;
    let not_ours = |why: String| ControlError::NotOurs {
        pid,
        pid_file: pid_file.to_owned(),
        why,
    };
    let status = read_status(pid_file)?;
    if status.pid != pid {
        return Err(not_ours(format!(
            "its status file names pid {}",
            status.pid
        )));
    }
    match start_time(pid) {
        None => return Err(not_ours("no such process".into())),
        Some(t) if t != status.start_time => {
            return Err(not_ours("the pid was reused by a later process".into()))
        }
        Some(_) => {}
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let is_vaultgate = exe.as_ref().is_some_and(|e| {
        e.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.trim_end_matches(" (deleted)") == "vaultgate")
    });
    if !is_vaultgate {
        let shown = exe.map_or("unknown".into(), |e| e.display().to_string());
        return Err(not_ours(format!("it runs {shown}")));
    }
    let wanted = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    if status.config != wanted {
        return Err(not_ours(format!(
            "it runs the config {}, not {}",
            status.config.display(),
            wanted.display()
        )));
    }
    Ok(status)
}

/// Sends SIGHUP to the process of `pid_file` and waits for its verdict.
pub fn reload(pid_file: &Path, config: &Path, timeout: Duration) -> Result<Status, ControlError> {
    let before = running(pid_file, config)?;
    let pid = before.pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| ControlError::Signal { pid, source })?;
    let deadline = Instant::now() + timeout;
    loop {
        let now = read_status(pid_file)?;
        if now.pid == pid && now.reloads > before.reloads {
            return match now.result.as_str() {
                "ok" => Ok(now),
                _ => Err(ControlError::Failed {
                    pid,
                    error: now.error.unwrap_or_default(),
                }),
            };
        }
        if Instant::now() >= deadline {
            return Err(ControlError::NoVerdict { pid, timeout });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_file_names_its_process_and_counts_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("p.pid");
        let config = dir.path().join("c.toml");
        std::fs::write(&config, "").unwrap();
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let st = StatusFile::create(&pid_file, &config, None).unwrap();
        // The test binary is not named vaultgate: refused, by name.
        let e = running(&pid_file, &config).unwrap_err().to_string();
        assert!(e.contains("is not the vaultgate process"), "{e}");
        st.record(Err("bad file"));
        let s = read_status(&pid_file).unwrap();
        assert_eq!((s.reloads, s.result.as_str()), (1, "error"));
        assert_eq!(s.error.as_deref(), Some("bad file"));
        assert_eq!(s.start_time, start_time(std::process::id()).unwrap());
        // Another pid in the pid file: refused before anything is signalled.
        std::fs::write(&pid_file, "1\n").unwrap();
        let e = running(&pid_file, &config).unwrap_err().to_string();
        assert!(e.contains("its status file names pid"), "{e}");
    }
}
