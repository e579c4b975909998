//! Integration tests of the API client against in-process fake API servers: trust, the join flow, field
//! selectors, and failover across several servers.

mod failover;
mod join;
mod mirror;
