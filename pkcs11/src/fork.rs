//! Knowing that we are a forked child.
//!
//! nginx, Apache and haproxy load keys in their master, then fork workers
//! that sign. A child must never write on a connection it inherited (the
//! parent and every sibling share it, and their request ids would cross),
//! and must connect again so the vault sees the child's own uid. Every
//! connection and every fetched catalogue records the fork generation it
//! was made in; a `pthread_atfork` child handler bumps the generation, so
//! anything from before the fork is recognised as inherited.
//!
//! A child whose parent has gone (a daemon's detached master: nginx and
//! Apache load their keys, then fork to detach, and the first process
//! exits) is the head of its lineage again: see [`parent_gone`].
//!
//! The prepare handler also takes the module's locks, so that a fork from
//! a multi-threaded program cannot leave the child with a lock some
//! parent thread held; parent and child release them again.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{MutexGuard, Once};

use vaultgate::sync::Locked;

use crate::client::{Pool, POOL};
use crate::module::{Module, MODULE};

static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The pid of the process that forked this one; 0 in a process not
/// forked since the handlers were installed.
static FORKER: AtomicU32 = AtomicU32::new(0);
/// Set by a process just before it forks, so the child's copy names its
/// parent even if that parent exits before the child runs.
static FORKING: AtomicU32 = AtomicU32::new(0);
static REGISTER: Once = Once::new();

thread_local! {
    /// The guards the prepare handler took, held across `fork` by the
    /// forking thread (which is also the one thread of the child).
    static HELD: RefCell<Option<(MutexGuard<'static, Module>, MutexGuard<'static, Pool>)>> =
        const { RefCell::new(None) };
}

/// The current fork generation: changes in every child.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A forked child whose parent has exited (it was re-parented): nothing
/// that parent loaded is in use any more, so this process reads the vault
/// afresh as if it had not been forked. False in a process never forked.
pub fn parent_gone() -> bool {
    let forker = FORKER.load(Ordering::Acquire);
    forker != 0 && std::os::unix::process::parent_id() != forker
}

/// Installs the handlers, once per load of the library. Called from
/// `C_Initialize`, never at load: loading the module starts nothing.
pub fn watch() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions of this
        // library; glibc removes handlers registered by a shared object
        // when it is unloaded (pthread_atfork passes its __dso_handle).
        // A failure (ENOMEM) leaves fork undetected, which the module
        // cannot repair; it then behaves as a library without handlers.
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
        }
    });
}

extern "C" fn prepare() {
    FORKING.store(std::process::id(), Ordering::Release);
    // Lock order as everywhere: the module, then the pool.
    let m = MODULE.locked();
    let p = POOL.locked();
    let _ = HELD.try_with(|h| *h.borrow_mut() = Some((m, p)));
}

extern "C" fn parent() {
    let _ = HELD.try_with(|h| h.borrow_mut().take());
}

extern "C" fn child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    FORKER.store(FORKING.load(Ordering::Acquire), Ordering::Release);
    let _ = HELD.try_with(|h| h.borrow_mut().take());
}
