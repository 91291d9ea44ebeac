//! OS calls: process hardening through nix's safe wrappers (no core dumps,
//! memory locked against swap, privileges dropped), and the crate's only
//! `unsafe` blocks: a child process's setup between fork and exec (dying
//! with its parent; becoming another user), registering a socket with
//! tokio for one kind of readiness, reading a socket peer's groups, and
//! fixing the allocator's mmap threshold so locked memory is given back.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{setrlimit, Resource};

/// What [`harden`] managed to do; the caller logs it.
#[derive(Debug)]
pub struct Hardening {
    pub non_dumpable: Result<(), nix::Error>,
    pub no_core: Result<(), nix::Error>,
    pub mlocked: Result<(), nix::Error>,
    /// Whether large allocations now always go back to the OS when freed.
    pub large_frees_unmapped: bool,
}

/// Marks the process non-dumpable (no ptrace by other users, no core file),
/// sets the core size limit to zero and locks all memory so key bytes are
/// never written to swap, and has large freed blocks given back to the OS.
/// Each step may fail without stopping the others.
pub fn harden() -> Hardening {
    Hardening {
        non_dumpable: nix::sys::prctl::set_dumpable(false),
        no_core: setrlimit(Resource::RLIMIT_CORE, 0, 0),
        mlocked: mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE),
        large_frees_unmapped: unmap_large_frees(),
    }
}

/// Allocations of this size or more get their own mapping, unmapped when
/// freed.
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Fixes glibc's mmap threshold. Left dynamic, it rises to the size of
/// the largest block freed (argon2's 19 MiB), after which such blocks
/// come from per-thread arenas that keep them: with memory locked, each
/// blocking thread that ever stretched a passphrase held 19 MiB of locked
/// memory for good. Fixed, they are unmapped as soon as they are freed.
#[allow(unsafe_code, reason = "mallopt: glibc's allocator tuning call")]
fn unmap_large_frees() -> bool {
    // SAFETY: mallopt only sets an allocator parameter; it is called at
    // start, and glibc takes the allocator's lock itself.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
}

/// Why a switch to another user failed. The process must not go on.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "cannot switch to user {user:?} (uid {uid}): running as uid {current}, not root; \
         start as root, or as {user:?} itself, or leave user out"
    )]
    NotRoot {
        user: String,
        uid: u32,
        current: u32,
    },
    #[error("switching to user {user:?}: {step} failed: {source}")]
    Call {
        user: String,
        step: &'static str,
        source: nix::Error,
    },
    #[error("after switching to user {user:?}: {what}; refusing to go on")]
    NotDropped { user: String, what: String },
}

/// How [`become_user`] went, for the caller's log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Switched {
    /// Was root; is now the user, and `setuid(0)` is refused.
    Dropped { groups: Vec<u32> },
    /// Was started as the user already: nothing to switch.
    AlreadyUser,
}

/// Forbids gaining privileges through exec (set-user-ID binaries, file
/// capabilities) from now on: PR_SET_NO_NEW_PRIVS. The flag is per
/// thread and inherited by threads started later, so call it before any
/// thread is started; [`become_user`] sets it again for its own thread.
pub fn forbid_privilege_gain() -> Result<(), nix::Error> {
    nix::sys::prctl::set_no_new_privs()
}

/// Locked memory an `mlockall(MCL_FUTURE)` process needs at least once
/// it has lost CAP_IPC_LOCK: every later mapping (heap, thread stacks)
/// counts against RLIMIT_MEMLOCK, and one past it fails.
const MEMLOCK_AFTER_SWITCH: u64 = 256 << 20;

/// Before a switch away from root: lets locked memory grow without limit
/// (only root with CAP_SYS_RESOURCE may raise the hard limit), or at
/// least up to the hard limit. If what is allowed is below
/// [`MEMLOCK_AFTER_SWITCH`], unlocks the memory (`munlockall`) rather
/// than have the process fail to map a thread or heap later, and says so.
pub fn memlock_for_switch() -> Result<(), MemlockError> {
    use nix::sys::resource::{getrlimit, RLIM_INFINITY};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return Ok(());
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(MemlockError::Os)?;
    let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    if hard == RLIM_INFINITY || hard >= MEMLOCK_AFTER_SWITCH {
        return Ok(());
    }
    nix::sys::mman::munlockall().map_err(MemlockError::Os)?;
    Err(MemlockError::TooLow(hard))
}

/// Why memory stays unlocked after a switch away from root.
#[derive(Debug, thiserror::Error)]
pub enum MemlockError {
    #[error("RLIMIT_MEMLOCK: {0}")]
    Os(nix::Error),
    #[error(
        "RLIMIT_MEMLOCK is {0} bytes and cannot be raised (no CAP_SYS_RESOURCE), \
         too little for locked memory after the switch: memory is left unlocked and \
         key material may be swapped to disk. Raise it (LimitMEMLOCK=infinity in systemd)"
    )]
    TooLow(u64),
}

/// Fails unless [`become_user`] can work: running as root, or as `user`
/// already. Checked before anything is bound or written.
pub fn check_can_become(user: &crate::config::user::RunAs) -> Result<(), DropError> {
    let me = nix::unistd::geteuid();
    if me.is_root() || me.as_raw() == user.uid {
        return Ok(());
    }
    Err(DropError::NotRoot {
        user: user.name.clone(),
        uid: user.uid,
        current: me.as_raw(),
    })
}

/// Switches the whole process to `user` for good: supplementary groups
/// (the user's, from the group database, with `user.gid` as primary),
/// gid, then uid (real, effective, saved and filesystem ids all change;
/// glibc applies each to every thread). Then checks that it took (all ids
/// equal and `setuid(0)` refused), forbids privilege gain through exec
/// and marks the process non-dumpable again: the kernel resets the
/// dumpable flag on every credential change.
///
/// Started as `user` already, only the last two steps apply; started as
/// anyone else but root, it fails.
pub fn become_user(user: &crate::config::user::RunAs) -> Result<Switched, DropError> {
    use nix::unistd::{getegid, geteuid, getresgid, getresuid, Gid, Uid};
    let name = user.name.clone();
    let call = |step: &'static str| {
        let user = name.clone();
        move |source| DropError::Call { user, step, source }
    };
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    let pdeathsig = nix::sys::prctl::get_pdeathsig().map_err(call("prctl(PR_GET_PDEATHSIG)"))?;
    check_can_become(user)?;
    let switched = if geteuid() == uid {
        Switched::AlreadyUser
    } else {
        let cname =
            std::ffi::CString::new(user.name.as_str()).map_err(|_| DropError::NotDropped {
                user: name.clone(),
                what: "the user name contains a NUL byte".into(),
            })?;
        nix::unistd::initgroups(&cname, gid).map_err(call("initgroups"))?;
        nix::unistd::setgid(gid).map_err(call("setgid"))?;
        nix::unistd::setuid(uid).map_err(call("setuid"))?;
        let not = |what: String| DropError::NotDropped {
            user: name.clone(),
            what,
        };
        let r = getresuid().map_err(call("getresuid"))?;
        let g = getresgid().map_err(call("getresgid"))?;
        if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3]
        {
            return Err(not(format!("ids are uid {r:?}, gid {g:?}")));
        }
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || geteuid().is_root() {
            return Err(not("setuid(0) succeeded".into()));
        }
        if getegid() != gid {
            return Err(not(format!("gid is {}", getegid())));
        }
        let groups = nix::unistd::getgroups()
            .map_err(call("getgroups"))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Switched::Dropped { groups }
    };
    forbid_privilege_gain().map_err(call("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    nix::sys::prctl::set_dumpable(false).map_err(call("prctl(PR_SET_DUMPABLE, 0)"))?;
    // The kernel clears the parent-death signal on a credential change
    // too; `vaultgate run` relies on it to not leave an orphan vault.
    if let Some(sig) = pdeathsig {
        nix::sys::prctl::set_pdeathsig(sig).map_err(call("prctl(PR_SET_PDEATHSIG)"))?;
    }
    Ok(switched)
}

/// Logs how [`become_user`] went, or returns its error as text.
pub fn log_switch(
    who: &str,
    user: &crate::config::user::RunAs,
    result: Result<Switched, DropError>,
) -> Result<(), DropError> {
    match result? {
        Switched::Dropped { groups } => tracing::info!(
            user = %user.name,
            uid = user.uid,
            gid = user.gid,
            ?groups,
            "{who} switched to its user for good (setuid(0) is refused; no new privileges; not dumpable)"
        ),
        Switched::AlreadyUser => tracing::info!(
            user = %user.name,
            uid = user.uid,
            "{who} started as its user already (no new privileges; not dumpable)"
        ),
    }
    Ok(())
}

/// Makes a child started with `cmd` receive SIGTERM when this process dies
/// (PR_SET_PDEATHSIG) and live in its own process group.
#[allow(
    unsafe_code,
    reason = "pre_exec: the documented OS call between fork and exec"
)]
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

/// Makes a child started with `cmd` run as `user`: its supplementary
/// groups (looked up here, before the fork), its gid, its uid. For running
/// a command as the user a service runs as, to see what that user can
/// read. The caller must be root.
#[allow(
    unsafe_code,
    reason = "pre_exec: the documented OS calls between fork and exec"
)]
pub fn run_child_as(
    cmd: &mut std::process::Command,
    user: &crate::config::user::RunAs,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let name = std::ffi::CString::new(user.name.as_str())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a user name"))?;
    let groups: Vec<libc::gid_t> =
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
            .map_err(std::io::Error::from)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: setgroups, setgid and
    // setuid are system calls; the group list was built before the fork
    // and is only read, and nothing here allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
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

/// Registers a Unix stream socket with the current tokio reactor for
/// `interest` only (tokio's own `UnixStream` always asks for both, and
/// every read by the peer then wakes the reactor for writability).
/// Must be called on a runtime.
#[allow(
    unsafe_code,
    reason = "AsyncFd registration of a descriptor the stream owns"
)]
pub fn register_unix_stream(
    stream: std::os::unix::net::UnixStream,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor: it stays open, and
    // `as_raw_fd` returns that same descriptor, until the stream is
    // dropped, which only the `AsyncFd` that now owns it can do.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(stream, interest) }
        .map_err(std::io::Error::from)
}

/// The supplementary groups of the process at the other end of a Unix
/// socket, as the kernel recorded them when it connected
/// (`SO_PEERGROUPS`, Linux 4.13): what `SO_PEERCRED` leaves out, so that a
/// `gid:` grant matches a member of the group as file permissions would.
#[allow(
    unsafe_code,
    reason = "getsockopt(SO_PEERGROUPS): nix has no wrapper for it"
)]
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // Most callers are in a handful of groups; the kernel says how much
    // room it needs when this is too little (ERANGE), and we ask once more.
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    for _ in 0..2 {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is a live, writable buffer of exactly `len`
        // bytes for the duration of the call; the kernel writes at most
        // `len` bytes and stores the length it needs (or wrote) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(err);
        }
        groups.resize(n, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}
