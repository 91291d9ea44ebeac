//! Raw clients and a raw backend for the fault, flood and smuggling tests:
//! requests written byte for byte over TLS (curl normalises them), a
//! minimal HTTP/2 frame writer/reader, a backend that records exactly
//! what reached it, and the proxy's resident memory from /proc.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::proxy::client_config;

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` as `localhost`, offering `alpn`, with the
/// handshake completed.
pub fn tls_connect(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> Tls {
    try_tls_connect(
        addr,
        &client_config(ca, false, alpn),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("TLS connect to {addr}: {e}"))
}

/// As [`tls_connect`] with a given client config; the error says how the
/// handshake failed.
pub fn try_tls_connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Tls, std::io::Error> {
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client connection");
    let sock = TcpStream::connect_timeout(&addr, timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads until the peer closes, or nothing arrives for `quiet`, or
/// `limit` passes. Returns the bytes and whether the peer closed.
pub fn read_until_quiet(
    s: &mut impl ReadTimeout,
    quiet: Duration,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_timeout(quiet.min(left));
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            // A reset, or a TLS alert: closed, by the proxy.
            Err(_) => return (out, true),
        }
    }
}

/// A stream whose read timeout can be set: plain TCP or TLS over it.
pub trait ReadTimeout: Read {
    fn set_timeout(&mut self, t: Duration);
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self.set_read_timeout(Some(t.max(Duration::from_millis(1))));
    }
}

impl ReadTimeout for Tls {
    fn set_timeout(&mut self, t: Duration) {
        let _ = self
            .sock
            .set_read_timeout(Some(t.max(Duration::from_millis(1))));
    }
}

/// The status codes of the HTTP/1.1 responses in `raw`, in order (a
/// response body that happens to hold a status line would count too;
/// the tests' bodies do not).
pub fn h1_statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find("HTTP/1.1 ") {
        let after = &rest[i + 9..];
        if let Some(code) = after.get(..3).and_then(|c| c.parse().ok()) {
            out.push(code);
        }
        rest = after;
    }
    out
}

/// One request as the recording backend parsed it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request line and header lines, as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Values of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Seen>,
    /// Every byte received, per connection.
    raw: Vec<Arc<Mutex<Vec<u8>>>>,
}

/// A backend that records every byte it receives and every request it can
/// frame (Content-Length or chunked, as RFC 9112 says: Transfer-Encoding
/// wins), answering each with `200 rec`. It never guesses: bytes it cannot
/// frame stay in the raw log and close the connection.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = l.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let r = Recorder { addr, log };
        let rec = r.clone();
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let rec = rec.clone();
                std::thread::spawn(move || rec.serve(s));
            }
        });
        r
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Everything received on every connection, concatenated per connection.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        let log = self.log.lock().unwrap();
        log.raw.iter().map(|r| r.lock().unwrap().clone()).collect()
    }

    /// Whether `needle` appears anywhere in the received bytes.
    pub fn received(&self, needle: &str) -> bool {
        self.raw()
            .iter()
            .any(|r| r.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    /// Waits for a request whose request line contains `marker`.
    pub fn wait_request(&self, marker: &str, limit: Duration) -> Seen {
        super::wait_for(&format!("the backend to see {marker}"), limit, || {
            self.requests()
                .into_iter()
                .find(|s| s.request_line().contains(marker))
        })
    }

    fn serve(&self, mut s: TcpStream) {
        let raw = Arc::new(Mutex::new(Vec::new()));
        self.log.lock().unwrap().raw.push(raw.clone());
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match parse_request(&buf) {
                Parsed::Done(seen, used) => {
                    buf.drain(..used);
                    self.log.lock().unwrap().requests.push(seen);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nrec\n")
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Parsed::Invalid => return,
                Parsed::Partial => {}
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    raw.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

enum Parsed {
    Done(Seen, usize),
    Partial,
    Invalid,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let seen = Seen {
        head,
        body: Vec::new(),
    };
    let te = seen.header("transfer-encoding");
    let cl = seen.header("content-length");
    let mut at = end + 4;
    if !te.is_empty() {
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Parsed::Invalid;
        }
        let mut body = Vec::new();
        loop {
            let Some(eol) = find(&buf[at..], b"\r\n") else {
                return Parsed::Partial;
            };
            let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return Parsed::Invalid;
            };
            at += eol + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                let Some(t) = find(&buf[at..], b"\r\n") else {
                    return Parsed::Partial;
                };
                if t != 0 {
                    return Parsed::Invalid;
                }
                at += 2;
                return Parsed::Done(Seen { body, ..seen }, at);
            }
            if buf.len() < at + size + 2 {
                return Parsed::Partial;
            }
            body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Invalid;
            }
            at += size + 2;
        }
    }
    let len = match cl.as_slice() {
        [] => 0,
        [one] => match one.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Parsed::Invalid,
        },
        _ => return Parsed::Invalid,
    };
    if buf.len() < at + len {
        return Parsed::Partial;
    }
    let body = buf[at..at + len].to_vec();
    Parsed::Done(Seen { body, ..seen }, at + len)
}

// ---- HTTP/2, by hand ----

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    frame_with_len(kind, flags, stream, payload, payload.len())
}

/// A frame whose length field says `len` whatever the payload is.
pub fn frame_with_len(kind: u8, flags: u8, stream: u32, payload: &[u8], len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, new names, no
/// Huffman: any bytes at all go through, valid or not.
pub fn hpack(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A literal field with incremental indexing and a new name: it enters
/// the connection's dynamic table, as index 62 until the next one does.
pub fn hpack_indexed(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// A GET's header block for `path` on localhost, plus `extra` fields.
pub fn h2_request(method: &str, path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut fields: Vec<(&str, &[u8])> = vec![
        (":method", method.as_bytes()),
        (":scheme", b"https"),
        (":authority", b"localhost"),
        (":path", path.as_bytes()),
    ];
    fields.extend_from_slice(extra);
    hpack(&fields)
}

#[derive(Debug, Clone)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    /// A GOAWAY's or RST_STREAM's error code.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
}

/// Opens an h2 connection (ALPN h2 negotiated, asserted) and sends the
/// client preface and an empty SETTINGS.
pub fn h2_connect(addr: SocketAddr, ca: &Path) -> Tls {
    let mut t = tls_connect(addr, ca, &[b"h2"]);
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    t.write_all(PREFACE).expect("preface");
    t.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    t
}

/// Every frame the server sends until it closes, or is quiet for `quiet`
/// (after `limit` at most). Returns the frames and whether it closed.
pub fn h2_read_frames(t: &mut Tls, quiet: Duration, limit: Duration) -> (Vec<H2Frame>, bool) {
    let (buf, closed) = read_until_quiet(t, quiet, limit);
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let b = &buf[at..];
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        if b.len() < 9 + len {
            break;
        }
        frames.push(H2Frame {
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
            payload: b[9..9 + len].to_vec(),
        });
        at += 9 + len;
    }
    (frames, closed)
}

/// The `:status` of a response header block, as hyper's h2 encodes it:
/// an indexed static entry (200, 204, 206, 304, 400, 404, 500) or a
/// literal with the `:status` name and a (Huffman-coded) value.
pub fn h2_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal, with or without indexing, name index 8..=14 (:status).
    let name_index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = (len_byte & 0x7f) as usize;
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    text.parse().ok()
}

/// Decodes a Huffman-coded string of digits (all a status code holds).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    // RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' are 6 bits.
    let codes: [(u32, u32, char); 10] = [
        (0b00000, 5, '0'),
        (0b00001, 5, '1'),
        (0b00010, 5, '2'),
        (0b011001, 6, '3'),
        (0b011010, 6, '4'),
        (0b011011, 6, '5'),
        (0b011100, 6, '6'),
        (0b011101, 6, '7'),
        (0b011110, 6, '8'),
        (0b011111, 6, '9'),
    ];
    let bits: Vec<u32> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| ((b >> i) & 1) as u32))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    'next: while at < bits.len() {
        for (code, n, c) in codes {
            let n = n as usize;
            if at + n <= bits.len() {
                let v = bits[at..at + n].iter().fold(0, |acc, b| acc << 1 | b);
                if v == code {
                    out.push(c);
                    at += n;
                    continue 'next;
                }
            }
        }
        // Padding: the most significant bits of EOS, all ones.
        return bits[at..].iter().all(|&b| b == 1).then_some(out);
    }
    Some(out)
}

/// Resident set size of process `pid`, in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `GET path` on an open HTTP/1.1 keep-alive connection: the status and
/// body (Content-Length framed, as nginx answers), or why it failed.
pub fn keep_alive_get(t: &mut Tls, path: &str) -> Result<(u16, Vec<u8>), String> {
    write!(t, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = t.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&raw)));
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = find(&raw, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad head {head:?}"))?;
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        if raw.len() >= end + 4 + len {
            return Ok((status, raw[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// The TLS alert or other rustls error inside an I/O error, as text.
pub fn tls_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => format!("tls: {r}"),
        None => format!("io: {e}"),
    }
}
