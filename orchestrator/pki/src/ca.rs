//! The cluster CA and the certificates it issues.

use crate::{sha256_hex, PkiError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::fmt;
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start an hour in the past, so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::hours(1);

/// The CA certificate alone: what every client trusts.
#[derive(Clone)]
pub struct CaCert {
    pem: String,
    der: CertificateDer<'static>,
}

impl CaCert {
    /// The first certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| PkiError::NoCertificate { what: "CA certificate".into() })?;
        // Re-encode so that the PEM we hand on holds exactly the certificate the hash covers.
        let pem = pem_encode("CERTIFICATE", &der);
        Ok(Self { pem, der })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// SHA-256 of the certificate's DER, lowercase hex: what a join token pins.
    pub fn hash(&self) -> String {
        sha256_hex(&self.der)
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // A certificate that parsed as DER but is not a usable trust anchor leaves the store empty, and every
        // handshake then fails closed.
        let _ = roots.add(self.der.clone());
        roots
    }
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert").field("sha256", &self.hash()).finish()
    }
}

/// A certificate and its private key, both PEM. `Debug` omits the key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// The cluster CA: certificate and signing key. `Debug` omits the key.
pub struct ClusterCa {
    cert: CaCert,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert", &self.cert).finish_non_exhaustive()
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate { what: what.to_string(), source }
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256, ten years) named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(cert_err("CA certificate"))?;
        let key_pem = key.serialize_pem();
        let cert = CaCert::from_pem(&cert.pem())?;
        Ok(Self { cert, key_pem, issuer: Issuer::new(params, key) })
    }

    /// A CA from its certificate and PKCS#8 key (both PEM), e.g. as stored or given by an operator.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert = CaCert::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("CA key"))?;
        let issuer = Issuer::from_ca_cert_der(cert.der(), key).map_err(cert_err("CA certificate"))?;
        Ok(Self { cert, key_pem: key_pem.to_string(), issuer })
    }

    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// The CA's private key, PEM (PKCS#8). Store it only where Secrets are stored.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A serving certificate for `dns_names` and `ips`, one year, with a new key.
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr]) -> Result<Issued, PkiError> {
        let mut sans = Vec::new();
        for name in dns_names {
            let name = name.trim();
            if let Ok(ip) = name.parse::<IpAddr>() {
                sans.push(SanType::IpAddress(ip));
            } else {
                let dns = name.to_string().try_into().map_err(|_| PkiError::Name(name.to_string()))?;
                sans.push(SanType::DnsName(dns));
            }
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        sans.dedup();
        let common_name = dns_names.first().cloned().unwrap_or_else(|| "berth".into());
        self.issue(&common_name, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate valid for the DNS name `name` (e.g. [`crate::APISERVER_NAME`]), one year.
    pub fn issue_client(&self, name: &str) -> Result<Issued, PkiError> {
        let dns = name.to_string().try_into().map_err(|_| PkiError::Name(name.to_string()))?;
        self.issue(name, vec![SanType::DnsName(dns)], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, common_name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(cert_err("certificate key"))?;
        let params = leaf_params(common_name, sans, usage);
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err("certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Sign a PKCS#10 request as a serving certificate for the DNS name `name` alone: the request contributes
    /// only its public key (its subject and SANs are ignored, so a node cannot ask for another's name).
    pub fn sign_server_csr(&self, csr_pem: &str, name: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_err("certificate request"))?;
        let dns = name.to_string().try_into().map_err(|_| PkiError::Name(name.to_string()))?;
        csr.params = leaf_params(name, vec![SanType::DnsName(dns)], ExtendedKeyUsagePurpose::ServerAuth);
        let cert = csr.signed_by(&self.issuer).map_err(cert_err("certificate"))?;
        Ok(cert.pem())
    }
}

fn leaf_params(common_name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params
}

/// 128 random bits, positive (RFC 5280: at most 20 octets, non-negative).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; should it, a fixed-prefix serial is still unique enough with the
    // time-derived rest, but it never happens in practice.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A new key pair and a PKCS#10 request for `name`: `(csr_pem, key_pem)`. The key never leaves the caller.
pub fn generate_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err("certificate key"))?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_err("certificate request"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key).map_err(cert_err("certificate request"))?;
    Ok((csr.pem().map_err(cert_err("certificate request"))?, key.serialize_pem()))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}
