//! Where access lines go and how they read: the process log (structured
//! `key=value` fields, as before) or a file of their own, in one of three
//! formats — `text` (`key=value`), nginx's `combined` (then the request
//! id and times), or `json` — reopened on SIGUSR1 for logrotate.
//!
//! Times are fixed decimals (`0.205` ms, never `0.20504599999999998`) and
//! a missing one is `-` (`null` in JSON), as nginx writes
//! `$upstream_response_time` for a request that reached no backend.
//! Client-controlled text (path, host, referer, user agent, request id)
//! is escaped in every format, so a crafted request cannot forge fields
//! or lines.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::proxy::{AccessLogFormat, ProxySettings};
use crate::sync::Locked;

/// An access log file that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("access_log_file {path}: {source}", path = .path.display())]
pub struct AccessLogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// One request, as the access log writes it.
pub struct Line<'a> {
    pub time: SystemTime,
    pub request_id: &'a [u8],
    pub client: SocketAddr,
    pub sni: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub version: hyper::Version,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub upstream: &'a str,
    pub backend: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub total: Duration,
    pub tls: &'a str,
    pub cipher: &'a str,
    pub alpn: Option<&'a str>,
    pub resumed: bool,
}

/// The access log of one configuration generation.
pub struct AccessLog {
    format: AccessLogFormat,
    file: Option<Arc<LogFile>>,
}

impl AccessLog {
    /// `None` when `access_log = false`. The file, if any, is opened (or
    /// shared with the generation before, when it names the same path).
    pub fn open(settings: &ProxySettings) -> Result<Option<AccessLog>, AccessLogError> {
        if !settings.access_log {
            return Ok(None);
        }
        let file = settings
            .access_log_file
            .as_deref()
            .map(LogFile::open)
            .transpose()?;
        Ok(Some(AccessLog {
            format: settings.access_log_format,
            file,
        }))
    }

    pub fn write(&self, line: &Line<'_>) {
        if self.file.is_none() && self.format == AccessLogFormat::Text {
            to_process_log(line);
            return;
        }
        thread_local! {
            static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            match self.format {
                AccessLogFormat::Text => text(line, buf),
                AccessLogFormat::Combined => combined(line, buf),
                AccessLogFormat::Json => json(line, buf),
            }
            match &self.file {
                Some(f) => {
                    buf.push('\n');
                    f.append(buf.as_bytes());
                }
                None => tracing::info!(target: "vaultgate::access", "{buf}"),
            }
        });
    }
}

/// Today's structured event, for the process log (its own formatter adds
/// the time).
fn to_process_log(l: &Line<'_>) {
    tracing::info!(
        target: "vaultgate::access",
        request_id = %Escaped(l.request_id),
        client = %l.client,
        sni = l.sni.unwrap_or("-"),
        // Client-controlled text is quoted and escaped (Debug), so a
        // crafted path cannot forge fields or lines in the log.
        version = version(l.version),
        method = ?l.method,
        host = ?l.host,
        path = ?l.path,
        status = l.status,
        bytes_in = l.bytes_in,
        bytes_out = l.bytes_out,
        referer = %Quoted(l.referer),
        user_agent = %Quoted(l.user_agent),
        upstream = %l.upstream,
        backend = %l.backend.map_or("-".to_owned(), |b| b.to_string()),
        upstream_ms = %Millis(l.upstream_time),
        total_ms = %Millis(Some(l.total)),
        tls = %l.tls,
        cipher = %l.cipher,
        alpn = l.alpn.unwrap_or("-"),
        resumed = l.resumed,
        "request"
    );
}

fn version(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_11 => "HTTP/1.1",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        hyper::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// `key=value` fields after an RFC 3339 time, as the process log has
/// them.
fn text(l: &Line<'_>, out: &mut String) {
    rfc3339(l.time, out);
    let _ = write!(
        out,
        " request_id={} client={} sni={} version={} method={:?} host={:?} path={:?} status={} bytes_in={} bytes_out={} referer={} user_agent={} upstream={} backend={} upstream_ms={} total_ms={} tls={} cipher={} alpn={} resumed={}",
        Escaped(l.request_id),
        l.client,
        l.sni.unwrap_or("-"),
        version(l.version),
        l.method,
        l.host,
        l.path,
        l.status,
        l.bytes_in,
        l.bytes_out,
        Quoted(l.referer),
        Quoted(l.user_agent),
        l.upstream,
        l.backend.map_or("-".to_owned(), |b| b.to_string()),
        Millis(l.upstream_time),
        Millis(Some(l.total)),
        l.tls,
        l.cipher,
        l.alpn.unwrap_or("-"),
        l.resumed,
    );
}

/// nginx's `combined` (`$remote_addr - $remote_user [$time_local]
/// "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"`), so the tools that read nginx's logs read these,
/// then `"$request_id" $request_time $upstream_response_time` (seconds,
/// millisecond resolution, as nginx writes them). Times are UTC.
fn combined(l: &Line<'_>, out: &mut String) {
    let _ = write!(out, "{} - - [", l.client.ip());
    clf_time(l.time, out);
    let _ = write!(
        out,
        "] \"{} {} {}\" {} {} \"{}\" \"{}\" \"{}\" {} {}",
        Escaped(l.method.as_bytes()),
        Escaped(l.path.as_bytes()),
        version(l.version),
        l.status,
        l.bytes_out,
        Escaped(l.referer.unwrap_or(b"-")),
        Escaped(l.user_agent.unwrap_or(b"-")),
        Escaped(l.request_id),
        Seconds(Some(l.total)),
        Seconds(l.upstream_time),
    );
}

/// One JSON object; strings escaped by serde_json, times as fixed
/// decimals of milliseconds (`null` when there is none).
fn json(l: &Line<'_>, out: &mut String) {
    let s = |v: &[u8]| serde_json::Value::String(String::from_utf8_lossy(v).into_owned());
    let opt = |v: Option<&[u8]>| v.map_or(serde_json::Value::Null, s);
    out.push_str("{\"time\":\"");
    rfc3339(l.time, out);
    let _ = write!(
        out,
        "\",\"request_id\":{},\"client\":\"{}\",\"sni\":{},\"method\":{},\"host\":{},\"path\":{},\"version\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"referer\":{},\"user_agent\":{},\"upstream\":{},\"backend\":{},\"upstream_ms\":{},\"total_ms\":{},\"tls\":\"{}\",\"cipher\":\"{}\",\"alpn\":{},\"resumed\":{}}}",
        s(l.request_id),
        l.client,
        opt(l.sni.map(str::as_bytes)),
        s(l.method.as_bytes()),
        s(l.host.as_bytes()),
        s(l.path.as_bytes()),
        version(l.version),
        l.status,
        l.bytes_in,
        l.bytes_out,
        opt(l.referer),
        opt(l.user_agent),
        s(l.upstream.as_bytes()),
        l.backend.map_or("null".to_owned(), |b| format!("\"{b}\"")),
        JsonMillis(l.upstream_time),
        JsonMillis(Some(l.total)),
        l.tls,
        l.cipher,
        opt(l.alpn.map(str::as_bytes)),
        l.resumed,
    );
}

/// Milliseconds with three decimals (microsecond resolution), or `-`.
struct Millis(Option<Duration>);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => {
                let us = d.as_micros();
                write!(f, "{}.{:03}", us / 1000, us % 1000)
            }
            None => f.write_str("-"),
        }
    }
}

/// [`Millis`], or `null`.
struct JsonMillis(Option<Duration>);

impl std::fmt::Display for JsonMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => Millis(self.0).fmt(f),
            None => f.write_str("null"),
        }
    }
}

/// Seconds with three decimals, or `-` (nginx's `$request_time`).
struct Seconds(Option<Duration>);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => {
                let ms = d.as_millis();
                write!(f, "{}.{:03}", ms / 1000, ms % 1000)
            }
            None => f.write_str("-"),
        }
    }
}

/// Bytes as nginx escapes them in a log line: `"`, `\` and anything not
/// printable ASCII become `\xHH`.
struct Escaped<'a>(&'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in self.0 {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                write!(f, "\\x{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

/// A header's bytes in double quotes, escaped; `-` when absent.
struct Quoted<'a>(Option<&'a [u8]>);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "\"{}\"", Escaped(v)),
            None => f.write_str("-"),
        }
    }
}

/// Formats the whole seconds of `t` once per second and thread (as nginx
/// caches its time strings), then the part below.
fn cached_seconds(t: SystemTime, which: u8, out: &mut String, fmt: fn(i64, &mut String)) {
    thread_local! {
        static CACHE: std::cell::RefCell<[(i64, String); 2]> =
            const { std::cell::RefCell::new([(i64::MIN, String::new()), (i64::MIN, String::new())]) };
    }
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    CACHE.with_borrow_mut(|cache| {
        let slot = &mut cache[usize::from(which)];
        if slot.0 != secs {
            slot.1.clear();
            fmt(secs, &mut slot.1);
            slot.0 = secs;
        }
        out.push_str(&slot.1);
    });
}

/// `2026-01-02T03:04:05.123Z`.
fn rfc3339(t: SystemTime, out: &mut String) {
    cached_seconds(t, 0, out, |secs, s| {
        let dt = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
        let _ = dt.format_into(&mut StringWriter(s), f);
    });
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    let _ = write!(out, ".{ms:03}Z");
}

/// `10/Oct/2000:13:55:36 +0000` (nginx's `$time_local`, in UTC).
fn clf_time(t: SystemTime, out: &mut String) {
    cached_seconds(t, 1, out, |secs, s| {
        let dt = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let f = time::macros::format_description!(
            "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
        );
        let _ = dt.format_into(&mut StringWriter(s), f);
    });
}

/// `time` formats into an `io::Write`.
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An access log file, appended to by every worker thread: each line is
/// one `write(2)` on an `O_APPEND` descriptor, so lines from different
/// threads never interleave and no lock is taken per request.
pub struct LogFile {
    path: PathBuf,
    file: ArcSwap<std::fs::File>,
    /// When a failed write was last warned about (seconds since the epoch).
    warned: std::sync::atomic::AtomicU64,
}

/// Every access log file open in the process, for SIGUSR1.
static OPEN: Mutex<Vec<Weak<LogFile>>> = Mutex::new(Vec::new());

impl LogFile {
    /// Opens `path` for appending (created 0640), or shares the file a
    /// previous generation has open there.
    pub fn open(path: &Path) -> Result<Arc<LogFile>, AccessLogError> {
        let mut open = OPEN.locked();
        open.retain(|w| w.strong_count() > 0);
        if let Some(f) = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|f| f.path == path)
        {
            return Ok(f);
        }
        let f = Arc::new(LogFile {
            path: path.to_owned(),
            file: ArcSwap::from_pointee(open_append(path)?),
            warned: std::sync::atomic::AtomicU64::new(0),
        });
        open.push(Arc::downgrade(&f));
        Ok(f)
    }

    fn append(&self, line: &[u8]) {
        let file = self.file.load();
        if let Err(e) = (&**file).write_all(line) {
            metrics::counter!("vaultgate_proxy_access_log_errors_total").increment(1);
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.warned.load(std::sync::atomic::Ordering::Relaxed);
            if now >= last + 60 {
                self.warned.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(file = %self.path.display(), error = %e, "cannot write the access log");
            }
        }
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, AccessLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| AccessLogError {
            path: path.to_owned(),
            source,
        })
}

/// Reopens every access log file by its path (after logrotate renamed
/// it, the new lines go to a new file); one that cannot be reopened keeps
/// its old descriptor and is returned with the error.
pub fn reopen_all() -> Vec<AccessLogError> {
    let files: Vec<Arc<LogFile>> = OPEN.locked().iter().filter_map(Weak::upgrade).collect();
    let mut failed = Vec::new();
    for f in files {
        match open_append(&f.path) {
            Ok(new) => f.file.store(Arc::new(new)),
            Err(e) => failed.push(e),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>() -> Line<'a> {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_323_045_123),
            request_id: b"0123456789abcdef0123456789abcdef",
            client: "192.0.2.7:50123".parse().unwrap(),
            sni: Some("www.example.com"),
            method: "GET",
            host: "www.example.com",
            path: "/a\"b?q=1",
            version: hyper::Version::HTTP_11,
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            referer: Some(b"https://ref.example/"),
            user_agent: Some(b"curl/8.0 \"x\"\n"),
            upstream: "web",
            backend: Some("127.0.0.1:8080".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(1_205)),
            total: Duration::from_micros(205_046),
            tls: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            alpn: Some("http/1.1"),
            resumed: false,
        }
    }

    #[test]
    fn combined_is_nginx_combined_then_the_request_id_and_times() {
        let mut out = String::new();
        combined(&line(), &mut out);
        assert_eq!(
            out,
            r#"192.0.2.7 - - [02/Jan/2026:03:04:05 +0000] "GET /a\x22b?q=1 HTTP/1.1" 200 1234 "https://ref.example/" "curl/8.0 \x22x\x22\x0A" "0123456789abcdef0123456789abcdef" 0.205 0.001"#
        );
    }

    #[test]
    fn json_is_one_object_with_fixed_decimal_times() {
        let mut out = String::new();
        let mut l = line();
        l.upstream_time = None;
        l.backend = None;
        json(&l, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["time"], "2026-01-02T03:04:05.123Z");
        assert_eq!(v["path"], "/a\"b?q=1");
        assert_eq!(v["user_agent"], "curl/8.0 \"x\"\n");
        assert_eq!(v["version"], "HTTP/1.1");
        assert!(v["upstream_ms"].is_null() && v["backend"].is_null());
        assert!(out.contains("\"total_ms\":205.046,"), "{out}");
    }

    #[test]
    fn text_has_every_field_and_no_float_noise() {
        let mut out = String::new();
        let mut l = line();
        l.upstream_time = None;
        text(&l, &mut out);
        assert!(
            out.starts_with("2026-01-02T03:04:05.123Z request_id=0123"),
            "{out}"
        );
        assert!(out.contains(" upstream_ms=- total_ms=205.046 "), "{out}");
        assert!(
            out.contains(r#" user_agent="curl/8.0 \x22x\x22\x0A" "#),
            "{out}"
        );
        assert!(!out.contains('\n'));
    }

    #[test]
    fn a_reopened_file_gets_the_lines_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let f = LogFile::open(&path).unwrap();
        f.append(b"one\n");
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        f.append(b"two\n");
        assert!(reopen_all().is_empty());
        f.append(b"three\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("access.log.1")).unwrap(),
            "one\ntwo\n"
        );
        let again = LogFile::open(&path).unwrap();
        assert!(Arc::ptr_eq(&f, &again), "one descriptor per path");
    }
}
