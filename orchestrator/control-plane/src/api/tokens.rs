//! Tokens, joining and the cluster CA over HTTP: `POST/GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`,
//! `POST /api/v1/join`, `GET /cacerts` and `POST /api/v1/nodes/{name}/certificate`.
//!
//! Secrets are drawn here (ring's system RNG) and shown once, in the answer that creates them; the store keeps
//! their sha256 only, and the token list never shows even that. Certificates come from a
//! [`CertificateAuthority`] the binary provides (the `pki` crate); without one the CA endpoints say so.

use super::auth::{authenticate_join, hash_secret, token_key, tokens_prefix, AuthError};
use super::{json_response, parse_body, ApiError, ApiResult, ApiState};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use model::auth::{to_hex, BearerToken, JoinToken, Role, TokenRecord, Usage};
use model::Time;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The cluster CA as the API server uses it. Implemented by the binary over the `pki` crate; tests fake it.
pub trait CertificateAuthority: Send + Sync + 'static {
    /// The CA certificate, PEM (served at `/cacerts`).
    fn ca_pem(&self) -> &str;
    /// Lowercase hex sha256 of the CA certificate's DER: 64 characters, the hash join tokens carry.
    fn ca_hash(&self) -> &str;
    /// A serving certificate (PEM) for node `node`'s listener from a PKCS#10 request (PEM): signed by the
    /// CA, one DNS SAN = `node` (the request's own SANs are ignored), valid one year.
    fn sign_node_csr(&self, node: &str, csr_pem: &str) -> Result<String, SignError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The request is not a usable CSR (answered 400).
    #[error("{0}")]
    InvalidCsr(String),
    /// Signing failed on our side (answered 500).
    #[error("{0}")]
    Failed(String),
}

/// Longest accepted `ttlSeconds`: ten years keeps `created + ttl` far from overflow.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_DESCRIPTION_LEN: usize = 256;

fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
}

/// A fresh `<id>.<secret>` from the system RNG.
fn generate() -> Result<BearerToken, ApiError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).and_then(|()| rng.fill(&mut secret)).map_err(|_| internal("the system RNG failed"))?;
    BearerToken::from_parts(&to_hex(&id), &to_hex(&secret)).map_err(|e| internal(e.to_string()))
}

/// A record as clients see it: everything but `secretHash`.
fn view(record: &TokenRecord) -> Map<String, Value> {
    let mut v = match serde_json::to_value(record) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    v.remove("secretHash");
    v
}

/// Stores a new record made by `make` from a fresh token; retried on the (unlikely) id collision.
async fn issue(
    s: &ApiState,
    make: impl Fn(&BearerToken) -> TokenRecord,
) -> Result<(BearerToken, TokenRecord), ApiError> {
    for _ in 0..4 {
        let token = generate()?;
        let record = make(&token);
        let bytes = serde_json::to_vec(&record).map_err(|e| internal(e.to_string()))?;
        match s.inner.store.create(&token_key(token.id()), bytes).await {
            Ok(_) => {
                tracing::info!(id = token.id(), role = %record.role, usage = %record.usage, "token issued");
                return Ok((token, record));
            }
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(internal("could not draw an unused token id"))
}

/// The body of `POST /api/v1/tokens`.
#[derive(Debug, PartialEq)]
struct TokenRequest {
    role: Role,
    usage: Usage,
    ttl: Option<Duration>,
    description: Option<String>,
    node: Option<String>,
}

fn object_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match parse_body(body)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("request body: expected a JSON object")),
    }
}

fn string_field<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{field}: expected a string"))),
    }
}

fn node_name_field(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(name) = string_field(body, "nodeName")? else { return Ok(None) };
    model::validate_dns_subdomain(name).map_err(|e| ApiError::bad_request(format!("nodeName: {e}")))?;
    Ok(Some(name.to_string()))
}

impl TokenRequest {
    fn parse(body: &Bytes) -> Result<TokenRequest, ApiError> {
        let body = object_body(body)?;
        const FIELDS: [&str; 5] = ["role", "usage", "ttlSeconds", "description", "nodeName"];
        if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!("{unknown}: unknown field (expected {})", FIELDS.join(", "))));
        }
        let role = string_field(&body, "role")?
            .ok_or_else(|| ApiError::bad_request("role: required (node, proxy or admin)"))
            .and_then(|r| Role::parse(r).ok_or_else(|| ApiError::bad_request("role: expected node, proxy or admin")))?;
        let usage = match string_field(&body, "usage")? {
            None => Usage::Join,
            Some(u) => Usage::parse(u).ok_or_else(|| ApiError::bad_request("usage: expected join or credential"))?,
        };
        let ttl = match body.get("ttlSeconds") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64().filter(|t| (1..=MAX_TTL_SECONDS).contains(t)).map(Duration::from_secs).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "ttlSeconds: expected a whole number of seconds from 1 to {MAX_TTL_SECONDS}"
                    ))
                })?,
            ),
        };
        let description = string_field(&body, "description")?.map(str::to_string);
        if description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN) {
            return Err(ApiError::bad_request(format!("description: longer than {MAX_DESCRIPTION_LEN} characters")));
        }
        let node = node_name_field(&body)?;
        let node = match (role, usage) {
            (Role::Node, Usage::Credential) => {
                Some(node.ok_or_else(|| ApiError::bad_request("nodeName: required for a node credential"))?)
            }
            // A join token names no node: the joining machine says which it is.
            _ => None,
        };
        Ok(TokenRequest { role, usage, ttl, description, node })
    }
}

/// `POST /api/v1/tokens` (admin).
pub(super) async fn create_token(State(s): State<ApiState>, body: Bytes) -> ApiResult {
    let req = TokenRequest::parse(&body)?;
    let now = s.inner.clock.now();
    let (token, record) = issue(&s, |t| TokenRecord {
        id: t.id().to_string(),
        role: req.role,
        usage: req.usage,
        secret_hash: hash_secret(t.secret()),
        node: req.node.clone(),
        expires: req.ttl.map(|ttl| Time(now + ttl)),
        created: Time(now),
        description: req.description.clone(),
        issued_by: None,
    })
    .await?;
    let text = match (req.usage, &s.inner.authority) {
        (Usage::Join, Some(ca)) => JoinToken { ca_hash: ca.ca_hash().to_string(), credential: token }.to_string(),
        // Without a CA (plain HTTP) there is no hash to pin: the joiner presents the credential part alone.
        _ => token.to_string(),
    };
    let mut answer = view(&record);
    answer.insert("token".into(), Value::String(text));
    Ok(json_response(StatusCode::CREATED, &Value::Object(answer)))
}

/// `GET /api/v1/tokens` (admin).
pub(super) async fn list_tokens(State(s): State<ApiState>) -> ApiResult {
    let (items, _) = s.inner.store.list(&tokens_prefix(), None).await?;
    let items: Vec<Value> = items
        .iter()
        .filter_map(|v| serde_json::from_slice::<TokenRecord>(&v.value).ok())
        .map(|r| Value::Object(view(&r)))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"kind": "TokenList", "items": items})))
}

/// `DELETE /api/v1/tokens/{id}` (admin): revocation.
pub(super) async fn delete_token(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    if !model::auth::is_token_id(&id) {
        return Err(ApiError::bad_request(format!("id: expected {} lowercase hex characters", model::auth::ID_LEN)));
    }
    let key = token_key(&id);
    let current = s.inner.store.get(&key).await?;
    let Some(current) = current else { return Err(ApiError::not_found(format!("token {id} not found"))) };
    match s.inner.store.delete(&key, None).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(format!("token {id} not found"))),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(id = %id, "token revoked");
    let record = serde_json::from_slice::<TokenRecord>(&current.value).ok();
    Ok(json_response(StatusCode::OK, &record.map(|r| Value::Object(view(&r))).unwrap_or_else(|| json!({"id": id}))))
}

/// `POST /api/v1/join`: trades a join token for a credential of the same role.
pub(super) async fn join(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let ca_hash = s.inner.authority.as_ref().map(|ca| ca.ca_hash());
    let now = s.inner.clock.now();
    let join = match authenticate_join(s.inner.store.as_ref(), headers.get(header::AUTHORIZATION), ca_hash, now).await {
        Ok(record) => record,
        Err(AuthError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::unauthorized(e.to_string())),
    };
    let body = object_body(&body)?;
    let node = match join.role {
        Role::Node => Some(node_name_field(&body)?.ok_or_else(|| ApiError::bad_request("nodeName: required"))?),
        _ => None,
    };
    let (credential, record) = issue(&s, |t| TokenRecord {
        id: t.id().to_string(),
        role: join.role,
        usage: Usage::Credential,
        secret_hash: hash_secret(t.secret()),
        node: node.clone(),
        expires: None,
        created: Time(now),
        description: None,
        issued_by: Some(join.id.clone()),
    })
    .await?;
    let identity = record.identity().map(|i| i.to_string()).unwrap_or_default();
    tracing::info!(join = %join.id, credential = credential.id(), %identity, "joined");
    let mut answer = json!({"credential": credential.to_string(), "role": record.role, "identity": identity});
    if let Some(node) = &node {
        answer["nodeName"] = json!(node);
    }
    if let Some(ca) = &s.inner.authority {
        answer["caCertificate"] = json!(ca.ca_pem());
    }
    Ok(json_response(StatusCode::OK, &answer))
}

fn no_authority() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "NoCertificateAuthority",
        "this API server has no cluster CA (it serves plain HTTP): it cannot sign certificates",
    )
}

/// `GET /cacerts`: the CA certificate, unauthenticated (what a joiner checks against its token's hash).
pub(super) async fn cacerts(State(s): State<ApiState>) -> ApiResult {
    let ca = s.inner.authority.as_ref().ok_or_else(|| {
        ApiError::not_found("this API server has no cluster CA (it serves plain HTTP): no CA certificate to serve")
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok((StatusCode::OK, headers, ca.ca_pem().to_string()).into_response())
}

/// `POST /api/v1/nodes/{name}/certificate` (the node itself or an admin): a serving certificate for the
/// node's listener.
pub(super) async fn node_certificate(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    if plural != "nodes" {
        return Err(ApiError::not_found(format!("{plural} have no certificate (only nodes do)")));
    }
    model::validate_dns_subdomain(&name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let body = object_body(&body)?;
    let csr = string_field(&body, "csr")?
        .ok_or_else(|| ApiError::bad_request("csr: required (a PEM PKCS#10 certificate request)"))?;
    let ca = s.inner.authority.as_ref().ok_or_else(no_authority)?;
    let certificate = ca.sign_node_csr(&name, csr).map_err(|e| match e {
        SignError::InvalidCsr(m) => ApiError::bad_request(format!("csr: {m}")),
        SignError::Failed(m) => internal(format!("signing the certificate of node {name}: {m}")),
    })?;
    Ok(json_response(StatusCode::OK, &json!({"certificate": certificate})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<TokenRequest, String> {
        TokenRequest::parse(&Bytes::from(v.to_string())).map_err(|e| e.message)
    }

    #[test]
    fn token_requests_name_the_bad_field() {
        let ok = parse(json!({"role": "node"})).unwrap();
        assert_eq!((ok.role, ok.usage, ok.ttl, ok.node), (Role::Node, Usage::Join, None, None));
        let cred = parse(json!({"role": "node", "usage": "credential", "nodeName": "n1", "ttlSeconds": 60})).unwrap();
        assert_eq!((cred.node.as_deref(), cred.ttl), (Some("n1"), Some(Duration::from_secs(60))));
        let cases = [
            (json!({}), "role: required"),
            (json!({"role": "root"}), "role: expected"),
            (json!({"role": 1}), "role: expected a string"),
            (json!({"role": "node", "usage": "forever"}), "usage: expected"),
            (json!({"role": "node", "ttlSeconds": -1}), "ttlSeconds:"),
            (json!({"role": "node", "ttlSeconds": 0}), "ttlSeconds:"),
            (json!({"role": "node", "ttlSeconds": "1h"}), "ttlSeconds:"),
            (json!({"role": "node", "usage": "credential"}), "nodeName: required"),
            (json!({"role": "node", "nodeName": "Bad_Name"}), "nodeName:"),
            (json!({"role": "node", "roles": "x"}), "roles: unknown field"),
            (json!({"role": "node", "description": "x".repeat(300)}), "description:"),
            (json!([1]), "request body: expected a JSON object"),
        ];
        for (body, want) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        assert!(TokenRequest::parse(&Bytes::from_static(b"{")).unwrap_err().message.contains("not valid JSON"));
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(BearerToken::parse(&a.to_string()).unwrap(), a);
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
