//! Joining a cluster with a join token: from `berth1::sha256:<CA hash>::<id>.<secret>` to the cluster CA and a
//! credential of the token's role.
//!
//! Order matters. The CA is fetched (`GET /cacerts`) over a connection pinned to the token's hash
//! ([`pki::pinned_client_config`]), and checked against that hash again; only then is the join secret sent
//! (`POST /api/v1/join`), over a connection that trusts that CA alone. A server that cannot prove it holds the
//! pinned CA never sees the secret.

use crate::{api_error, http_builder, is_https, ClientError};
use serde_json::{json, Value};
use std::fmt;
use std::time::Duration;

/// Bounds each of the two requests: a join is short, and a hung server must not hang the agent's start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a successful join yields. `Debug` redacts the credential's secret.
#[derive(Clone)]
pub struct Joined {
    /// The cluster CA, checked against the token's hash.
    pub ca: pki::CaCert,
    /// The new bearer credential, `<id>.<secret>`.
    pub credential: String,
    /// `node`, `proxy` or `admin`: the join token's role.
    pub role: String,
    /// The name the server authorizes the credential as, e.g. `system:node:node-1`.
    pub identity: String,
    /// The node the credential is bound to (role node).
    pub node_name: Option<String>,
}

impl fmt::Debug for Joined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.credential.split_once('.').map_or("", |(id, _)| id);
        f.debug_struct("Joined")
            .field("ca", &self.ca)
            .field("credential", &format_args!("{id}.****"))
            .field("role", &self.role)
            .field("identity", &self.identity)
            .field("node_name", &self.node_name)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The join token is malformed; `part` names what is wrong, the token itself is never repeated.
    #[error("join token: {part} {problem} (expected berth1::sha256:<64 hex>::<12 hex>.<64 hex>)")]
    Token { part: &'static str, problem: &'static str },
    #[error("join server {url}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(#[source] pki::PkiError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server's CA has SHA-256 {served}, but the join token pins {expected}")]
    CaMismatch { expected: String, served: String },
    #[error("{url} answered {code}: {message}")]
    Api { url: String, code: u16, reason: String, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

/// A parsed join token. Kept private: the model's `JoinToken` replaces it.
struct JoinToken {
    ca_hash: String,
    /// `<id>.<secret>`, as sent in the `Authorization` header.
    credential: String,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_token(token: &str) -> Result<JoinToken, JoinError> {
    let bad = |part, problem| JoinError::Token { part, problem };
    let rest = token.trim().strip_prefix("berth1::").ok_or(bad("prefix", "is not berth1::"))?;
    let rest = rest.strip_prefix("sha256:").ok_or(bad("CA hash", "does not start with sha256:"))?;
    let (ca_hash, credential) = rest.split_once("::").ok_or(bad("credential", "is missing"))?;
    if !is_lower_hex(ca_hash, 64) {
        return Err(bad("CA hash", "is not 64 lowercase hex digits"));
    }
    let (id, secret) = credential.split_once('.').ok_or(bad("credential", "has no '.'"))?;
    if !is_lower_hex(id, 12) {
        return Err(bad("credential id", "is not 12 lowercase hex digits"));
    }
    if !is_lower_hex(secret, 64) {
        return Err(bad("credential secret", "is not 64 lowercase hex digits"));
    }
    Ok(JoinToken { ca_hash: ca_hash.to_string(), credential: credential.to_string() })
}

fn client(tls: rustls::ClientConfig) -> Result<reqwest::Client, JoinError> {
    http_builder().timeout(REQUEST_TIMEOUT).tls_backend_preconfigured(tls).build().map_err(JoinError::Client)
}

async fn answer(url: &str, response: reqwest::Result<reqwest::Response>) -> Result<bytes::Bytes, JoinError> {
    let connect = |source| JoinError::Connect { url: url.to_string(), source };
    let response = response.map_err(connect)?;
    let status = response.status();
    let body = response.bytes().await.map_err(connect)?;
    if status.is_success() {
        return Ok(body);
    }
    match api_error(status.as_u16(), &body) {
        ClientError::Api { code, reason, message } => {
            Err(JoinError::Api { url: url.to_string(), code, reason, message })
        }
        other => Err(JoinError::Protocol { url: url.to_string(), message: other.to_string() }),
    }
}

/// Join the cluster at `server` (`https://` only) with `join_token`; `node_name` is required by the server
/// for a node's token and ignored for others.
pub async fn join(server: &str, join_token: &str, node_name: Option<&str>) -> Result<Joined, JoinError> {
    let token = parse_token(join_token)?;
    let base = server.trim_end_matches('/');
    if !is_https(base) {
        return Err(JoinError::Url { url: server.to_string(), reason: "joining needs https://" });
    }
    reqwest::Url::parse(base).map_err(|_| JoinError::Url { url: server.to_string(), reason: "not a URL" })?;

    let url = format!("{base}/cacerts");
    let pinned = client(pki::pinned_client_config(&token.ca_hash).map_err(JoinError::Tls)?)?;
    let pem = answer(&url, pinned.get(&url).send().await).await?;
    let pem = std::str::from_utf8(&pem)
        .map_err(|_| JoinError::Protocol { url: url.clone(), message: "the CA is not text".into() })?;
    let ca =
        pki::CaCert::from_pem(pem).map_err(|e| JoinError::Protocol { url: url.clone(), message: e.to_string() })?;
    // The pinned handshake proved the server holds this CA; the body must be that same certificate.
    if ca.hash() != token.ca_hash {
        return Err(JoinError::CaMismatch { expected: token.ca_hash, served: ca.hash() });
    }

    let url = format!("{base}/api/v1/join");
    let trusting = client(pki::client_config(&ca, None).map_err(JoinError::Tls)?)?;
    let body = match node_name {
        Some(n) => json!({"nodeName": n}),
        None => json!({}),
    };
    let sent = trusting.post(&url).bearer_auth(&token.credential).json(&body).send().await;
    let answer: Value = serde_json::from_slice(&answer(&url, sent).await?)
        .map_err(|e| JoinError::Protocol { url: url.clone(), message: e.to_string() })?;
    let field = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_string);
    let missing = |name: &str| JoinError::Protocol { url: url.clone(), message: format!("no {name:?} in the answer") };
    Ok(Joined {
        credential: field("credential").ok_or_else(|| missing("credential"))?,
        role: field("role").ok_or_else(|| missing("role"))?,
        identity: field("identity").ok_or_else(|| missing("identity"))?,
        node_name: field("nodeName"),
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn join_tokens_parse_and_errors_name_the_part_without_the_secret() {
        let ok = parse_token(&format!("berth1::sha256:{HASH}::0123456789ab.{SECRET}")).unwrap();
        assert_eq!(ok.ca_hash, HASH);
        assert_eq!(ok.credential, format!("0123456789ab.{SECRET}"));
        let cases = [
            (format!("berth2::sha256:{HASH}::0123456789ab.{SECRET}"), "prefix"),
            (format!("berth1::md5:{HASH}::0123456789ab.{SECRET}"), "CA hash"),
            (format!("berth1::sha256:{}::0123456789ab.{SECRET}", &HASH[1..]), "CA hash"),
            (format!("berth1::sha256:{HASH}"), "credential"),
            (format!("berth1::sha256:{HASH}::0123456789ab{SECRET}"), "credential"),
            (format!("berth1::sha256:{HASH}::0123456789AB.{SECRET}"), "credential id"),
            (format!("berth1::sha256:{HASH}::0123456789ab.{}x", &SECRET[1..]), "credential secret"),
        ];
        for (token, part) in cases {
            let err = parse_token(&token).err().unwrap().to_string();
            assert!(err.starts_with(&format!("join token: {part} ")), "{token}: {err}");
            assert!(!err.contains(&SECRET[1..40]), "the secret is never echoed: {err}");
        }
    }

    #[test]
    fn joined_debug_redacts_the_secret() {
        let ca = pki::ClusterCa::generate("t").unwrap();
        let joined = Joined {
            ca: ca.cert().clone(),
            credential: format!("0123456789ab.{SECRET}"),
            role: "node".into(),
            identity: "system:node:n".into(),
            node_name: Some("n".into()),
        };
        let dbg = format!("{joined:?}");
        assert!(dbg.contains("0123456789ab.****") && !dbg.contains(SECRET), "{dbg}");
    }
}
