//! OS calls: process hardening through nix's safe wrappers (no core dumps,
//! memory locked against swap, privileges dropped), and the one `unsafe`
//! block of the crate, for a child process's setup between fork and exec.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{setrlimit, Resource};

/// What [`harden`] managed to do; the caller logs it.
#[derive(Debug)]
pub struct Hardening {
    pub non_dumpable: Result<(), nix::Error>,
    pub no_core: Result<(), nix::Error>,
    pub mlocked: Result<(), nix::Error>,
}

/// Marks the process non-dumpable (no ptrace by other users, no core file),
/// sets the core size limit to zero and locks all memory so key bytes are
/// never written to swap. Each step may fail without stopping the others.
pub fn harden() -> Hardening {
    Hardening {
        non_dumpable: nix::sys::prctl::set_dumpable(false),
        no_core: setrlimit(Resource::RLIMIT_CORE, 0, 0),
        mlocked: mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE),
    }
}

/// Switches to `uid`/`gid` for good (group first, while still allowed).
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), nix::Error> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let gid = Gid::from_raw(gid);
    setgroups(&[gid])?;
    setgid(gid)?;
    setuid(Uid::from_raw(uid))
}

/// Makes a child started with `cmd` receive SIGTERM when this process dies
/// (PR_SET_PDEATHSIG) and live in its own process group.
pub fn die_with_parent_in_own_group(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed; prctl and setpgid are, and
    // nothing here allocates or takes a lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Resolves on the first SIGTERM or SIGINT: the vault's and the proxy's
/// signal to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for but the end.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
