//! The request path as routes match it and backends receive it.
//!
//! A route for `/public/` must not be a way into anything else. Clients
//! can write one path many ways (`/public/../internal`, `%2e%2e`,
//! `..%2f`, `//`), and a backend that resolves them after the proxy
//! matched the raw text serves what no route allows. So the path is put
//! in one normal form first, and that form is both what is matched and
//! what is forwarded (the query is left as it came):
//!
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   and every other escape is written with upper-case hex (RFC 3986
//!   §6.2.2.1-2): `%2e` is `.`, `%7e` is `~`, `%c3%a9` is `%C3%A9`;
//! - dot segments are resolved (RFC 3986 §5.2.4): `/a/./b/../c` is
//!   `/a/c`, and nothing climbs above `/`;
//! - runs of slashes are one slash, when `merge_slashes` is on;
//! - what backends read in different ways is refused (400), not guessed:
//!   an escaped slash or backslash (`%2F`, `%5C`), a raw backslash, an
//!   escaped NUL, a malformed escape, and a dot segment with parameters
//!   (`..;x`, which Tomcat and Jetty read as `..`).
//!
//! As Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST`.

use std::borrow::Cow;

use hyper::http::uri::PathAndQuery;

pub use crate::config::proxy::PathRules;

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} has an escaped slash or backslash (%2F, %5C)")]
    EncodedSlash(String),
    #[error("path {0:?} has a backslash")]
    Backslash(String),
    #[error("path {0:?} has an escaped NUL (%00)")]
    Nul(String),
    #[error("path {0:?} has a malformed percent escape")]
    BadEscape(String),
    #[error("path {0:?} has a dot segment with parameters (\"..;\")")]
    DotParameters(String),
}

/// The path and query as routes see them: `Borrowed` when the request's
/// own is already in normal form (most requests: no allocation).
pub fn normalize(
    target: &PathAndQuery,
    rules: PathRules,
) -> Result<Cow<'_, PathAndQuery>, PathError> {
    let path = target.path();
    match normal_path(path, rules)? {
        Cow::Borrowed(_) => Ok(Cow::Borrowed(target)),
        Cow::Owned(mut p) => {
            if let Some(q) = target.query() {
                p.push('?');
                p.push_str(q);
            }
            // Built from a valid path and query by removing and decoding
            // unreserved characters only: still valid.
            PathAndQuery::try_from(p)
                .map(Cow::Owned)
                .map_err(|_| PathError::BadEscape(path.to_owned()))
        }
    }
}

/// The normal form of `path` (without its query).
pub fn normal_path(path: &str, rules: PathRules) -> Result<Cow<'_, str>, PathError> {
    // Not origin-form (`*` for OPTIONS): nothing a prefix could match.
    if !path.starts_with('/') || is_normal(path, rules) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if rules.normalize {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    let mut out: Vec<&str> = Vec::new();
    let mut segments = decoded.split('/').skip(1).peekable();
    // Whether the path ends with a slash once dot segments are gone: a
    // final `.` or `..` leaves one (RFC 3986: `/a/b/..` is `/a/`).
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        trailing_slash = false;
        if rules.normalize {
            match seg {
                "." => {
                    trailing_slash = last;
                    continue;
                }
                ".." => {
                    out.pop();
                    trailing_slash = last;
                    continue;
                }
                _ if is_dot_with_parameters(seg) => {
                    return Err(PathError::DotParameters(path.to_owned()))
                }
                _ => {}
            }
        }
        if seg.is_empty() && rules.merge_slashes {
            trailing_slash = last;
            continue;
        }
        out.push(seg);
    }
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether `path` is already in normal form: the common case, checked
/// without allocating.
fn is_normal(path: &str, rules: PathRules) -> bool {
    let b = path.as_bytes();
    let dot_or_escape =
        rules.normalize && (b.contains(&b'\\') || !escapes_are_normal(b) || has_dot_segment(b));
    let double_slash = rules.merge_slashes && b.windows(2).any(|w| w == b"//");
    !dot_or_escape && !double_slash
}

/// Whether every escape in `b` stays as it is: upper-case hex of a byte
/// that is neither unreserved nor refused.
fn escapes_are_normal(b: &[u8]) -> bool {
    let upper = |c: Option<&u8>| c.filter(|c| !c.is_ascii_lowercase()).and_then(|&c| hex(c));
    b.iter()
        .enumerate()
        .filter(|(_, &c)| c == b'%')
        .all(|(i, _)| match (upper(b.get(i + 1)), upper(b.get(i + 2))) {
            (Some(hi), Some(lo)) => {
                let c = hi << 4 | lo;
                !is_unreserved(c) && !matches!(c, b'/' | b'\\' | 0)
            }
            _ => false,
        })
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A segment that is `.` or `..`, or starts `.;` or `..;`.
fn has_dot_segment(b: &[u8]) -> bool {
    b.split(|&c| c == b'/').any(|seg| {
        let name = seg.split(|&c| c == b';').next().unwrap_or(seg);
        name == b"." || name == b".."
    })
}

fn is_dot_with_parameters(seg: &str) -> bool {
    matches!(seg.split_once(';'), Some((".." | ".", _)))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters, writes the others with
/// upper-case hex, and refuses the ambiguous ones.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash(path.to_owned())),
            b'%' => {
                let digit = |at: usize| b.get(at).and_then(|&c| hex(c));
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(PathError::BadEscape(path.to_owned()));
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash(path.to_owned())),
                    0 => return Err(PathError::Nul(path.to_owned())),
                    c if is_unreserved(c) => out.push(c as char),
                    c => {
                        out.push('%');
                        out.push_str(&format!("{c:02X}"));
                    }
                }
                i += 3;
            }
            // `path` is a `str` and only ASCII was decoded: the rest copies
            // as it is, a character at a time.
            _ => {
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normal_path(path, PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn the_ways_out_of_a_prefix_resolve_to_where_they_lead() {
        for (raw, normal) in [
            ("/public/../internal/secret", "/internal/secret"),
            ("/public/%2e%2e/internal/secret", "/internal/secret"),
            ("/public/%2E%2E/internal/secret", "/internal/secret"),
            ("/public/./../internal/secret", "/internal/secret"),
            ("/public//../internal/secret", "/internal/secret"),
            ("/public/.%2e/internal/secret", "/internal/secret"),
            ("/public/a/b/../../../internal", "/internal"),
            ("/../../internal", "/internal"),
            ("/public/..", "/"),
            ("/public/.", "/public/"),
            ("/public/x/..", "/public/"),
            ("//public///x", "/public/x"),
            ("/public/", "/public/"),
            ("/", "/"),
            ("/%7Euser/%41", "/~user/A"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/%252e%252e/x", "/%252e%252e/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/...", "/a/..."),
            ("/a/.b/..c", "/a/.b/..c"),
            ("/a;b=c/d", "/a;b=c/d"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn encodings_backends_read_differently_are_refused() {
        for raw in [
            "/public/..%2finternal/secret",
            "/public/%2E%2E%2Finternal/secret",
            "/public/..%5Cinternal",
            "/public\\..\\internal",
            "/public/%00",
            "/public/%zz",
            "/public/%2",
            "/public/..;/internal/secret",
            "/public/%2e%2e;x/internal",
            "/public/.;/x",
        ] {
            assert!(n(raw).is_err(), "{raw} was let through as {:?}", n(raw));
        }
    }

    #[test]
    fn the_normal_form_is_borrowed_and_stable() {
        for p in ["/", "/public/a.html", "/a-b_c~d/e%20f", "/x;y", "*"] {
            assert!(matches!(
                normal_path(p, PathRules::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
        for raw in ["/a/../b//c/./%7e", "/x/%c3%a9/..", "//"] {
            let once = n(raw).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{raw}");
            assert!(matches!(
                normal_path(&once, PathRules::default()),
                Ok(Cow::Borrowed(_))
            ));
        }
    }

    #[test]
    fn each_rule_can_be_switched_off() {
        let only_merge = PathRules {
            normalize: false,
            merge_slashes: true,
        };
        assert_eq!(normal_path("/a//../%2e", only_merge).unwrap(), "/a/../%2e");
        let only_dots = PathRules {
            normalize: true,
            merge_slashes: false,
        };
        // RFC 3986 alone: the empty segment is a segment.
        assert_eq!(
            normal_path("/public//../x", only_dots).unwrap(),
            "/public/x"
        );
        assert_eq!(normal_path("/a//b", only_dots).unwrap(), "/a//b");
        let none = PathRules {
            normalize: false,
            merge_slashes: false,
        };
        assert_eq!(normal_path("/a/../%2f//b", none).unwrap(), "/a/../%2f//b");
    }

    #[test]
    fn the_query_is_kept_as_it_came() {
        let t = PathAndQuery::from_static("/a/../b?x=/../%2e&y");
        assert_eq!(
            normalize(&t, PathRules::default()).unwrap().as_str(),
            "/b?x=/../%2e&y"
        );
    }
}
