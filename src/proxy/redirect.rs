//! Plain-HTTP listeners that send every client to HTTPS, as nginx's
//! `return 301 https://$host$request_uri;` does: the same host and path
//! on the proxy's HTTPS port. Nothing is forwarded from here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Plain-HTTP connections served at once per listener; a redirect costs
/// next to nothing, so this only bounds a flood.
const MAX_CONNECTIONS: usize = 4096;
/// A client gets this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every request on `listener` with a redirect to `https_port`.
pub(crate) async fn serve(listener: TcpListener, https_port: u16) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the client sees the connection close
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(redirect(&req, https_port))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            drop(permit);
        });
    }
}

/// 301 for GET and HEAD (what browsers and nginx users expect), 308 for
/// other methods, which must not turn into a GET; 400 without a host.
fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(host_without_port)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/'));
    let Some(host) = host else {
        return answer(StatusCode::BAD_REQUEST, "400 Bad Request: no Host\n", None);
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match https_port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    let status = if req.method() == Method::GET || req.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let body = format!("{} {location}\n", status.as_u16());
    answer(status, &body, HeaderValue::from_str(&location).ok())
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(h: &str) -> &str {
    match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => &h[..i],
        _ => h,
    }
}

fn answer(status: StatusCode, body: &str, location: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(l) = location {
        h.insert(LOCATION, l);
    } else {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_port_is_taken_off_the_host_but_not_off_an_ipv6_address() {
        assert_eq!(super::host_without_port("example.com:80"), "example.com");
        assert_eq!(super::host_without_port("example.com"), "example.com");
        assert_eq!(super::host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(super::host_without_port("[::1]"), "[::1]");
    }
}
