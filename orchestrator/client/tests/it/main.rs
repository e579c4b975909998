//! Integration tests of the API client against an in-process fake API server over TLS: trust, the join flow,
//! field selectors.

mod join;
