//! (filled in by the proxy tests)
