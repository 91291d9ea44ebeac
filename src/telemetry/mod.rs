//! Logs (tracing) and metrics (the `metrics` facade, exported in
//! Prometheus text format on a listener of its own).
//!
//! - [`catalog`]: every metric, its help text, and the series that start at zero
//! - [`http`]: the metrics listener: `/metrics`, the proxy's status page, 404 elsewhere
//! - [`process`]: the `process_*` metrics (CPU, memory, descriptors, start time)

pub mod catalog;
pub mod http;
pub mod process;

pub use catalog::Process;
pub use http::{serve_metrics, StatusPage};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The live filter of the process log, replaced when a config's `[log]`
/// level is applied.
type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Logs to stderr, `info` and up until a config's `[log] level` is
/// applied ([`apply_log_settings`]); `RUST_LOG`, when set, wins over both.
/// Colour codes only when stderr is a terminal and `NO_COLOR` is unset
/// (<https://no-color.org>): a file, a pipe or the journal gets plain text.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    process::mark_start();
    let filter = env_filter().unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(ClientTriggered::default());
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// `RUST_LOG`'s filter, when it is set and parses.
fn env_filter() -> Option<tracing_subscriber::EnvFilter> {
    std::env::var_os("RUST_LOG")?;
    tracing_subscriber::EnvFilter::try_from_default_env().ok()
}

/// Makes a config's `[log] level` the process log's filter (at start and
/// on every reload), unless `RUST_LOG` is set: the environment of one
/// invocation is the more specific wish.
pub fn apply_log_settings(settings: &crate::config::log::LogSettings) {
    if env_filter().is_some() {
        return;
    }
    let Some(handle) = FILTER.get() else { return };
    // Validated with the config; a failure here changes nothing.
    if let Ok(filter) = tracing_subscriber::EnvFilter::builder().parse(&settings.level) {
        let _ = handle.reload(filter);
    }
}

/// rustls warns once per connection about what a client sent (an IP
/// address in SNI, which every client connecting by address sends; a
/// duplicate name): text any client can make the proxy write as fast as it
/// can connect. Each such warning passes at most once a minute per rustls
/// module and level; everything else passes untouched.
#[derive(Default)]
struct ClientTriggered {
    last: std::sync::Mutex<std::collections::HashMap<(String, tracing::Level), std::time::Instant>>,
}

/// How often one rustls module's warnings reach the log.
const CLIENT_TRIGGERED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl<S> tracing_subscriber::layer::Filter<S> for ClientTriggered {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // Decided per event below: `enabled` is asked more than once for
        // one record of the `log` crate (rustls's), so it cannot count.
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        use tracing_log::NormalizeEvent;
        // A `log` record arrives under target "log"; its own target is in
        // its fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if !meta.target().starts_with("rustls") || *meta.level() > tracing::Level::WARN {
            return true;
        }
        use crate::sync::Locked;
        let mut last = self.last.locked();
        let key = (meta.target().to_owned(), *meta.level());
        let now = std::time::Instant::now();
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < CLIENT_TRIGGERED_EVERY => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

/// Installs the global metrics recorder once; later calls return a handle
/// to the same registry.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was set first; then ours just
            // renders an empty registry.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
