//! The body types both sides of the proxy pass each other: what a
//! client's request body becomes on its way to a backend, whichever server
//! (hyper for HTTP/2, the proxy's own driver for HTTP/1) read it.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Request bodies sent to backends: the client's streamed body, or empty.
/// The error is boxed because the body comes from hyper (HTTP/2) or from
/// the proxy's own HTTP/1 driver.
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body's error, whichever server read it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
