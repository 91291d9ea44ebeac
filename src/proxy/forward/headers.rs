//! Proxy headers: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` / RFC 7239 `Forwarded` additions, and the client's own
//! `X-Real-IP`-style headers overwritten or dropped.

use std::net::IpAddr;

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

use crate::config::proxy::{ClientIpHeaders, ForwardedHeaders};

// Names as constants, not strings: a lookup by `&str` parses the name
// every time, on every request.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Connection-specific by definition (RFC 7540 §3.2.1), whether or not
/// `Connection` names it: it only means something with an h2c upgrade,
/// which never passes.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Headers backends and their frameworks read as "the client's address"
/// (nginx's realip module, Akamai and Cloudflare, Express and Rails
/// options): `client_ip_headers` decides what becomes of the client's.
const CLIENT_IP: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
];

const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HTTP2_SETTINGS,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// Whether the request asks to switch protocols (WebSocket and such).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes hop-by-hop headers, including any named in `Connection`. An
/// upgrade keeps its `Upgrade` and `Connection: upgrade`, which must reach
/// the other side for the switch to happen.
///
/// Runs twice per request (request and answer), so it looks at each field
/// once and removes only what is there: removing every hop-by-hop name
/// unconditionally hashed nine names per call.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Which of HOP_BY_HOP (bits 0..9) and Upgrade (bit 9) are present.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if name == UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // "TE: trailers" is the one TE value worth passing on: gRPC over h2c
    // backends requires it.
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if present & 1 != 0 {
        // Values are cheap to clone (shared bytes), and owning them lets
        // the names they list be removed from the map they came from.
        let mut values = headers.get_all(CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for token in first
            .iter()
            .chain(&more)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
        {
            // Removal by `&str` looks the name up without allocating one.
            let kept = keep_upgrade && token.eq_ignore_ascii_case("upgrade");
            if !token.is_empty() && !kept {
                headers.remove(token);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(UPGRADE);
    }
}

/// A client's address as the forwarding headers carry it, formatted once
/// per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ClientIp {
    ip: IpAddr,
    value: HeaderValue,
}

impl ClientIp {
    pub fn new(ip: IpAddr) -> ClientIp {
        let ip = ip.to_canonical();
        // An address's text is always a valid header value.
        let value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientIp { ip, value }
    }
}

/// Adds the configured forwarding headers for a request from `client`
/// for `host` over TLS, and overwrites or drops the client's own
/// client-address headers. `X-Forwarded-For` and `Forwarded` keep what
/// the client sent, before the proxy's element: proxies in front of this
/// one write there too, so only the last element is the proxy's word.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    which: ForwardedHeaders,
    client: &ClientIp,
    host: Option<&str>,
) {
    let ip = client.ip;
    match which.client_ip {
        ClientIpHeaders::Overwrite => {
            for name in CLIENT_IP {
                // `insert` replaces every value the client sent.
                headers.insert(name, client.value.clone());
            }
        }
        ClientIpHeaders::Drop => {
            for name in &CLIENT_IP {
                headers.remove(name);
            }
        }
        ClientIpHeaders::Pass => {}
    }
    if which.x_forwarded_for {
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => {
                HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
            }
            _ => Some(client.value.clone()),
        };
        if let Some(v) = value {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if which.x_forwarded_proto {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    if which.x_forwarded_host {
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(X_FORWARDED_HOST, v);
        }
    }
    if which.forwarded {
        // RFC 7239: IPv6 addresses are bracketed and the value quoted.
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut elem = format!("for={node};proto=https");
        if let Some(h) = host.filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        }) {
            elem.push_str(&format!(";host=\"{h}\""));
        }
        let value = match headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {elem}"),
            _ => elem,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(FORWARDED, v);
        }
    }
}

/// The request's host: the `Host` header, else the URI authority (HTTP/2).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a hyper::Uri) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// RFC 9112 §3.2: a request with more than one `Host`, an HTTP/1.1
/// request without one, or a `Host` that is not a valid authority, is
/// refused with 400. Passed on, the proxy would route by one host and the
/// backend could read another. HTTP/2 names the host in `:authority`
/// (RFC 9113 §8.3.1) and may omit `Host`.
pub fn check_host(headers: &HeaderMap, version: hyper::Version) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host header"),
        (None, _) if version == hyper::Version::HTTP_11 => Err("HTTP/1.1 request without Host"),
        (None, _) => Ok(()),
        (Some(v), None) => {
            let valid = !v.is_empty()
                && !v.as_bytes().contains(&b'@')
                && hyper::http::uri::Authority::try_from(v.as_bytes()).is_ok();
            if valid {
                Ok(())
            } else {
                Err("invalid Host header")
            }
        }
    }
}

/// The protocol spoken must be the one agreed in ALPN (RFC 7301 §3.2):
/// HTTP/1.x bytes on an `h2` connection (or the HTTP/2 preface on an
/// `http/1.1` one) are refused, not served in the other protocol.
pub fn check_alpn(alpn: Option<&str>, version: hyper::Version) -> Result<(), &'static str> {
    match (alpn, version == hyper::Version::HTTP_2) {
        (Some("h2"), false) => Err("HTTP/1 request on a connection that agreed on h2"),
        (Some("http/1.1"), true) => Err("HTTP/2 request on a connection that agreed on http/1.1"),
        _ => Ok(()),
    }
}

/// A host without its port, lower-cased, for routing (borrowed when it
/// already is).
pub fn host_for_routing(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['))
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> ForwardedHeaders {
        ForwardedHeaders {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: true,
            client_ip: ClientIpHeaders::Overwrite,
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn appends_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        add_forwarded(
            &mut h,
            all(),
            &ClientIp::new("::1".parse().unwrap()),
            Some("a.test:8443"),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.test:8443");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"a.test:8443\""
        );
        let mut h = HeaderMap::new();
        let client = ClientIp::new("::ffff:10.1.2.3".parse().unwrap());
        add_forwarded(&mut h, all(), &client, None);
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=https");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn client_ip_headers_are_overwritten_dropped_or_passed() {
        let client = ClientIp::new("192.0.2.7".parse().unwrap());
        let sent = || {
            let mut h = HeaderMap::new();
            h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
            h.append("x-real-ip", HeaderValue::from_static("5.6.7.8"));
            h.insert("true-client-ip", HeaderValue::from_static("1.2.3.4"));
            h
        };
        let with = |client_ip| ForwardedHeaders { client_ip, ..all() };
        let mut h = sent();
        add_forwarded(&mut h, with(ClientIpHeaders::Overwrite), &client, None);
        for name in ["x-real-ip", "true-client-ip", "x-client-ip"] {
            let values: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(values, ["192.0.2.7"], "{name}");
        }
        let mut h = sent();
        add_forwarded(&mut h, with(ClientIpHeaders::Drop), &client, None);
        assert!(CLIENT_IP.iter().all(|n| !h.contains_key(n)));
        let mut h = sent();
        add_forwarded(&mut h, with(ClientIpHeaders::Pass), &client, None);
        assert_eq!(h.get_all("x-real-ip").iter().count(), 2);
        assert!(!h.contains_key("x-client-ip"));
    }

    #[test]
    fn exactly_one_valid_host_is_required_in_http1() {
        use hyper::Version;
        let mut h = HeaderMap::new();
        assert!(check_host(&h, Version::HTTP_11).is_err());
        assert!(check_host(&h, Version::HTTP_2).is_ok());
        h.insert(HOST, HeaderValue::from_static("a.test:8443"));
        assert!(check_host(&h, Version::HTTP_11).is_ok());
        h.append(HOST, HeaderValue::from_static("b.test"));
        assert!(check_host(&h, Version::HTTP_11).is_err());
        assert!(check_host(&h, Version::HTTP_2).is_err());
        for bad in ["", "a b", "a/b", "user@a.test"] {
            h.insert(HOST, HeaderValue::from_static(bad));
            assert!(check_host(&h, Version::HTTP_10).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_protocol_must_be_the_one_alpn_chose() {
        use hyper::Version;
        assert!(check_alpn(Some("h2"), Version::HTTP_2).is_ok());
        assert!(check_alpn(Some("h2"), Version::HTTP_11).is_err());
        assert!(check_alpn(Some("http/1.1"), Version::HTTP_11).is_ok());
        assert!(check_alpn(Some("http/1.1"), Version::HTTP_2).is_err());
        assert!(check_alpn(None, Version::HTTP_2).is_ok());
        assert!(check_alpn(None, Version::HTTP_10).is_ok());
    }

    #[test]
    fn routing_host_drops_port() {
        assert_eq!(host_for_routing("A.test:8443"), "a.test");
        assert_eq!(host_for_routing("[::1]:8443"), "::1");
        assert_eq!(host_for_routing("a.test"), "a.test");
    }
}
