//! Integration tests of the object model: manifests in, errors and normalized objects out.

mod auth;
mod manifest;
mod pod;
mod unknown_fields;
