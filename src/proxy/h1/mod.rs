//! The proxy's own HTTP/1.1 server side, for connections that agreed on
//! `http/1.1` in ALPN or named no protocol (HTTP/2 stays with hyper).
//! Written for what hyper's server could not give: a keep-alive
//! connection that waits for its next request holds no read or write
//! buffer, and a request is read, forwarded and answered in the
//! connection's own task.
//!
//! # Layout
//! - [`head`]: parsing and checking a request head (httparse), framing
//!   and keep-alive decisions, the refusals.
//! - [`body`]: the request body handed to the forwarder, fed by the loop.
//! - [`response`]: writing a response head and streaming its body.
//! - [`idle`]: waiting for the next request without a buffer.
//! - [`conn`]: the connection loop and its timeouts.

pub mod body;
pub mod conn;
pub mod head;
pub mod idle;
pub mod response;

pub use conn::serve;
