//! The metrics listener: `GET /metrics` in Prometheus's text format (the
//! process's `process_*` metrics collected at each scrape), the proxy's
//! status page at `/status` (its data at `/status.json`), and 404 for any
//! other path, as exporters answer.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::catalog::{self, Process};

/// A status page: its HTML (which fetches `/status.json` and `/metrics`)
/// and the function that makes its JSON.
#[derive(Clone)]
pub struct StatusPage {
    pub html: &'static str,
    pub json: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Serves `listener` until the task is dropped; registers `process`'s
/// metrics first (help texts, series at zero).
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    process: Process,
    status: Option<StatusPage>,
) {
    catalog::register(process);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (handle, status) = (handle.clone(), status.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = answer(&req, &handle, status.as_ref());
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// What the page may load: itself and what it fetches from this listener,
/// nothing from anywhere else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

fn answer<B>(
    req: &Request<B>,
    handle: &PrometheusHandle,
    status: Option<&StatusPage>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics")
        || (status.is_some() && matches!(path, "/status" | "/status.json"));
    if !known {
        let text = if status.is_some() {
            "not found: /metrics has the metrics, /status the status page\n"
        } else {
            "not found: /metrics has the metrics\n"
        };
        return plain(StatusCode::NOT_FOUND, text);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let (content_type, body) = match (path, status) {
        ("/status", Some(s)) => (
            "text/html; charset=utf-8",
            Bytes::from_static(s.html.as_bytes()),
        ),
        ("/status.json", Some(s)) => ("application/json", Bytes::from((s.json)())),
        _ => {
            let mut text = handle.render();
            text.push_str(&super::process::render());
            (
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(text),
            )
        }
    };
    let mut builder = Response::builder()
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store");
    if path == "/status" {
        builder = builder
            .header("content-security-policy", PAGE_POLICY)
            .header("x-content-type-options", "nosniff");
    }
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    builder.body(Full::new(body)).unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
