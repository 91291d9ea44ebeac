//! The room left on the state dir's filesystem, watched so that an
//! operator hears of a filling disk well before the vault has to refuse
//! work for want of it (a full disk stops key changes, then the audit
//! log, and with it every operation).
//!
//! Checked on every housekeeping tick (once a second, one `statvfs`);
//! published as gauges, and warned of once when the free share falls
//! below [`LOW`], with a record in the audit log; told again, once, when
//! it is back above [`RECOVERED`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Below this share of the filesystem free, the vault warns.
pub const LOW: f64 = 0.10;
/// The share free again past which the warning is over (above [`LOW`],
/// so a disk hovering at the line does not warn every second).
pub const RECOVERED: f64 = 0.15;

/// Whether the vault is warning of low space now.
#[derive(Default)]
pub struct SpaceWatch {
    low: AtomicBool,
}

/// What changed in the warning, for the caller to audit.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Low { free: u64, total: u64 },
    Recovered { free: u64, total: u64 },
}

impl SpaceWatch {
    /// Measures `dir`'s filesystem, sets the gauges, and says whether the
    /// warning began or ended. A filesystem that cannot be measured
    /// changes nothing.
    pub fn check(&self, dir: &Path) -> Option<Change> {
        let stat = nix::sys::statvfs::statvfs(dir).ok()?;
        let unit = stat.fragment_size();
        // What an unprivileged writer may use: the vault runs as its own
        // user, so the root reserve is not its to count on.
        let free = stat.blocks_available().saturating_mul(unit);
        let total = stat.blocks().saturating_mul(unit);
        metrics::gauge!("vaultgate_vault_state_free_bytes").set(free as f64);
        metrics::gauge!("vaultgate_vault_state_size_bytes").set(total as f64);
        self.judge(free, total)
    }

    fn judge(&self, free: u64, total: u64) -> Option<Change> {
        if total == 0 {
            return None;
        }
        let share = free as f64 / total as f64;
        let was_low = self.low.load(Ordering::Relaxed);
        if !was_low && share < LOW {
            self.low.store(true, Ordering::Relaxed);
            Some(Change::Low { free, total })
        } else if was_low && share > RECOVERED {
            self.low.store(false, Ordering::Relaxed);
            Some(Change::Recovered { free, total })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_below_the_line_and_once_when_well_above_it() {
        let w = SpaceWatch::default();
        assert_eq!(w.judge(50, 100), None);
        assert_eq!(
            w.judge(9, 100),
            Some(Change::Low {
                free: 9,
                total: 100
            })
        );
        assert_eq!(w.judge(5, 100), None);
        // Back above the line but not past the recovery mark: still low.
        assert_eq!(w.judge(12, 100), None);
        assert_eq!(
            w.judge(20, 100),
            Some(Change::Recovered {
                free: 20,
                total: 100
            })
        );
        assert_eq!(w.judge(0, 0), None);
    }
}
