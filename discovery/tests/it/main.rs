//! Integration tests of the discovery crate (selectors, the registry, the DNS server), in one test binary.

mod dns;
mod registry;
mod selector;
