//! The `process_*` metrics every Prometheus client library exports
//! (CPU time, memory, file descriptors, threads, start time), with the
//! names and help texts theirs use, so the usual dashboards and alerts
//! (`process_open_fds / process_max_fds`, restarts from
//! `process_start_time_seconds`) work unchanged. Read at each scrape:
//! `getrusage` for CPU, `/proc/self` for the rest (Linux only, as the
//! process is).

use std::sync::OnceLock;
use std::time::SystemTime;

/// When the process started, as near as it knows: the first call of
/// [`mark_start`] (the first thing `main` does, through `init_tracing`).
static START: OnceLock<f64> = OnceLock::new();

pub fn mark_start() {
    START.get_or_init(|| unix_seconds(SystemTime::now()));
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `process_*` metrics now, in Prometheus's text format, with the
/// help texts the Go and Python clients give them. Rendered here rather
/// than through the registry, whose counters are integers: CPU seconds
/// are not. A value that cannot be read is left out.
pub fn render() -> String {
    use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho};
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        use std::fmt::Write as _;
        if let Some(v) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        }
    };
    let cpu = getrusage(UsageWho::RUSAGE_SELF).ok().map(|u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    });
    put(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field| status_field(&status, field).map(|v| v * 1024.0);
    put(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        kb("VmRSS:"),
    );
    put(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        kb("VmSize:"),
    );
    put(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        status_field(&status, "Threads:"),
    );
    // The directory's own descriptor, open while it is read, is not one of
    // the process's.
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as f64);
    put(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds,
    );
    let max = getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft as f64);
    put(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max,
    );
    put(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        START.get().copied(),
    );
    out
}

/// The number after `field` in `/proc/self/status` (`VmRSS:   1234 kB`).
fn status_field(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_fields_are_read_in_their_units() {
        let status = "Name:\tvaultgate\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\nThreads:\t7\n";
        assert_eq!(super::status_field(status, "VmRSS:"), Some(2048.0));
        assert_eq!(super::status_field(status, "Threads:"), Some(7.0));
        assert_eq!(super::status_field(status, "VmSwap:"), None);
    }
}
