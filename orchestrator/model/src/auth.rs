//! Credentials as the API server, the CLI and the node agent read and print them: bearer credentials
//! (`<id>.<secret>`), join tokens (`berth1::sha256:<CA hash>::<id>.<secret>`), the stored [`TokenRecord`], the
//! [`Role`] a credential grants and the [`Identity`] a request is made as.
//!
//! Formatting and parsing only: generating secrets and hashing them needs a random source and a digest, which
//! live in the control plane (this crate has no `ring`). Secrets never leave through `Debug` or an error.

use crate::meta::Time;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;

/// Length of a token id in lowercase hex characters (6 random bytes).
pub const ID_LEN: usize = 12;
/// Length of a token secret in lowercase hex characters (32 random bytes).
pub const SECRET_LEN: usize = 64;
/// Length of a sha256 digest in lowercase hex characters (the CA hash, a record's `secretHash`).
pub const HASH_LEN: usize = 64;
/// What every join token starts with: the format version and the hash algorithm of the CA hash.
pub const JOIN_PREFIX: &str = "berth1::sha256:";
/// The identity name of the data dir's bootstrap token.
pub const BOOTSTRAP_IDENTITY: &str = "berth:admin:bootstrap";

/// Token comparison whose time does not depend on where the first differing byte is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lowercase hex of `bytes`, the one spelling of ids, secrets and hashes.
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `id` is spelled like a token id ([`ID_LEN`] lowercase hex), e.g. before it names a store key.
pub fn is_token_id(id: &str) -> bool {
    is_lower_hex(id, ID_LEN)
}

/// Why a token text is not a token. Names the part at fault and never repeats what was given: the text may be
/// a secret, or a secret with a typo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("token: expected <id>.<secret> (one '.')")]
    Shape,
    #[error("token id: expected {ID_LEN} lowercase hex characters")]
    Id,
    #[error("token secret: expected {SECRET_LEN} lowercase hex characters")]
    Secret,
    #[error("join token: expected it to start with {JOIN_PREFIX}")]
    JoinPrefix,
    #[error("join token: expected {JOIN_PREFIX}<CA hash>::<id>.<secret>")]
    JoinShape,
    #[error("join token CA hash: expected {HASH_LEN} lowercase hex characters")]
    CaHash,
}

/// A bearer credential `<id>.<secret>`: the id names the stored record, the secret proves possession.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    id: String,
    secret: String,
}

impl BearerToken {
    pub fn parse(text: &str) -> Result<BearerToken, TokenFormatError> {
        let (id, secret) = text.split_once('.').ok_or(TokenFormatError::Shape)?;
        BearerToken::from_parts(id, secret)
    }

    /// A token from an id and a secret, both checked (the control plane builds fresh ones this way).
    pub fn from_parts(id: &str, secret: &str) -> Result<BearerToken, TokenFormatError> {
        if !is_token_id(id) {
            return Err(TokenFormatError::Id);
        }
        if !is_lower_hex(secret, SECRET_LEN) {
            return Err(TokenFormatError::Secret);
        }
        Ok(BearerToken { id: id.to_string(), secret: secret.to_string() })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret, for hashing or for sending in an `Authorization` header; never for printing.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken({}.****)", self.id)
    }
}

/// A join token: the CA hash lets a joining machine trust the API server's certificate before it has the CA,
/// and the credential (a record of usage `join`) proves it may join.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex sha256 of the cluster CA certificate's DER.
    pub ca_hash: String,
    pub credential: BearerToken,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, TokenFormatError> {
        let rest = text.strip_prefix(JOIN_PREFIX).ok_or(TokenFormatError::JoinPrefix)?;
        let (ca_hash, credential) = rest.split_once("::").ok_or(TokenFormatError::JoinShape)?;
        if !is_lower_hex(ca_hash, HASH_LEN) {
            return Err(TokenFormatError::CaHash);
        }
        Ok(JoinToken { ca_hash: ca_hash.to_string(), credential: BearerToken::parse(credential)? })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}{}::{}", self.ca_hash, self.credential)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({JOIN_PREFIX}{}::{:?})", self.ca_hash, self.credential)
    }
}

/// What a credential may do (see the API server's authorization rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Proxy,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "proxy" => Some(Role::Proxy),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Proxy => "proxy",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A join token is only good for `POST /api/v1/join`, which trades it for a credential; only credentials
/// authenticate other requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    #[default]
    Join,
    Credential,
}

impl Usage {
    pub fn parse(s: &str) -> Option<Usage> {
        match s {
            "join" => Some(Usage::Join),
            "credential" => Some(Usage::Credential),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Join => "join",
            Usage::Credential => "credential",
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as stored (`berthtokens/<id>`). Only the secret's hash is kept, so reading the store does not give
/// a usable credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    pub usage: Usage,
    /// Lowercase hex sha256 of the secret's ASCII text.
    pub secret_hash: String,
    /// The node a credential of role `node` speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    pub created: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The join token this credential was obtained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
}

impl TokenRecord {
    /// Expired at `now` (a token without `expires` never expires).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e.0 <= now)
    }

    /// Who a request made with this credential acts as; `None` for a node credential without a node, which
    /// no valid record is.
    pub fn identity(&self) -> Option<Identity> {
        Some(match self.role {
            Role::Admin => Identity::Admin { token_id: Some(self.id.clone()) },
            Role::Proxy => Identity::Proxy { token_id: self.id.clone() },
            Role::Node => Identity::Node { node: self.node.clone()?, token_id: self.id.clone() },
        })
    }
}

/// Who a request is made as. `Display` gives the name 403 messages and logs use: `berth:admin:<id>`
/// (`berth:admin:bootstrap` for the data dir's token), `system:node:<NODE>`, `berth:proxy:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `token_id: None` is the bootstrap token.
    Admin {
        token_id: Option<String>,
    },
    Node {
        node: String,
        token_id: String,
    },
    Proxy {
        token_id: String,
    },
}

impl Identity {
    pub fn role(&self) -> Role {
        match self {
            Identity::Admin { .. } => Role::Admin,
            Identity::Node { .. } => Role::Node,
            Identity::Proxy { .. } => Role::Proxy,
        }
    }

    /// The node this identity speaks for, if it is a node.
    pub fn node(&self) -> Option<&str> {
        match self {
            Identity::Node { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// The identity name of node `node`, as Kubernetes spells it.
pub fn node_identity(node: &str) -> String {
    format!("system:node:{node}")
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin { token_id: None } => f.write_str(BOOTSTRAP_IDENTITY),
            Identity::Admin { token_id: Some(id) } => write!(f, "berth:admin:{id}"),
            Identity::Node { node, .. } => write!(f, "system:node:{node}"),
            Identity::Proxy { token_id } => write!(f, "berth:proxy:{token_id}"),
        }
    }
}
