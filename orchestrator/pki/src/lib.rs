//! Berth's public-key infrastructure: the cluster CA, the certificates it issues, and the one TLS policy every
//! Berth listener and client uses (rustls with the `ring` provider, TLS 1.2 and 1.3, rustls' default cipher
//! suites: AEAD only, forward secrecy only).
//!
//! Who holds what:
//! - the control plane holds the [`ClusterCa`] (certificate and key) and issues the API server's serving
//!   certificate, its client identity towards agents ([`APISERVER_NAME`]) and each node's serving certificate
//!   (from the node's CSR);
//! - every client holds only the CA certificate ([`CaCert`]) and verifies servers against it; a join token
//!   carries [`CaCert::hash`] so a joining client can check the CA it was handed before it trusts it.
//!
//! Boundary: no knowledge of the API, the store or tokens; no insecure mode exists here.

mod ca;
mod config;
mod serve;

pub use ca::{generate_csr, CaCert, ClusterCa, Issued};
pub use config::{client_config, pinned_client_config, server_config, ClientAuth, Identity};
pub use serve::serve_tls;

/// The DNS name in the API server's client certificate; agents accept only this client.
pub const APISERVER_NAME: &str = "berth-apiserver";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: not a PEM certificate")]
    NoCertificate { what: String },
    #[error("{what}: not a PEM private key")]
    NoPrivateKey { what: String },
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{0:?} is not a valid DNS name or IP address for a certificate")]
    Name(String),
    #[error("{0:?} is not a CA hash (64 lowercase hex digits of SHA-256)")]
    Hash(String),
}

/// The crypto provider of every Berth TLS endpoint.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex of SHA-256 over `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Make ring the process-wide rustls provider (idempotent). reqwest is built with rustls but without a provider
/// of its own, so every reqwest client, even a plain-HTTP one, needs this before it is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
