//! The decoded size of HPACK header blocks, read from the wire bytes
//! before h2 decodes them: a reader that walks the representations and
//! mirrors the sizes (not the contents) of the connection's dynamic table.
//!
//! Sizes are RFC 7541's (name + value + 32 per field), which h2 also uses
//! for `max_header_list_size`. Huffman-coded strings are counted symbol by
//! symbol: the code is canonical, so the length of the code at any point
//! follows from its leading bits and the number of codes of each length,
//! and the mirror stays exact (an estimate would evict entries that h2
//! still holds, and then every index behind them would be unknown).

use std::collections::VecDeque;

/// RFC 7541 §4.1: each entry's size is its name, its value and this.
pub(super) const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541 Appendix A): name and value of each entry.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// How many Huffman codes (RFC 7541 Appendix B) have each length, from 5
/// bits to 30; the codes of one length are consecutive, after the shorter.
const CODES_PER_LENGTH: [u32; 26] = [
    10, 26, 32, 6, 0, 5, 3, 2, 6, 2, 3, 0, 0, 0, 3, 8, 13, 26, 29, 12, 4, 15, 19, 29, 0, 4,
];
const SHORTEST: u32 = 5;
const LONGEST: u32 = 30;

/// Why the reader stopped: bytes h2 refuses too (it ends the connection
/// with COMPRESSION_ERROR), so nothing is counted after them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum HpackError {
    #[error("HPACK index {0} is in neither table")]
    Index(usize),
    #[error("HPACK integer longer than a usize")]
    Integer,
    #[error("HPACK table size update to {0}, above the {1} bytes allowed")]
    TableSize(usize, usize),
    #[error("HPACK string with an invalid Huffman code")]
    Huffman,
}

/// What an integer being read is for.
#[derive(Clone, Copy)]
enum IntFor {
    Indexed,
    /// A literal's name index; `index` says whether it enters the table.
    NameIndex {
        index: bool,
    },
    SizeUpdate,
    /// A string's length, after its first byte.
    StrLen {
        huffman: bool,
        lit: Literal,
    },
}

/// A literal field being read.
#[derive(Clone, Copy)]
struct Literal {
    index: bool,
    /// The name's decoded length, once known.
    name: Option<usize>,
}

enum State {
    /// At the first byte of a representation.
    Start,
    /// In the continuation bytes of an integer.
    Int {
        what: IntFor,
        value: usize,
        shift: u32,
    },
    /// At the first byte of a literal's name or value string.
    StrStart(Literal),
    Str {
        lit: Literal,
        left: usize,
        huffman: Option<Huffman>,
    },
}

/// Counts the symbols of a Huffman-coded string fed in pieces.
#[derive(Default)]
struct Huffman {
    bits: u64,
    nbits: u32,
    symbols: usize,
}

impl Huffman {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), HpackError> {
        for &b in bytes {
            self.bits = (self.bits << 8) | u64::from(b);
            self.nbits += 8;
            while self.nbits >= LONGEST {
                self.take()?;
            }
        }
        Ok(())
    }

    /// One code from the front of the bits; the missing bits of a short
    /// tail count as ones, the padding's.
    fn take(&mut self) -> Result<(), HpackError> {
        let top = if self.nbits >= LONGEST {
            (self.bits >> (self.nbits - LONGEST)) & ((1 << LONGEST) - 1)
        } else {
            let pad = LONGEST - self.nbits;
            ((self.bits << pad) | ((1 << pad) - 1)) & ((1 << LONGEST) - 1)
        };
        let len = code_length(top);
        if len > self.nbits || len == LONGEST && top == (1 << LONGEST) - 1 {
            // Cut short, or EOS, which a string must not hold.
            return Err(HpackError::Huffman);
        }
        self.nbits -= len;
        self.bits &= (1 << self.nbits) - 1;
        self.symbols += 1;
        Ok(())
    }

    /// The decoded length, once every byte is in.
    fn finish(mut self) -> Result<usize, HpackError> {
        loop {
            let padding = (1 << self.nbits) - 1;
            if self.nbits < 8 && self.bits == padding {
                return Ok(self.symbols);
            }
            self.take()?;
        }
    }
}

/// The length of the code at the front of 30 bits.
fn code_length(top: u64) -> u32 {
    let mut first = 0u64;
    for (i, &n) in CODES_PER_LENGTH.iter().enumerate() {
        let len = SHORTEST + i as u32;
        let code = top >> (LONGEST - len);
        if code < first + u64::from(n) {
            return len;
        }
        first = (first + u64::from(n)) << 1;
    }
    LONGEST
}

/// One connection's decoder side: its dynamic table's entry sizes and
/// where in a representation the last bytes ended.
pub(super) struct Sizes {
    /// (name length, entry size), newest first.
    table: VecDeque<(usize, usize)>,
    table_size: usize,
    max_size: usize,
    /// The most a size update may ask for: what the server advertised.
    allowed: usize,
    state: State,
}

impl Sizes {
    /// A reader for a connection whose table may hold `allowed` bytes
    /// (SETTINGS_HEADER_TABLE_SIZE; 4096 unless the server said otherwise).
    pub(super) fn new(allowed: usize) -> Sizes {
        Sizes {
            table: VecDeque::new(),
            table_size: 0,
            max_size: allowed,
            allowed,
            state: State::Start,
        }
    }

    /// Reads the next bytes of header block fragments; returns the decoded
    /// size of the fields they completed.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<usize, HpackError> {
        let mut decoded = 0;
        while let Some((&b, rest)) = bytes.split_first() {
            match std::mem::replace(&mut self.state, State::Start) {
                State::Start => {
                    bytes = rest;
                    let (what, prefix) = match b {
                        0x80..=0xff => (IntFor::Indexed, 7),
                        0x40..=0x7f => (IntFor::NameIndex { index: true }, 6),
                        0x20..=0x3f => (IntFor::SizeUpdate, 5),
                        _ => (IntFor::NameIndex { index: false }, 4),
                    };
                    decoded += self.int_first(what, b, prefix)?;
                }
                State::StrStart(lit) => {
                    bytes = rest;
                    let what = IntFor::StrLen {
                        huffman: b & 0x80 != 0,
                        lit,
                    };
                    decoded += self.int_first(what, b, 7)?;
                }
                State::Int { what, value, shift } => {
                    bytes = rest;
                    let add = usize::from(b & 0x7f)
                        .checked_shl(shift)
                        .filter(|v| v >> shift == usize::from(b & 0x7f))
                        .ok_or(HpackError::Integer)?;
                    let value = value.checked_add(add).ok_or(HpackError::Integer)?;
                    if b & 0x80 != 0 {
                        if shift > usize::BITS - 7 {
                            return Err(HpackError::Integer);
                        }
                        self.state = State::Int {
                            what,
                            value,
                            shift: shift + 7,
                        };
                    } else {
                        decoded += self.int_done(what, value)?;
                    }
                }
                State::Str {
                    lit,
                    left,
                    mut huffman,
                } => {
                    let n = left.min(bytes.len());
                    if let Some(h) = &mut huffman {
                        h.feed(&bytes[..n])?;
                    }
                    bytes = &bytes[n..];
                    if n < left {
                        self.state = State::Str {
                            lit,
                            left: left - n,
                            huffman,
                        };
                    } else {
                        let len = match huffman {
                            Some(h) => h.finish()?,
                            None => n,
                        };
                        decoded += self.string_done(lit, len)?;
                    }
                }
            }
        }
        Ok(decoded)
    }

    /// An integer's first byte (RFC 7541 §5.1): done if it fits the
    /// `prefix` bits, else continued in the next bytes.
    fn int_first(&mut self, what: IntFor, b: u8, prefix: u32) -> Result<usize, HpackError> {
        let max = (1usize << prefix) - 1;
        let value = usize::from(b) & max;
        if value < max {
            return self.int_done(what, value);
        }
        self.state = State::Int {
            what,
            value,
            shift: 0,
        };
        Ok(0)
    }

    fn int_done(&mut self, what: IntFor, value: usize) -> Result<usize, HpackError> {
        match what {
            IntFor::Indexed => Ok(self.entry(value)?.1),
            IntFor::NameIndex { index } => {
                let name = if value == 0 {
                    None
                } else {
                    Some(self.entry(value)?.0)
                };
                self.state = State::StrStart(Literal { index, name });
                Ok(0)
            }
            IntFor::SizeUpdate => {
                if value > self.allowed {
                    return Err(HpackError::TableSize(value, self.allowed));
                }
                self.max_size = value;
                self.evict(0);
                Ok(0)
            }
            IntFor::StrLen { huffman, lit } => {
                if value == 0 {
                    return self.string_done(lit, 0);
                }
                self.state = State::Str {
                    lit,
                    left: value,
                    huffman: huffman.then(Huffman::default),
                };
                Ok(0)
            }
        }
    }

    fn string_done(&mut self, lit: Literal, len: usize) -> Result<usize, HpackError> {
        let Some(name) = lit.name else {
            self.state = State::StrStart(Literal {
                name: Some(len),
                ..lit
            });
            return Ok(0);
        };
        let size = name.saturating_add(len).saturating_add(ENTRY_OVERHEAD);
        if lit.index {
            self.insert(name, size);
        }
        Ok(size)
    }

    /// (name length, size) of entry `index` of either table.
    fn entry(&self, index: usize) -> Result<(usize, usize), HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.len(), n.len() + v.len() + ENTRY_OVERHEAD))
            }
            _ => self
                .table
                .get(index - 62)
                .copied()
                .ok_or(HpackError::Index(index)),
        }
    }

    fn insert(&mut self, name: usize, size: usize) {
        self.evict(size);
        // RFC 7541 §4.4: an entry larger than the table empties it and is
        // not added.
        if size <= self.max_size {
            self.table.push_front((name, size));
            self.table_size += size;
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.table_size + room > self.max_size {
            match self.table.pop_back() {
                Some((_, s)) => self.table_size -= s,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).expect("hex")
    }

    fn size(fields: &[(&str, &[u8])]) -> usize {
        fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD)
            .sum()
    }

    #[test]
    fn the_code_lengths_make_a_complete_code_of_257_symbols() {
        let symbols: u32 = CODES_PER_LENGTH.iter().sum();
        assert_eq!(symbols, 257);
        let kraft: u64 = CODES_PER_LENGTH
            .iter()
            .enumerate()
            .map(|(i, &n)| u64::from(n) << (LONGEST - SHORTEST - i as u32))
            .sum();
        assert_eq!(kraft, 1 << LONGEST);
    }

    /// RFC 7541 C.4: three requests with Huffman coding, one connection.
    #[test]
    fn the_rfc_examples_decode_to_their_sizes_fed_whole_or_a_byte_at_a_time() {
        let blocks = [
            ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", 180, 57),
            ("8286 84be 5886 a8eb 1064 9cbf", 233, 110),
            (
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                245,
                164,
            ),
        ];
        for bytewise in [false, true] {
            let mut s = Sizes::new(4096);
            for (block, decoded, table) in blocks {
                let bytes = unhex(block);
                let got = if bytewise {
                    bytes
                        .iter()
                        .map(|b| s.feed(std::slice::from_ref(b)).expect("feed"))
                        .sum()
                } else {
                    s.feed(&bytes).expect("feed")
                };
                assert_eq!((got, s.table_size), (decoded, table), "{block}");
            }
        }
    }

    #[test]
    fn size_updates_and_eviction_follow_the_table() {
        let mut s = Sizes::new(4096);
        // Literal with incremental indexing, new name "a", value of 100.
        let mut insert = vec![0x40, 0x01, b'a', 100];
        insert.extend([b'x'; 100]);
        assert_eq!(s.feed(&insert), Ok(133));
        assert_eq!(s.feed(&[0xbe]), Ok(133));
        // 4096 / 133: 30 entries fit; the 31st evicts the first.
        for _ in 0..30 {
            s.feed(&insert).expect("insert");
        }
        assert_eq!((s.table.len(), s.table_size), (30, 30 * 133));
        // A size update to 0 empties the table; index 62 is then unknown.
        assert_eq!(s.feed(&[0x20]), Ok(0));
        assert_eq!(s.feed(&[0xbe]), Err(HpackError::Index(62)));
        let mut s = Sizes::new(4096);
        // 0x3f e1 1f: 31 + 0x61 + (0x1f << 7) = 4096; one more is refused.
        assert_eq!(s.feed(&[0x3f, 0xe1, 0x1f]), Ok(0));
        assert_eq!(
            s.feed(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSize(4097, 4096))
        );
        // An entry larger than the table empties it and is not added.
        let mut s = Sizes::new(64);
        s.feed(&[0x40, 0x01, b'a', 0x01, b'b']).expect("small");
        assert_eq!(s.table.len(), 1);
        let mut big = vec![0x40, 0x01, b'a', 40];
        big.extend([b'y'; 40]);
        assert_eq!(s.feed(&big), Ok(73));
        assert_eq!((s.table.len(), s.table_size), (0, 0));
    }

    /// The header blocks of h2's own encoder (hyper's client: Huffman for
    /// every string, the dynamic table for repeated fields), with every
    /// byte a header value may hold.
    #[tokio::test]
    async fn blocks_from_h2s_encoder_decode_to_the_sizes_of_their_fields() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let every: Vec<u8> = (0x20..=0x7eu8).chain(0x80..=0xff).chain([b'\t']).collect();
        let headers: Vec<(&str, Vec<u8>)> = vec![
            (
                "user-agent",
                b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101".to_vec(),
            ),
            ("cookie", b"session=0123456789abcdef; theme=dark".to_vec()),
            ("x-every-byte", every),
            ("accept-encoding", b"gzip, deflate, br".to_vec()),
        ];
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .expect("handshake");
        tokio::spawn(conn);
        // The server's SETTINGS, which the client waits for.
        server
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("settings");
        let mut expected = Vec::new();
        for i in 0..4 {
            let path = format!("/p{i}");
            let mut req = http::Request::get(format!("https://example.com{path}"));
            for (n, v) in &headers {
                req = req.header(*n, http::HeaderValue::from_bytes(v).expect("value"));
            }
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("req");
            tokio::time::timeout(std::time::Duration::from_secs(10), send.ready())
                .await
                .expect("ready in time")
                .expect("ready");
            // Never answered: only the request's bytes matter (a
            // request whose answer nobody awaits is not sent at all).
            tokio::spawn(send.send_request(req));
            let mut fields: Vec<(&str, &[u8])> = vec![
                (":method", b"GET"),
                (":scheme", b"https"),
                (":authority", b"example.com"),
            ];
            fields.extend(headers.iter().map(|(n, v)| (*n, v.as_slice())));
            expected.push(size(&fields) + ":path".len() + path.len() + ENTRY_OVERHEAD);
        }
        let mut raw = vec![0u8; 24];
        server.read_exact(&mut raw).await.expect("preface");
        let mut s = Sizes::new(4096);
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut head = [0u8; 9];
            server.read_exact(&mut head).await.expect("frame head");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            server.read_exact(&mut payload).await.expect("payload");
            if head[3] == 0x1 {
                assert_eq!(head[4] & 0x2c, 0x04, "one frame, no padding or priority");
                got.push(s.feed(&payload).expect("block"));
            }
        }
        assert_eq!(got, expected);
        assert!(!s.table.is_empty(), "the encoder used the dynamic table");
    }
}
