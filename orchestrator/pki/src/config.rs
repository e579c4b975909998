//! rustls configurations: one policy for every Berth endpoint.

use crate::{provider, CaCert, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::sync::Arc;

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A certificate chain and its private key, parsed for rustls. `Debug` omits the key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("certificates", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Identity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(PkiError::NoCertificate { what: "certificate".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| PkiError::NoPrivateKey { what: "certificate key".into() })?;
        Ok(Self { chain, key })
    }
}

/// Which clients a server accepts.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Any client (authentication happens above TLS, e.g. bearer tokens).
    None,
    /// Only clients with a certificate from `ca` valid for the DNS name `name`.
    Require { ca: CaCert, name: String },
}

fn tls_err(what: &str) -> impl FnOnce(rustls::Error) -> PkiError + '_ {
    move |source| PkiError::Tls { what: what.to_string(), source }
}

/// A server configuration: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, session tickets on.
pub fn server_config(identity: &Identity, clients: ClientAuth) -> Result<Arc<ServerConfig>, PkiError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("TLS versions"))?;
    let builder = match clients {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Require { ca, name } => {
            let inner =
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider()).build().map_err(|e| {
                    PkiError::Tls { what: "client verifier".into(), source: rustls::Error::General(e.to_string()) }
                })?;
            let name = ServerName::try_from(name.clone()).map_err(|_| PkiError::Name(name))?;
            builder.with_client_cert_verifier(Arc::new(NamedClientVerifier { inner, name }))
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls_err("serving certificate"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(tls_err("session tickets"))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts only `ca`, presenting `identity` when given. There is no way to turn
/// verification off.
pub fn client_config(ca: &CaCert, identity: Option<&Identity>) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("TLS versions"))?
        .with_root_certificates(ca.roots());
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key()).map_err(tls_err("client certificate"))
        }
    }
}

/// A client configuration for a client that holds only the CA's hash (a join token's): the server must
/// present, after its leaf, the certificate with that hash, and the leaf must verify against it alone (webpki:
/// chain, validity, usage, and the name the client connects to). So the first connection of a joining client,
/// the one that fetches the CA, is already authenticated.
pub fn pinned_client_config(ca_hash: &str) -> Result<ClientConfig, PkiError> {
    let valid = ca_hash.len() == 64 && ca_hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !valid {
        return Err(PkiError::Hash(ca_hash.to_string()));
    }
    let verifier = PinnedServerVerifier { ca_hash: ca_hash.to_string(), provider: provider() };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err("TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The server's chain holds no certificate with the pinned hash.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate chain does not hold the CA with SHA-256 {0}")]
struct PinnedCaNotInServerChain(String);

/// Finds the pinned CA in the presented chain, then hands the rest to webpki with that CA as the only root.
struct PinnedServerVerifier {
    ca_hash: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier").field("ca_hash", &self.ca_hash).finish()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates.iter().find(|c| crate::sha256_hex(c) == self.ca_hash).ok_or_else(|| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                PinnedCaNotInServerChain(self.ca_hash.clone()),
            ))))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Chain verification by webpki, then the name: a certificate from the cluster CA is not enough, it must be
/// the one identity this server serves (the API server, for an agent's listener).
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl fmt::Debug for NamedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedClientVerifier").field("name", &self.name).finish()
    }
}

impl ClientCertVerifier for NamedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        cert.verify_is_valid_for_subject_name(&self.name)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
