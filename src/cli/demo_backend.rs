//! The embedded default's stand-in backend: a page on `[run]
//! demo_backend` (127.0.0.1:8080) so that `vaultgate run` and its printed
//! curl line answer out of the box, as nginx's welcome page does. It is
//! started only if nothing listens there when `run` starts (your real
//! backend); once started it holds the address until `run` stops, so a
//! server started later cannot bind it.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::net::TcpListener;

/// Serves until the runtime stops; returns at once if `addr` is taken.
pub async fn serve(addr: SocketAddr) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::info!(%addr, error = %e, "demo backend not started: the address is in use (your backend?)");
            return;
        }
    };
    println!("demo backend on http://{addr}/ (to serve your own: stop run, start yours there, start run again)");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(page(&req))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the proxy told the backend about the request, so a newcomer sees
/// the proxy at work.
fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "Hello from the vaultgate demo backend.\n\
         You reached it through vaultgate, which terminated TLS with a key held in its vault.\n\n\
         {} {}\nHost: {}\nX-Forwarded-For: {}\nX-Forwarded-Proto: {}\n\n\
         To put your own server here: stop `vaultgate run`, start your server on this\n\
         address, then start `vaultgate run` again; the demo page stays out of its way.\n",
        req.method(),
        req.uri(),
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
