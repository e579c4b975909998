//! Authentication: which [`Identity`] a request's `Authorization: Bearer` token stands for.
//!
//! Two kinds of credential are accepted: the data dir's bootstrap token (admin, compared in constant time) and
//! `<id>.<secret>` credentials whose [`TokenRecord`] is stored under `berthtokens/<id>` with only the secret's
//! sha256. Records are read from a cache that a task keeps equal to the store (list, then watch from the
//! list's revision; on a watch failure the cache is emptied and listed again), so a revocation on any replica
//! reaches every replica as fast as a store watch does. A record missing from the cache is read from the store
//! itself, so a credential issued on another replica a moment ago works at once; a stale cache can only ever
//! be short of records, never hold one the store has lost for longer than the watch takes to say so.
//!
//! Expiry is checked at request time against the injected clock. No secret reaches a log line or an error
//! message: errors say which rule failed, never what was presented.

use crate::store::{Key, Prefix, Store, StoreError, StoreEvent};
use axum::http::HeaderValue;
use futures::StreamExt;
use model::auth::{constant_time_eq, BearerToken, Identity, TokenRecord, Usage, JOIN_PREFIX};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

/// The store kind of token records. Not a [`model::Kind`], so the generic resource routes never serve it.
pub const TOKENS_KIND: &str = "berthtokens";

/// Where the record of token `id` is stored.
pub fn token_key(id: &str) -> Key {
    Key::new(TOKENS_KIND, "", id)
}

pub(crate) fn tokens_prefix() -> Prefix {
    Prefix { kind: TOKENS_KIND.to_string(), namespace: None }
}

/// Lowercase hex sha256 of a secret's text, as a record's `secretHash` holds it.
pub fn hash_secret(secret: &str) -> String {
    pki::sha256_hex(secret.as_bytes())
}

/// Why a request is not authenticated. The messages are safe to send back: none repeats the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required (Authorization: Bearer TOKEN)")]
    Missing,
    #[error("the Authorization header is not a bearer token (Authorization: Bearer TOKEN)")]
    NotBearer,
    #[error("malformed bearer token: {0}")]
    Malformed(#[from] model::auth::TokenFormatError),
    #[error("the token is unknown, revoked or wrong")]
    Unknown,
    #[error("the token has expired")]
    Expired,
    #[error("a join token only authenticates POST /api/v1/join")]
    JoinTokenElsewhere,
    #[error("POST /api/v1/join takes a join token, not a credential")]
    NotAJoinToken,
    #[error("the join token was made for another cluster (its CA hash is not this cluster's)")]
    OtherCluster,
    #[error("cannot read token records: {0}")]
    Store(#[from] StoreError),
}

fn bearer(header: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let text = header.ok_or(AuthError::Missing)?.to_str().map_err(|_| AuthError::NotBearer)?;
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

fn decode_record(value: &[u8]) -> Option<TokenRecord> {
    serde_json::from_slice(value).ok()
}

/// Checks `token` against `record`: secret (constant time), expiry at `now`, usage.
fn check(record: &TokenRecord, token: &BearerToken, usage: Usage, now: SystemTime) -> Result<(), AuthError> {
    if record.id != token.id()
        || !constant_time_eq(hash_secret(token.secret()).as_bytes(), record.secret_hash.as_bytes())
    {
        return Err(AuthError::Unknown);
    }
    if record.is_expired(now) {
        return Err(AuthError::Expired);
    }
    match (record.usage, usage) {
        (a, b) if a == b => Ok(()),
        (Usage::Join, Usage::Credential) => Err(AuthError::JoinTokenElsewhere),
        (Usage::Credential, _) => Err(AuthError::NotAJoinToken),
        _ => Err(AuthError::Unknown),
    }
}

/// The join token of `POST /api/v1/join`: `<id>.<secret>`, or the whole `berth1::sha256:…` text (then its CA
/// hash must be this cluster's when the server has a CA). Read from the store, not the cache, so a token
/// created a moment ago on another replica works.
pub(crate) async fn authenticate_join(
    store: &dyn Store,
    header: Option<&HeaderValue>,
    ca_hash: Option<&str>,
    now: SystemTime,
) -> Result<TokenRecord, AuthError> {
    let text = bearer(header)?;
    let token = if text.starts_with(JOIN_PREFIX) {
        let join = model::auth::JoinToken::parse(text)?;
        if ca_hash.is_some_and(|h| h != join.ca_hash) {
            return Err(AuthError::OtherCluster);
        }
        join.credential
    } else {
        BearerToken::parse(text)?
    };
    let record = store.get(&token_key(token.id())).await?.and_then(|v| decode_record(&v.value));
    let record = record.ok_or(AuthError::Unknown)?;
    check(&record, &token, Usage::Join, now)?;
    Ok(record)
}

/// Authenticates requests; holds the token record cache. The cache's follower task stops when this is dropped.
pub(crate) struct Authenticator {
    bootstrap: String,
    cache: RwLock<HashMap<String, TokenRecord>>,
    /// Taken by the follower task when it starts; `stop` is its other end.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    _stop: oneshot::Sender<()>,
}

impl Authenticator {
    pub(crate) fn new(bootstrap: String) -> Self {
        let (stop, stopped) = oneshot::channel();
        Self { bootstrap, cache: RwLock::new(HashMap::new()), stopped: Mutex::new(Some(stopped)), _stop: stop }
    }

    /// Starts the task that keeps the cache equal to the store, once; later calls do nothing. Needs a tokio
    /// runtime.
    pub(crate) fn follow(self: &Arc<Self>, store: Arc<dyn Store>) {
        if let Some(stopped) = self.stopped.lock().take() {
            tokio::spawn(follow(Arc::downgrade(self), store, stopped));
        }
    }

    pub(crate) async fn authenticate(
        &self,
        store: &dyn Store,
        header: Option<&HeaderValue>,
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let text = bearer(header)?;
        if constant_time_eq(text.as_bytes(), self.bootstrap.as_bytes()) {
            return Ok(Identity::Admin { token_id: None });
        }
        if text.starts_with(JOIN_PREFIX) {
            return Err(AuthError::JoinTokenElsewhere);
        }
        let token = BearerToken::parse(text)?;
        let cached = self.cache.read().get(token.id()).cloned();
        let record = match cached {
            Some(r) => r,
            None => store
                .get(&token_key(token.id()))
                .await?
                .and_then(|v| decode_record(&v.value))
                .ok_or(AuthError::Unknown)?,
        };
        check(&record, &token, Usage::Credential, now)?;
        record.identity().ok_or(AuthError::Unknown)
    }
}

/// Keeps `auth`'s cache equal to the store until `stopped` fires or `auth` is gone.
async fn follow(auth: Weak<Authenticator>, store: Arc<dyn Store>, mut stopped: oneshot::Receiver<()>) {
    const BACKOFF_MAX: Duration = Duration::from_secs(1);
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            outcome = follow_once(&auth, store.as_ref()) => match outcome {
                Ok(()) => return,
                Err((e, listed)) => {
                    tracing::warn!("token record cache: {e}; listing again");
                    if listed {
                        backoff = Duration::from_millis(50);
                    }
                }
            },
        }
        // Until the next list succeeds every lookup goes to the store: a cache that missed a deletion must not
        // keep a revoked credential alive.
        match auth.upgrade() {
            Some(a) => a.cache.write().clear(),
            None => return,
        }
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One list-then-watch. `Ok` when the authenticator is gone; otherwise the failure and whether the list had
/// succeeded (which resets the back-off).
async fn follow_once(auth: &Weak<Authenticator>, store: &dyn Store) -> Result<(), (StoreError, bool)> {
    let prefix = tokens_prefix();
    let (items, revision) = store.list(&prefix, None).await.map_err(|e| (e, false))?;
    let records: HashMap<String, TokenRecord> =
        items.iter().filter_map(|v| decode_record(&v.value).map(|r| (v.key.name.clone(), r))).collect();
    match auth.upgrade() {
        Some(a) => *a.cache.write() = records,
        None => return Ok(()),
    }
    let mut events = store.watch(&prefix, revision).await.map_err(|e| (e, true))?;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| (e, true))?;
        let Some(a) = auth.upgrade() else { return Ok(()) };
        let mut cache = a.cache.write();
        match event {
            StoreEvent::Put { object, .. } => match decode_record(&object.value) {
                Some(r) => {
                    cache.insert(object.key.name.clone(), r);
                }
                None => {
                    cache.remove(&object.key.name);
                }
            },
            StoreEvent::Delete { key, .. } => {
                cache.remove(&key.name);
            }
        }
    }
    Err((StoreError::Backend("the watch of token records ended".into()), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use model::auth::Role;
    use model::Time;

    fn record(id: &str, secret: &str, usage: Usage) -> Vec<u8> {
        serde_json::to_vec(&TokenRecord {
            id: id.into(),
            role: Role::Proxy,
            usage,
            secret_hash: hash_secret(secret),
            node: None,
            expires: None,
            created: Time(SystemTime::UNIX_EPOCH),
            description: None,
            issued_by: None,
        })
        .unwrap()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_cache_follows_the_store_and_its_task_stops_with_it() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (id, secret) = ("0123456789ab", "ab".repeat(32));
        store.create(&token_key("aaaaaaaaaaaa"), record("aaaaaaaaaaaa", &secret, Usage::Join)).await.unwrap();
        let auth = Arc::new(Authenticator::new("b".repeat(64)));
        auth.follow(store.clone());
        auth.follow(store.clone());
        wait_for("the listed record", || auth.cache.read().contains_key("aaaaaaaaaaaa")).await;
        store.create(&token_key(id), record(id, &secret, Usage::Credential)).await.unwrap();
        wait_for("the created record", || auth.cache.read().contains_key(id)).await;
        let header = HeaderValue::from_str(&format!("Bearer {id}.{secret}")).unwrap();
        let who = auth.authenticate(store.as_ref(), Some(&header), SystemTime::now()).await.unwrap();
        assert_eq!(who, Identity::Proxy { token_id: id.into() });
        store.delete(&token_key(id), None).await.unwrap();
        wait_for("the deletion", || !auth.cache.read().contains_key(id)).await;
        let err = auth.authenticate(store.as_ref(), Some(&header), SystemTime::now()).await.unwrap_err();
        assert!(matches!(err, AuthError::Unknown), "{err}");
        // The join token authenticates nothing here; the bootstrap token is admin.
        let join = HeaderValue::from_str(&format!("Bearer aaaaaaaaaaaa.{secret}")).unwrap();
        let err = auth.authenticate(store.as_ref(), Some(&join), SystemTime::now()).await.unwrap_err();
        assert!(matches!(err, AuthError::JoinTokenElsewhere), "{err}");
        let boot = HeaderValue::from_str(&format!("Bearer {}", "b".repeat(64))).unwrap();
        let who = auth.authenticate(store.as_ref(), Some(&boot), SystemTime::now()).await.unwrap();
        assert_eq!(who.to_string(), model::auth::BOOTSTRAP_IDENTITY);

        // Dropping the authenticator ends the follower, which releases its handle on the store.
        assert_eq!(Arc::strong_count(&store), 2, "the test's and the follower's");
        drop(auth);
        wait_for("the follower to stop", || Arc::strong_count(&store) == 1).await;
    }
}
