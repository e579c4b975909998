//! TLS certificates chosen by SNI, hot-swapped from registry `Certificate` objects.
//!
//! Route TLS entries name hosts and a certificate (`secretName`, in the route's namespace). Whenever routes or
//! certificates change, [`CertStore::rebuild`] parses and validates every referenced PEM pair and swaps in a
//! new immutable map; the rustls resolver only reads that map (handshakes never parse or lock). A certificate
//! that fails to parse is skipped with a warning and never reaches rustls.

use arc_swap::ArcSwap;
use discovery::{Certificate, Snapshot};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no rustls crypto provider is installed")]
    NoProvider,
    #[error("certificate {namespace}/{name}: no certificate in PEM")]
    NoCertificate { namespace: String, name: String },
    #[error("certificate {namespace}/{name}: no private key in PEM")]
    NoKey { namespace: String, name: String },
    #[error("certificate {namespace}/{name}: bad PEM: {source}")]
    Pem {
        namespace: String,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {namespace}/{name}: rejected by rustls: {source}")]
    Rustls {
        namespace: String,
        name: String,
        #[source]
        source: pingora::tls::RusTlsError,
    },
}

/// Parse and validate one certificate object into a signing-ready key.
pub fn certified_key(cert: &Certificate) -> Result<Arc<CertifiedKey>, CertError> {
    let (namespace, name) = (cert.namespace.clone(), cert.name.clone());
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Pem { namespace: namespace.clone(), name: name.clone(), source })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { namespace, name });
    }
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .map_err(|source| CertError::Pem { namespace: namespace.clone(), name: name.clone(), source })?
        .ok_or_else(|| CertError::NoKey { namespace: namespace.clone(), name: name.clone() })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().cloned().ok_or(CertError::NoProvider)?;
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|source| CertError::Rustls {
        namespace,
        name,
        source,
    })?;
    Ok(Arc::new(ck))
}

/// Host name -> certificate.
#[derive(Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertMap {
    pub fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&sni) {
            return Some(k.clone());
        }
        self.wildcard.iter().find(|(s, _)| sni.len() > s.len() && sni.ends_with(s.as_str())).map(|(_, k)| k.clone())
    }
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The swappable certificate set; also the rustls resolver.
#[derive(Debug, Default)]
pub struct CertStore {
    map: ArcSwap<CertMap>,
}

impl CertStore {
    /// Rebuild from routes' TLS sections. Returns the certificates that were rejected (they are skipped).
    pub fn rebuild(&self, snap: &Snapshot) -> Vec<CertError> {
        let certs: HashMap<(&str, &str), &Arc<Certificate>> =
            snap.certificates().map(|c| ((c.namespace.as_str(), c.name.as_str()), c)).collect();
        let mut parsed: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
        let mut errors = Vec::new();
        let mut map = CertMap::default();
        for route in snap.routes() {
            for tls in &route.tls {
                let key = (route.namespace.clone(), tls.secret_name.clone());
                let ck = parsed
                    .entry(key)
                    .or_insert_with(|| {
                        let c = certs.get(&(route.namespace.as_str(), tls.secret_name.as_str()))?;
                        match certified_key(c) {
                            Ok(k) => Some(k),
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping TLS certificate");
                                errors.push(e);
                                None
                            }
                        }
                    })
                    .clone();
                let Some(ck) = ck else { continue };
                for host in &tls.hosts {
                    let host = host.to_ascii_lowercase();
                    match host.strip_prefix('*') {
                        Some(suffix) => map.wildcard.push((suffix.to_string(), ck.clone())),
                        None => {
                            map.exact.entry(host).or_insert_with(|| ck.clone());
                        }
                    }
                }
            }
        }
        map.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        self.map.store(Arc::new(map));
        errors
    }

    pub fn current(&self) -> Arc<CertMap> {
        self.map.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.map.load().lookup(name)
    }
}
