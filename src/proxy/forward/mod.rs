//! Forwarding: route a request to an upstream, pick a backend, send the
//! request with proxy headers, stream the answer back. 502 when no backend
//! can be reached, 504 when one does not answer in time.
//!
//! The request path is [`handle`]'s phases, each a function with one job
//! (as pingora names its own): `begin_record`, `prepare` (check, route,
//! rewrite headers), `try_backends` (pick a backend, `send_once`,
//! `classify` the outcome: answered, refused and tried elsewhere, or
//! failed) and `finish` (count, splice an upgrade, strip hop-by-hop
//! fields). Every refusal is a `Refusal`, answered by `fail`.
//!
//! - [`access`]: what a connection and a request record, the request id.
//! - [`access_log`]: the access log's formats and files.
//! - [`body`]: the answer's body types: counted, logged when it ends.
//! - [`headers`]: hop-by-hop fields, forwarding fields, host checks.
//! - [`health`]: active health checks.
//! - [`path`]: the one form of a request path that routes match and
//!   backends receive.
//! - [`upgrade`]: which protocol upgrades pass (WebSocket, never h2c).
//! - [`upstream`]: upstreams, their backends, balancing, ejection.

pub mod access;
pub mod access_log;
pub mod body;
pub mod headers;
pub mod health;
pub mod path;
pub mod upgrade;
pub mod upstream;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::config::proxy::{
    Balance, ForwardedHeaders, HostPattern, PathRules, ProxySettings, ResponseHeaders, RouteSpec,
};
use crate::proxy::body::{BoxError, UpBody};
use crate::proxy::origin::h2c::H2cError;
use crate::proxy::origin::{self, OriginError, OriginUpgrade, Outgoing};
use access::{AccessRecord, BodyStats, ConnInfo};
use body::{Answer, Counting, Logged};
use upstream::{Backend, Upstream};

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
            SendError::H2c(e) => matches!(e, H2cError::Connect(_) | H2cError::ConnectTimeout(_)),
        }
    }
}

/// Routes and upstreams, shared by every connection.
pub struct Forwarder {
    routes: Vec<RouteSpec>,
    /// `default_server_name`: where a request whose host no route names
    /// goes (nginx's `default_server`), as its certificate does.
    default_host: Option<String>,
    upstreams: HashMap<String, Arc<Upstream>>,
    forwarded: ForwardedHeaders,
    access_log: Option<Arc<access_log::AccessLog>>,
    /// Set on and removed from every answer, the proxy's own included.
    response_headers: ResponseHeaders,
    path_rules: PathRules,
    upgrade_protocols: Vec<String>,
}

impl Forwarder {
    /// Fails only when the access log file cannot be opened.
    pub fn new(settings: &ProxySettings) -> Result<Forwarder, access_log::AccessLogError> {
        let log = access_log::AccessLog::open(settings)?.map(Arc::new);
        Ok(Forwarder::with_access_log(settings, log))
    }

    /// A forwarder for `settings` that writes to `log`, the running one's
    /// when only the backends' addresses changed.
    pub fn with_access_log(
        settings: &ProxySettings,
        log: Option<Arc<access_log::AccessLog>>,
    ) -> Forwarder {
        Forwarder {
            routes: settings.routes.clone(),
            default_host: settings.default_server_name.clone(),
            upstreams: settings
                .upstreams
                .iter()
                .map(|(name, spec)| (name.clone(), Arc::new(Upstream::new(spec.clone()))))
                .collect(),
            forwarded: settings.forwarded,
            access_log: log,
            response_headers: settings.response_headers.clone(),
            path_rules: settings.path_rules,
            upgrade_protocols: settings.upgrade_protocols.clone(),
        }
    }

    pub fn access_log(&self) -> Option<Arc<access_log::AccessLog>> {
        self.access_log.clone()
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// The most specific route: exact host over wildcard over any, then
    /// the longest path prefix (as nginx picks locations). A host no
    /// route names (a client without SNI, an IP address, a name the proxy
    /// does not serve) is routed as `default_server_name`, if set.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Upstream>> {
        self.route_host(host, path).or_else(|| {
            let default = self.default_host.as_deref().filter(|d| *d != host)?;
            self.route_host(default, path)
        })
    }

    fn route_host(&self, host: &str, path: &str) -> Option<&Arc<Upstream>> {
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

/// Why the proxy answers a request itself, with an error status.
struct Refusal {
    status: StatusCode,
    why: Cow<'static, str>,
    /// Close the connection after the answer (the client cannot be trusted
    /// to frame the next request).
    close: bool,
}

impl Refusal {
    fn new(status: StatusCode, why: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
            close: false,
        }
    }
}

/// A request made ready for the backends: routed, its headers rewritten,
/// its body wrapped, and for HTTP/1 backends its head encoded once however
/// many backends are tried.
struct Prepared {
    up: Arc<Upstream>,
    /// The path the route matched, and the query: what the backend gets.
    target: PathAndQuery,
    /// The protocols offered to the backend (`Upgrade`), when the client
    /// asked to switch to one that may pass.
    upgrade: Option<HeaderValue>,
    /// The client side of an upgrade, when hyper read the request.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    method: hyper::Method,
    headers: HeaderMap,
    /// The value `hash_header` balancing hashes.
    hash_value: Option<Vec<u8>>,
    send: Sending,
}

/// How the request goes to a backend.
enum Sending {
    /// HTTP/1.1: the head is encoded once; a refused connection sent
    /// nothing, body included, so the request can always go elsewhere.
    Http1(Outgoing),
    /// h2c: the body is consumed by the attempt, so only a bodiless
    /// request can be tried again.
    H2c {
        body: Option<UpBody>,
        retryable: bool,
    },
}

impl Sending {
    fn retryable(&self) -> bool {
        match self {
            Sending::Http1(_) => true,
            Sending::H2c { retryable, .. } => *retryable,
        }
    }
}

/// Handles one request from a client, read by hyper (HTTP/2) or by the
/// proxy's HTTP/1 driver ([`crate::proxy::h1`]), in four phases: make the
/// access record, [`prepare`] the request, [`try_backends`] until one
/// answers or the request fails, and [`finish`] the answer.
///
/// A protocol upgrade (WebSocket) is spliced here when hyper read the
/// request (it carries hyper's `OnUpgrade`); otherwise the response keeps
/// the backend's upgrade in its extensions for the driver, which owns the
/// client's connection, to take with `hyper::upgrade::on`.
pub async fn handle<B>(
    req: Request<B>,
    fwd: Arc<Forwarder>,
    conn: Arc<ConnInfo>,
) -> Result<Response<Logged>, Infallible>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut record = begin_record(&req, &fwd, &conn);
    let mut prepared = match prepare(req, &fwd, &conn, &mut record) {
        Ok(p) => p,
        Err(refusal) => return Ok(edited(fail(record, refusal), &fwd)),
    };
    let answered = try_backends(&mut prepared, &conn, &mut record)
        .await
        .and_then(|(resp, backend)| check_switch(&resp, &prepared).map(|()| (resp, backend)));
    let resp = match answered {
        Ok((resp, backend)) => finish(resp, prepared, record, backend),
        Err(refusal) => fail(record, refusal),
    };
    Ok(edited(resp, &fwd))
}

/// The answer with `[proxy] hsts` and `response_headers` applied, as
/// nginx's `add_header … always` does: error answers too.
fn edited(mut resp: Response<Logged>, fwd: &Forwarder) -> Response<Logged> {
    if !fwd.response_headers.is_empty() {
        fwd.response_headers.apply(resp.headers_mut());
    }
    resp
}

/// The access record, started before anything can fail.
fn begin_record<B>(req: &Request<B>, fwd: &Forwarder, conn: &Arc<ConnInfo>) -> AccessRecord {
    let start = Instant::now();
    let in_flight = access::Activity::begin(conn);
    let host = headers::request_host(req.headers(), req.uri())
        .unwrap_or("")
        .to_owned();
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let logged = |name| {
        fwd.access_log
            .as_ref()
            .and_then(|_| req.headers().get(name).cloned())
    };
    AccessRecord {
        log: fwd.access_log.clone(),
        conn: conn.clone(),
        method: req.method().clone(),
        host,
        path,
        version: req.version(),
        request_id: access::request_id(req.headers()),
        referer: logged(hyper::header::REFERER),
        user_agent: logged(hyper::header::USER_AGENT),
        status: 0,
        body: Arc::new(BodyStats::default()),
        upstream: None,
        backend: None,
        upstream_time: None,
        start,
        _in_flight: in_flight,
    }
}

/// Checks and routes the request, rewrites its headers for the backend
/// (hop-by-hop fields out, forwarding fields in, `Host` for HTTP/2
/// clients), and wraps its body to count it.
fn prepare<B>(
    mut req: Request<B>,
    fwd: &Forwarder,
    conn: &ConnInfo,
    record: &mut AccessRecord,
) -> Result<Prepared, Refusal>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    headers::check_host(req.headers(), req.version())
        .map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, why))?;
    headers::check_alpn(conn.alpn.as_deref(), req.version()).map_err(|why| Refusal {
        close: true,
        ..Refusal::new(StatusCode::BAD_REQUEST, why)
    })?;
    let (up, target) = route(fwd, record)?;
    let upgrade =
        (req.version() == Version::HTTP_11 && !up.spec.h2c && headers::is_upgrade(req.headers()))
            .then(|| upgrade::permitted(req.headers(), &fwd.upgrade_protocols))
            .flatten();
    let client_upgrade = (upgrade.is_some()
        && req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some())
    .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut hdrs = parts.headers;
    headers::strip_hop_by_hop(&mut hdrs, upgrade.is_some());
    if let Some(offered) = &upgrade {
        hdrs.insert(hyper::header::UPGRADE, offered.clone());
    }
    headers::add_forwarded(
        &mut hdrs,
        fwd.forwarded,
        &conn.client_ip,
        (!record.host.is_empty()).then_some(record.host.as_str()),
    );
    hdrs.insert(access::REQUEST_ID, record.request_id.clone());
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
    let send = if up.spec.h2c {
        Sending::H2c {
            retryable: body.is_none(),
            body,
        }
    } else {
        Sending::Http1(Outgoing::new(
            &parts.method,
            target.as_str(),
            &hdrs,
            body,
            upgrade.is_some(),
        ))
    };
    Ok(Prepared {
        up,
        target,
        upgrade,
        client_upgrade,
        method: parts.method,
        headers: hdrs,
        hash_value,
        send,
    })
}

/// The request's path in normal form (400 when it cannot be put in one),
/// and the upstream of the route that matches it (404 when none does).
fn route(
    fwd: &Forwarder,
    record: &mut AccessRecord,
) -> Result<(Arc<Upstream>, PathAndQuery), Refusal> {
    let target = path::normalize(&record.path, fwd.path_rules)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?
        .into_owned();
    let up = fwd
        .route(&headers::host_for_routing(&record.host), target.path())
        .cloned()
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "no route for this host and path"))?;
    record.upstream = Some(up.clone());
    Ok((up, target))
}

/// Picks a backend and sends the request to it; a backend that refuses
/// the connection is ejected and the request goes to one other backend
/// (once), as nginx's `proxy_next_upstream error` does. Returns the answer
/// and the index of the backend that gave it.
async fn try_backends(
    p: &mut Prepared,
    conn: &ConnInfo,
    record: &mut AccessRecord,
) -> Result<(Response<Answer>, usize), Refusal> {
    let up = p.up.clone();
    let mut exclude = None;
    let mut refused: Option<String> = None;
    loop {
        let Some(i) = up.pick(conn.client.ip(), p.hash_value.as_deref(), exclude) else {
            let why = refused
                .unwrap_or_else(|| "no available backend (all ejected or unhealthy)".to_owned());
            return Err(Refusal::new(StatusCode::BAD_GATEWAY, why));
        };
        let backend = up.backends[i].clone();
        let sent = Instant::now();
        let result = send_once(p, &backend, conn, record).await?;
        match classify(result, &up, i, record) {
            Attempt::Answered(resp) => {
                record.upstream_time = Some(sent.elapsed());
                return Ok((resp, i));
            }
            Attempt::Refused(why) if p.send.retryable() && exclude.is_none() => {
                exclude = Some(i);
                refused = Some(why);
            }
            Attempt::Refused(why) => return Err(Refusal::new(StatusCode::BAD_GATEWAY, why)),
            Attempt::Failed(refusal) => return Err(refusal),
        }
    }
}

/// What one attempt on one backend gave: the answer, or an error, or no
/// answer within `response_timeout` (the outer `Err`).
type SendResult = Result<Result<Response<Answer>, SendError>, tokio::time::error::Elapsed>;

/// One attempt on one backend, within the upstream's response timeout.
async fn send_once(
    p: &mut Prepared,
    backend: &Backend,
    conn: &ConnInfo,
    record: &AccessRecord,
) -> Result<SendResult, Refusal> {
    let spec = &p.up.spec;
    match &mut p.send {
        Sending::Http1(out) => {
            let pool = if spec.proxy_protocol {
                conn.per_client
                    .to(backend.addr, conn.client, conn.local, spec.connect_timeout)
            } else {
                backend.pool.clone()
            };
            let send = origin::send(&pool, out);
            Ok(tokio::time::timeout(spec.response_timeout, send)
                .await
                .map(|r| {
                    r.map(|resp| resp.map(Answer::Origin))
                        .map_err(SendError::from)
                }))
        }
        Sending::H2c { body, .. } => {
            let out = h2c_request(
                &p.method,
                &p.headers,
                body.take().unwrap_or_else(empty_up),
                (record, &p.target),
                backend,
            )?;
            // Boxed: the h2c path is rare, and its future is large.
            let send = Box::pin(p.up.h2c.send(backend.addr, spec.connect_timeout, out));
            Ok(tokio::time::timeout(spec.response_timeout, send)
                .await
                .map(|r| {
                    r.map(|resp| resp.map(|b| Answer::Other(b.map_err(Into::into).boxed_unsync())))
                        .map_err(SendError::from)
                }))
        }
    }
}

/// The request as an h2c backend gets it: HTTP/2 carries the host in
/// `:authority` (nginx refuses a request whose `:authority` and `Host`
/// differ), so `Host` goes.
fn h2c_request(
    method: &hyper::Method,
    hdrs: &HeaderMap,
    body: UpBody,
    (record, target): (&AccessRecord, &PathAndQuery),
    backend: &Backend,
) -> Result<Request<UpBody>, Refusal> {
    let authority = if record.host.is_empty() {
        backend.addr.to_string()
    } else {
        record.host.clone()
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(target.clone())
        .build()
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid request target"))?;
    let mut out = Request::new(body);
    *out.method_mut() = method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = hdrs.clone();
    *out.version_mut() = Version::HTTP_2;
    out.headers_mut().remove(HOST);
    Ok(out)
}

/// What one attempt came to.
enum Attempt {
    Answered(Response<Answer>),
    /// The backend could not be reached: it is ejected, and another may
    /// be tried.
    Refused(String),
    /// The request fails with this answer.
    Failed(Refusal),
}

/// Sorts an attempt's outcome: who is at fault decides the status (502
/// for the backend, 504 for its silence, 400 for the client's own body).
fn classify(result: SendResult, up: &Upstream, i: usize, record: &AccessRecord) -> Attempt {
    let addr = up.backends[i].addr;
    match result {
        Ok(Ok(resp)) => Attempt::Answered(resp),
        Ok(Err(e)) if e.is_connect() => {
            let why = format!("backend {addr} refused the connection: {}", error_chain(&e));
            up.eject(i, &why);
            Attempt::Refused(why)
        }
        // The client's body broke (an invalid chunk, a reset stream): its
        // fault, not the backend's, and the backend never got a complete
        // request.
        Ok(Err(e)) if record.body.failed.load(Ordering::Relaxed) => Attempt::Failed(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {}", error_chain(&e)),
        )),
        Ok(Err(e)) => Attempt::Failed(Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!("backend {addr} failed: {}", error_chain(&e)),
        )),
        Err(_) => Attempt::Failed(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "backend {addr} did not answer within {:?}",
                up.spec.response_timeout
            ),
        )),
    }
}

/// A `101` must switch to a protocol that was offered: a backend that
/// switches to anything else (h2c to a request that asked for it, whose
/// `Upgrade` the proxy dropped) would hand the client a connection past
/// the routes. Its connection is closed and the client gets a 502.
fn check_switch(resp: &Response<Answer>, p: &Prepared) -> Result<(), Refusal> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    match &p.upgrade {
        Some(offered) if upgrade::answer_matches(resp.headers(), offered) => Ok(()),
        _ => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "backend switched protocols to {:?}, which was not offered",
                resp.headers().get(hyper::header::UPGRADE)
            ),
        )),
    }
}

/// The backend's answer on its way to the client: counted against the
/// backend, an upgrade spliced when hyper holds the client side, and its
/// hop-by-hop fields removed.
fn finish(
    resp: Response<Answer>,
    p: Prepared,
    mut record: AccessRecord,
    backend_i: usize,
) -> Response<Logged> {
    let backend = p.up.backends[backend_i].clone();
    backend.active.fetch_add(1, Ordering::Relaxed);
    record.backend = Some(backend);
    p.up.upstream_seconds
        .record(record.upstream_time.map_or(0.0, |d| d.as_secs_f64()));

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, p.client_upgrade) {
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
    headers::strip_hop_by_hop(&mut rparts.headers, switching && p.upgrade.is_some());
    record.status = rparts.status.as_u16();
    Response::from_parts(rparts, Logged::new(rbody, record))
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
fn fail(mut record: AccessRecord, refusal: Refusal) -> Response<Logged> {
    let Refusal { status, why, close } = refusal;
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
    if close {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
