//! Integration tests of the proxy crate against real loopback backends, in one test binary.

mod common;
mod http1;
mod limits;
mod proxy;
