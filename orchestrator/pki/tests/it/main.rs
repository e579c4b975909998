//! The cluster CA and the TLS policy, end to end over loopback sockets.

use pki::{client_config, serve_tls, server_config, ClientAuth, ClusterCa, Identity, APISERVER_NAME};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tokio::net::TcpListener;

fn localhost_identity(ca: &ClusterCa) -> Identity {
    let issued = ca.issue_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
}

async fn serve(config: Arc<rustls::ServerConfig>) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_tls(listener, config, app, async move {
        let _ = rx.await;
    }));
    (port, tx)
}

fn http(ca: &ClusterCa, identity: Option<&Identity>) -> reqwest::Client {
    pki::install_crypto_provider();
    let tls = client_config(ca.cert(), identity).unwrap();
    reqwest::Client::builder().tls_backend_preconfigured(tls).build().unwrap()
}

#[tokio::test]
async fn a_client_trusting_the_cluster_ca_reaches_the_server_and_one_trusting_another_ca_does_not() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let (port, _stop) = serve(server_config(&localhost_identity(&ca), ClientAuth::None).unwrap()).await;
    for host in ["localhost", "127.0.0.1"] {
        let body = http(&ca, None).get(format!("https://{host}:{port}/")).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "hello", "via {host}");
    }
    let other = ClusterCa::generate("berth-ca").unwrap();
    let err = http(&other, None).get(format!("https://localhost:{port}/")).send().await.unwrap_err();
    assert!(err.is_connect(), "a server whose certificate another CA signed is refused: {err:?}");
}

#[tokio::test]
async fn a_listener_that_requires_the_apiserver_identity_refuses_every_other_client() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let required = ClientAuth::Require { ca: ca.cert().clone(), name: APISERVER_NAME.into() };
    let (port, _stop) = serve(server_config(&localhost_identity(&ca), required).unwrap()).await;
    let url = format!("https://localhost:{port}/");

    let apiserver = ca.issue_client(APISERVER_NAME).unwrap();
    let apiserver = Identity::from_pem(&apiserver.cert_pem, &apiserver.key_pem).unwrap();
    assert_eq!(http(&ca, Some(&apiserver)).get(&url).send().await.unwrap().text().await.unwrap(), "hello");

    let no_cert = http(&ca, None).get(&url).send().await;
    let other_name = ca.issue_client("node-1").unwrap();
    let other_name = Identity::from_pem(&other_name.cert_pem, &other_name.key_pem).unwrap();
    let wrong_name = http(&ca, Some(&other_name)).get(&url).send().await;
    let foreign_ca = ClusterCa::generate("berth-ca").unwrap();
    let foreign = foreign_ca.issue_client(APISERVER_NAME).unwrap();
    let foreign = Identity::from_pem(&foreign.cert_pem, &foreign.key_pem).unwrap();
    let foreign = http(&ca, Some(&foreign)).get(&url).send().await;
    for (what, result) in [("no certificate", no_cert), ("another name", wrong_name), ("another CA", foreign)] {
        // TLS 1.3 reports a refused client certificate after the handshake, on the first read.
        let refused = match result {
            Err(_) => true,
            Ok(r) => r.text().await.is_err(),
        };
        assert!(refused, "a client with {what} must be refused");
    }
}

#[test]
fn a_node_certificate_names_the_node_whatever_its_request_asked_for() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let (csr, key) = pki::generate_csr("berth-apiserver").unwrap();
    let cert = ca.sign_server_csr(&csr, "node-1").unwrap();
    let identity = Identity::from_pem(&cert, &key).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes()).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&der).unwrap();
    let name = |n: &'static str| rustls_pki_types::ServerName::try_from(n).unwrap();
    assert!(leaf.verify_is_valid_for_subject_name(&name("node-1")).is_ok());
    assert!(leaf.verify_is_valid_for_subject_name(&name("berth-apiserver")).is_err(), "the requested name is ignored");
    assert!(format!("{identity:?}").contains("Identity"));
    assert!(ca
        .sign_server_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "n")
        .is_err());
}

#[test]
fn a_ca_reloads_from_its_pem_with_the_same_hash_and_still_signs() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let again = ClusterCa::from_pem(ca.cert().pem(), ca.key_pem()).unwrap();
    assert_eq!(ca.cert().hash(), again.cert().hash());
    assert_eq!(again.cert().hash().len(), 64);
    assert!(again.issue_server(&["berth.example".into()], &[]).is_ok());
    assert!(!format!("{ca:?}").contains("PRIVATE KEY"), "Debug never prints the key");
    assert!(ClusterCa::from_pem("not pem", ca.key_pem()).is_err());
    assert!(ClusterCa::from_pem(ca.cert().pem(), "not a key").is_err());
}

#[test]
fn a_plain_http_client_builds_once_the_provider_is_installed() {
    pki::install_crypto_provider();
    pki::install_crypto_provider();
    reqwest::Client::new();
}

/// A server presenting `[leaf, CA]`, as the API server does.
fn chained_identity(ca: &ClusterCa) -> Identity {
    let issued = ca.issue_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    Identity::from_pem(&format!("{}{}", issued.cert_pem, ca.cert().pem()), &issued.key_pem).unwrap()
}

fn pinned(hash: &str) -> reqwest::Client {
    pki::install_crypto_provider();
    let tls = pki::pinned_client_config(hash).unwrap();
    reqwest::Client::builder().tls_backend_preconfigured(tls).build().unwrap()
}

/// An error with its sources, as an operator reads it.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out = format!("{out}: {e}");
        source = e.source();
    }
    out
}

#[tokio::test]
async fn a_client_pinned_to_the_ca_hash_reaches_a_server_that_presents_that_ca() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let (port, _stop) = serve(server_config(&chained_identity(&ca), ClientAuth::None).unwrap()).await;
    for host in ["localhost", "127.0.0.1"] {
        let body = pinned(&ca.cert().hash()).get(format!("https://{host}:{port}/")).send().await.unwrap();
        assert_eq!(body.text().await.unwrap(), "hello", "via {host}");
    }
}

#[tokio::test]
async fn a_pinned_client_refuses_another_hash_another_name_and_another_ca() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let (port, _stop) = serve(server_config(&chained_identity(&ca), ClientAuth::None).unwrap()).await;
    let other = ClusterCa::generate("berth-ca").unwrap();
    let err = pinned(&other.cert().hash()).get(format!("https://localhost:{port}/")).send().await.unwrap_err();
    // rustls prints the verifier's error with Debug.
    let expected = format!("PinnedCaNotInServerChain(\"{}\")", other.cert().hash());
    assert!(chain(&err).contains(&expected), "pinned to another CA's hash: {}", chain(&err));

    // The right CA, but the leaf is not valid for the name the client connects to.
    let wrong_name = reqwest::Client::builder()
        .tls_backend_preconfigured(pki::pinned_client_config(&ca.cert().hash()).unwrap())
        .resolve("berth.example", std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .build()
        .unwrap();
    assert!(wrong_name.get(format!("https://berth.example:{port}/")).send().await.is_err(), "the name is checked");

    // A server of another CA that presents the pinned CA too: its leaf does not verify against it.
    let foreign = other.issue_server(&["localhost".into()], &[]).unwrap();
    let foreign = Identity::from_pem(&format!("{}{}", foreign.cert_pem, ca.cert().pem()), &foreign.key_pem).unwrap();
    let (port, _stop2) = serve(server_config(&foreign, ClientAuth::None).unwrap()).await;
    let err = pinned(&ca.cert().hash()).get(format!("https://localhost:{port}/")).send().await.unwrap_err();
    assert!(err.is_connect(), "a leaf the pinned CA did not sign: {err:?}");

    assert!(pki::pinned_client_config("abc").is_err());
    assert!(pki::pinned_client_config(&ca.cert().hash().to_uppercase()).is_err());
}

#[tokio::test]
async fn a_pinned_client_refuses_a_server_whose_chain_omits_the_ca() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let (port, _stop) = serve(server_config(&localhost_identity(&ca), ClientAuth::None).unwrap()).await;
    let err = pinned(&ca.cert().hash()).get(format!("https://localhost:{port}/")).send().await.unwrap_err();
    assert!(chain(&err).contains("PinnedCaNotInServerChain"), "the leaf alone proves nothing: {}", chain(&err));
}
