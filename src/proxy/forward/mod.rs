//! Forwarding: route a request to an upstream, pick a backend, send the
//! request with proxy headers, stream the answer back. 502 when no backend
//! can be reached, 504 when one does not answer in time.

pub mod access;
pub mod body;
pub mod h2c;
pub mod headers;
pub mod health;
pub mod private;
pub mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::config::proxy::{Balance, ForwardedHeaders, HostPattern, ProxySettings, RouteSpec};
use crate::proxy::origin::{self, OriginError, OriginUpgrade, Outgoing};
use access::{AccessRecord, BodyStats, ConnInfo};
use body::{Answer, Counting, Logged};
use h2c::H2cError;
use upstream::{UpBody, Upstream};

/// Why a request got no answer from a backend.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Origin(#[from] OriginError),
    #[error("{0}")]
    H2c(#[from] H2cError),
}

impl SendError {
    /// Whether the backend could not be reached at all: only then is it
    /// ejected and the request tried elsewhere.
    fn is_connect(&self) -> bool {
        match self {
            SendError::Origin(e) => e.is_connect(),
            SendError::H2c(e) => matches!(e, H2cError::Connect(_)),
        }
    }
}

/// Routes and upstreams, shared by every connection.
pub struct Forwarder {
    routes: Vec<RouteSpec>,
    upstreams: HashMap<String, Arc<Upstream>>,
    forwarded: ForwardedHeaders,
    access_log: bool,
}

impl Forwarder {
    pub fn new(settings: &ProxySettings) -> Forwarder {
        Forwarder {
            routes: settings.routes.clone(),
            upstreams: settings
                .upstreams
                .iter()
                .map(|(name, spec)| (name.clone(), Arc::new(Upstream::new(spec.clone()))))
                .collect(),
            forwarded: settings.forwarded,
            access_log: settings.access_log,
        }
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// The most specific route: exact host over wildcard over any, then
    /// the longest path prefix (as nginx picks locations).
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Upstream>> {
        self.routes
            .iter()
            .filter(|r| r.host.matches(host) && path.starts_with(r.path_prefix.as_str()))
            .max_by_key(|r| {
                let host_rank = match &r.host {
                    HostPattern::Exact(_) => 2,
                    HostPattern::Wildcard(_) => 1,
                    HostPattern::Any => 0,
                };
                (host_rank, r.path_prefix.len())
            })
            .and_then(|r| self.upstreams.get(&r.upstream))
    }
}

fn full(text: String) -> Answer {
    Answer::Other(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

fn empty_up() -> UpBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Handles one request from a client, read by hyper (HTTP/2) or by the
/// proxy's HTTP/1 driver ([`crate::proxy::h1`]).
///
/// A protocol upgrade (WebSocket) is spliced here when hyper read the
/// request (it carries hyper's `OnUpgrade`); otherwise the response keeps
/// the backend's upgrade in its extensions for the driver, which owns the
/// client's connection, to take with `hyper::upgrade::on`.
pub async fn handle<B>(
    mut req: Request<B>,
    fwd: Arc<Forwarder>,
    conn: Arc<ConnInfo>,
) -> Result<Response<Logged>, Infallible>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<upstream::BoxError>,
{
    let start = Instant::now();
    let in_flight = access::Activity::begin(&conn);
    let host = headers::request_host(req.headers(), req.uri())
        .unwrap_or("")
        .to_owned();
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut record = AccessRecord {
        enabled: fwd.access_log,
        conn: conn.clone(),
        method: req.method().clone(),
        host,
        path,
        status: 0,
        body: Arc::new(BodyStats::default()),
        upstream: None,
        backend: None,
        upstream_time: None,
        start,
        in_flight,
    };
    if let Err(why) = headers::check_host(req.headers(), req.version()) {
        return Ok(fail(record, StatusCode::BAD_REQUEST, why));
    }
    if let Err(why) = headers::check_alpn(conn.alpn.as_deref(), req.version()) {
        let mut resp = fail(record, StatusCode::BAD_REQUEST, why);
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    let routed = fwd
        .route(&headers::host_for_routing(&record.host), req.uri().path())
        .cloned();
    let Some(up) = routed else {
        return Ok(fail(
            record,
            StatusCode::NOT_FOUND,
            "no route for this host and path",
        ));
    };
    record.upstream = Some(up.clone());

    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = (upgrade
        && req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some())
    .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut hdrs = parts.headers;
    headers::strip_hop_by_hop(&mut hdrs, upgrade);
    headers::add_forwarded(
        &mut hdrs,
        fwd.forwarded,
        &conn.client_ip,
        (!record.host.is_empty()).then_some(record.host.as_str()),
    );
    if !hdrs.contains_key(HOST) {
        // HTTP/2 clients send :authority instead; HTTP/1.1 backends need Host.
        if let Ok(v) = HeaderValue::from_str(&record.host) {
            hdrs.insert(HOST, v);
        }
    }
    let hash_value = match &up.spec.balance {
        Balance::HashHeader(name) => hdrs.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        _ => None,
    };
    // An empty body is not wrapped (nothing to count, nothing to box).
    let body = (!body.is_end_stream()).then(|| {
        Counting::new(body, record.body.clone())
            .map_err(Into::into)
            .boxed_unsync()
    });
    // HTTP/1 backends: the head is encoded once, however many backends are
    // tried. A refused connection sent nothing, body included, so the
    // request can always go to another backend.
    let (mut outgoing, mut h2c_body) = if up.spec.h2c {
        (None, body)
    } else {
        let out = Outgoing::new(&parts.method, record.path.as_str(), &hdrs, body, upgrade);
        (Some(out), None)
    };
    // An h2c request's body is consumed by the attempt: only a bodiless
    // one can be tried again.
    let h2c_retryable = h2c_body.is_none();

    let mut exclude = None;
    let mut refused: Option<String> = None;
    let (resp, backend_i) = loop {
        let Some(i) = up.pick(conn.client.ip(), hash_value.as_deref(), exclude) else {
            let why = refused
                .unwrap_or_else(|| "no available backend (all ejected or unhealthy)".to_owned());
            return Ok(fail(record, StatusCode::BAD_GATEWAY, &why));
        };
        let backend = up.backends[i].clone();
        let sent = Instant::now();
        let result = match outgoing.as_mut() {
            Some(out) => {
                let pool = if up.spec.proxy_protocol {
                    conn.private.to(
                        backend.addr,
                        conn.client,
                        conn.local,
                        up.spec.connect_timeout,
                    )
                } else {
                    backend.idle.clone()
                };
                let send = origin::send(&pool, out);
                tokio::time::timeout(up.spec.response_timeout, send)
                    .await
                    .map(|r| {
                        r.map(|resp| resp.map(Answer::Origin))
                            .map_err(SendError::from)
                    })
            }
            None => {
                // HTTP/2 carries the host in :authority (nginx refuses a
                // request whose :authority and Host differ).
                let authority = if record.host.is_empty() {
                    backend.addr.to_string()
                } else {
                    record.host.clone()
                };
                let uri = match Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(record.path.clone())
                    .build()
                {
                    Ok(u) => u,
                    Err(_) => {
                        return Ok(fail(
                            record,
                            StatusCode::BAD_REQUEST,
                            "invalid request target",
                        ))
                    }
                };
                let mut out = Request::new(h2c_body.take().unwrap_or_else(empty_up));
                *out.method_mut() = parts.method.clone();
                *out.uri_mut() = uri;
                *out.headers_mut() = hdrs.clone();
                *out.version_mut() = Version::HTTP_2;
                out.headers_mut().remove(HOST);
                // Boxed: the h2c path is rare, and its future is large.
                let send = Box::pin(up.h2c.send(backend.addr, up.spec.connect_timeout, out));
                tokio::time::timeout(up.spec.response_timeout, send)
                    .await
                    .map(|r| {
                        r.map(|resp| {
                            resp.map(|b| Answer::Other(b.map_err(Into::into).boxed_unsync()))
                        })
                        .map_err(SendError::from)
                    })
            }
        };
        match result {
            Ok(Ok(resp)) => {
                record.upstream_time = Some(sent.elapsed());
                break (resp, i);
            }
            Ok(Err(e)) if e.is_connect() => {
                let why = format!(
                    "backend {} refused the connection: {}",
                    backend.addr,
                    error_chain(&e)
                );
                up.eject(i, &why);
                let retryable = outgoing.is_some() || h2c_retryable;
                if retryable && exclude.is_none() {
                    exclude = Some(i);
                    refused = Some(why);
                    continue;
                }
                return Ok(fail(record, StatusCode::BAD_GATEWAY, &why));
            }
            // The client's body broke (an invalid chunk, a reset stream):
            // its fault, not the backend's, and the backend never got a
            // complete request.
            Ok(Err(e)) if record.body.failed.load(Ordering::Relaxed) => {
                let why = format!("invalid request body: {}", error_chain(&e));
                return Ok(fail(record, StatusCode::BAD_REQUEST, &why));
            }
            Ok(Err(e)) => {
                let why = format!("backend {} failed: {}", backend.addr, error_chain(&e));
                return Ok(fail(record, StatusCode::BAD_GATEWAY, &why));
            }
            Err(_) => {
                let why = format!(
                    "backend {} did not answer within {:?}",
                    backend.addr, up.spec.response_timeout
                );
                return Ok(fail(record, StatusCode::GATEWAY_TIMEOUT, &why));
            }
        }
    };
    let backend = up.backends[backend_i].clone();
    backend.active.fetch_add(1, Ordering::Relaxed);
    record.backend = Some(backend);
    up.upstream_seconds
        .record(record.upstream_time.map_or(0.0, |d| d.as_secs_f64()));

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        if let Some((backend_io, pending)) = resp
            .extensions()
            .get::<OriginUpgrade>()
            .and_then(OriginUpgrade::take)
        {
            tokio::spawn(async move {
                match client_upgrade.await {
                    Ok(c) => {
                        let mut c = TokioIo::new(c);
                        let _ = origin::splice(&mut c, &[], backend_io, &pending).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
                }
            });
        }
    }
    let (mut rparts, rbody) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers, switching && upgrade);
    record.status = rparts.status.as_u16();
    Ok(Response::from_parts(rparts, Logged::new(rbody, record)))
}

/// "client error (Connect): tcp connect error: Connection refused": hyper's
/// top-level message alone hides the cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An error answer: a short body, and a log line saying why.
fn fail(mut record: AccessRecord, status: StatusCode, why: &str) -> Response<Logged> {
    record.status = status.as_u16();
    if status.is_server_error() {
        tracing::warn!(upstream = %record.upstream_name(), host = ?record.host, path = ?record.path.as_str(), status = status.as_u16(), "{why}");
    } else {
        tracing::debug!(upstream = %record.upstream_name(), host = ?record.host, path = ?record.path.as_str(), status = status.as_u16(), "{why}");
    }
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(Logged::new(full(text), record));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
