//! Which protocol upgrades (RFC 9110 §7.8) pass through the proxy.
//!
//! After a `101 Switching Protocols` the proxy only copies bytes: whatever
//! the client sends next reaches the backend with no route, no host check
//! and no access log line. A WebSocket is one long exchange with the
//! resource the request named, so that is acceptable; an `h2c` upgrade is
//! a whole HTTP/2 connection to the backend, on which the client can ask
//! for any host and path (nginx never forwards one; Envoy refuses it). So
//! only the configured protocols (`upgrade_protocols`, WebSocket by
//! default; never `h2c`) are offered to the backend; any other is dropped
//! from the request, which goes on as a plain one. A backend that
//! switches to a protocol that was not offered gets its answer replaced
//! by a 502.

use hyper::header::{HeaderMap, HeaderValue, UPGRADE};

/// The protocols of the request's `Upgrade` that may pass, as the value
/// to send on (in the client's order); `None` when none may.
pub fn permitted(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let offered: Vec<&str> = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| is_allowed(p, allowed))
        .collect();
    if offered.is_empty() {
        return None;
    }
    HeaderValue::from_str(&offered.join(", ")).ok()
}

/// Whether the backend's `101` switched to one of the protocols offered.
pub fn answer_matches(answer: &HeaderMap, offered: &HeaderValue) -> bool {
    let Ok(offered) = offered.to_str() else {
        return false;
    };
    let chosen = answer.get(UPGRADE).and_then(|v| v.to_str().ok());
    chosen.is_some_and(|chosen| {
        chosen.split(',').map(str::trim).any(|c| {
            offered
                .split(',')
                .map(str::trim)
                .any(|o| name(o).eq_ignore_ascii_case(name(c)))
        })
    })
}

/// `websocket` of `websocket`, `h2c` of `h2c/1.0` (a protocol may name a
/// version after a slash).
fn name(protocol: &str) -> &str {
    protocol.split('/').next().unwrap_or(protocol).trim()
}

fn is_allowed(protocol: &str, allowed: &[String]) -> bool {
    let n = name(protocol);
    !n.is_empty() && allowed.iter().any(|a| a.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn only_configured_protocols_are_offered() {
        let ws = vec!["websocket".to_owned()];
        assert_eq!(permitted(&upgrade("websocket"), &ws).unwrap(), "websocket");
        assert_eq!(permitted(&upgrade("WebSocket"), &ws).unwrap(), "WebSocket");
        assert!(permitted(&upgrade("h2c"), &ws).is_none());
        assert!(permitted(&upgrade("H2C"), &ws).is_none());
        assert_eq!(
            permitted(&upgrade("h2c, websocket"), &ws).unwrap(),
            "websocket"
        );
        assert!(permitted(&upgrade("websocket"), &[]).is_none());
        assert!(permitted(&HeaderMap::new(), &ws).is_none());
    }

    #[test]
    fn the_backend_must_switch_to_what_was_offered() {
        let offered = HeaderValue::from_static("websocket");
        assert!(answer_matches(&upgrade("websocket"), &offered));
        assert!(answer_matches(&upgrade("WebSocket"), &offered));
        assert!(!answer_matches(&upgrade("h2c"), &offered));
        assert!(!answer_matches(&HeaderMap::new(), &offered));
    }
}
