//! Secret encryption at rest: a [`Store`] wrapper that seals the values of every `secrets` object (and the
//! private key of the cluster CA, `berthpki`) with AES-256-GCM before they reach the backend, and opens them
//! again on every read and watch event.
//!
//! Why a wrapper and not the API layer: the API is not the only reader. The controllers and the scheduler
//! share the same `Arc<dyn Store>` in process (the Deployment controller hashes Secret data for
//! `berth.dev/rollout-on-config-change`), so encrypting in the API would hand them ciphertext. Wrapping the
//! store once, where it is opened, covers redb, etcd and memory alike, and every in-process reader sees
//! plaintext while the bytes in the backend (the redb file, etcd's keyspace) never hold it.
//!
//! What is sealed: a stored Secret keeps `apiVersion`, `kind`, `metadata` (so label selectors still work) and
//! `type` in clear; `data` and `stringData` are replaced by `encryptedData: "v1:" + base64(nonce || ciphertext
//! || tag)`, the ciphertext being the JSON of `{"data":…, "stringData":…}`. A `berthpki` value has its `key`
//! sealed the same way (its `cert` stays in clear: it is public). The additional authenticated data
//! is the store key (`secrets/NS/NAME`), so a sealed value copied to another key does not open. Each write
//! draws a fresh 96-bit nonce from the system RNG. A Secret written before encryption existed (no
//! `encryptedData`) is read as it is and sealed on its next write.
//!
//! The key is 32 random bytes, hex-encoded in `secret-encryption.key` in the data dir, created on first start
//! with mode 0600; a key file that group or others can read, or that is not 64 hex digits, is refused.

use super::{Key, Prefix, Store, StoreError, StoreEvent, StoreResult, Versioned, WatchStream};
use base64::Engine;
use futures::StreamExt;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The store kind whose values are sealed.
pub const SECRETS_KIND: &str = "secrets";
/// The store kind of the cluster CA (`{"cert": PEM, "key": PEM}`), whose `key` is sealed.
pub const PKI_KIND: &str = "berthpki";
/// File name of the key in the data dir.
pub const KEY_FILE: &str = "secret-encryption.key";
/// The field that replaces `data`/`stringData` in a stored Secret.
pub const SEALED_FIELD: &str = "encryptedData";
const VERSION_PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secret encryption key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret encryption key {path} has mode {mode:o}: it must not be readable by group or others \
         (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("secret encryption key {path} is malformed: expected 64 hex digits (32 bytes)")]
    Malformed { path: PathBuf },
    #[error("cannot generate a secret encryption key: the system random number generator failed")]
    Random,
    #[error(
        "secret encryption key {path} does not open this store's data (it was sealed with another key): \
         copy {file} from the data dir of the replica that first started on this store"
    )]
    Mismatch { path: PathBuf, file: &'static str },
    #[error("checking the secret encryption key against the store: {0}")]
    Store(#[from] StoreError),
}

/// The AES-256-GCM key Secrets are sealed with. `Debug` prints nothing of it.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(AES-256-GCM, redacted)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        // A 32-byte key is exactly what AES-256-GCM takes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!("AES-256 key length"));
        SecretKey { key: LessSafeKey::new(unbound), rng: SystemRandom::new() }
    }

    /// Read the key at `path`, or create it (mode 0600) with fresh random bytes when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, KeyError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
                }
                let text = std::fs::read_to_string(path).map_err(io)?;
                let bytes = decode_hex(text.trim()).ok_or_else(|| KeyError::Malformed { path: path.to_path_buf() })?;
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new().fill(&mut bytes).map_err(|_| KeyError::Random)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn seal(&self, aad: &str, plaintext: &[u8]) -> StoreResult<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Backend("secret encryption: RNG failed".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| StoreError::Backend("secret encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{VERSION_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    fn open(&self, aad: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed.strip_prefix(VERSION_PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The fields sealed in values of `kind`; empty for kinds stored in clear.
fn sealed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        SECRETS_KIND => &["data", "stringData"],
        PKI_KIND => &["key"],
        _ => &[],
    }
}

/// Seals `secrets` and `berthpki` values on the way in and opens them on the way out; other kinds pass
/// through untouched.
pub struct EncryptingStore {
    inner: Arc<dyn Store>,
    key: Arc<SecretKey>,
}

impl EncryptingStore {
    pub fn new(inner: Arc<dyn Store>, key: SecretKey) -> Self {
        Self { inner, key: Arc::new(key) }
    }

    /// Wrap `inner` with the key in `data_dir` (created on first use).
    pub fn open(inner: Arc<dyn Store>, data_dir: &Path) -> Result<Arc<dyn Store>, KeyError> {
        Ok(Arc::new(Self::new(inner, SecretKey::load_or_create(&data_dir.join(KEY_FILE))?)))
    }

    /// As [`EncryptingStore::open`], then check the key against the store's canary: a sealed record that
    /// the first replica to start writes (with `create`, so one wins). A key that cannot open it is refused
    /// with [`KeyError::Mismatch`], naming the file, before anything is written with it.
    pub async fn open_verified(inner: Arc<dyn Store>, data_dir: &Path) -> Result<EncryptingStore, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let store = Self::new(inner, SecretKey::load_or_create(&path)?);
        store.verify_canary(&path).await?;
        Ok(store)
    }

    /// The same key over another store (the leader's fenced view of the same data).
    pub fn with_inner(&self, inner: Arc<dyn Store>) -> EncryptingStore {
        EncryptingStore { inner, key: self.key.clone() }
    }

    async fn verify_canary(&self, path: &Path) -> Result<(), KeyError> {
        let key = canary_key();
        let mismatch = || KeyError::Mismatch { path: path.to_path_buf(), file: KEY_FILE };
        loop {
            if let Some(stored) = self.inner.get(&key).await? {
                let opened = unseal(&self.key, &key, stored.value).map_err(|_| mismatch())?;
                let value: Value = serde_json::from_slice(&opened).map_err(|_| mismatch())?;
                return match value.get("key").and_then(Value::as_str) {
                    Some(CANARY_TEXT) => Ok(()),
                    _ => Err(mismatch()),
                };
            }
            let record = serde_json::json!({"key": CANARY_TEXT}).to_string().into_bytes();
            match self.create(&key, record).await {
                Ok(_) => return Ok(()),
                // Another replica wrote it first: check against theirs.
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The canary record: a `berthpki` value, so its `key` field is sealed like the CA's.
pub const CANARY_NAME: &str = "encryption-canary";
const CANARY_TEXT: &str = "berth secret encryption canary";

fn canary_key() -> Key {
    Key::new(PKI_KIND, "", CANARY_NAME)
}

fn seal(sk: &SecretKey, key: &Key, value: Vec<u8>) -> StoreResult<Vec<u8>> {
    let fields = sealed_fields(&key.kind);
    if fields.is_empty() {
        return Ok(value);
    }
    let bad = || StoreError::Backend(format!("{key}: a sealed value must be a JSON object"));
    let mut obj: Map<String, Value> = serde_json::from_slice(&value).map_err(|_| bad())?;
    let mut payload = Map::new();
    for &field in fields {
        if let Some(v) = obj.remove(field) {
            payload.insert(field.to_string(), v);
        }
    }
    let plain = serde_json::to_vec(&payload).map_err(|e| StoreError::Backend(format!("{key}: {e}")))?;
    obj.insert(SEALED_FIELD.to_string(), Value::String(sk.seal(&key.to_string(), &plain)?));
    serde_json::to_vec(&obj).map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

fn unseal(sk: &SecretKey, key: &Key, value: Vec<u8>) -> StoreResult<Vec<u8>> {
    if sealed_fields(&key.kind).is_empty() {
        return Ok(value);
    }
    let Ok(mut obj) = serde_json::from_slice::<Map<String, Value>>(&value) else {
        return Ok(value);
    };
    let Some(sealed) = obj.remove(SEALED_FIELD) else {
        // Written before encryption existed: plaintext, sealed on its next write.
        return Ok(value);
    };
    let plain = sealed.as_str().and_then(|s| sk.open(&key.to_string(), s)).ok_or_else(|| {
        StoreError::Backend(format!("{key}: cannot decrypt the stored value (was the data dir's {KEY_FILE} replaced?)"))
    })?;
    let payload: Map<String, Value> = serde_json::from_slice(&plain)
        .map_err(|_| StoreError::Backend(format!("{key}: decrypted value is not a JSON object")))?;
    obj.extend(payload);
    serde_json::to_vec(&obj).map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

fn unseal_versioned(sk: &SecretKey, mut v: Versioned) -> StoreResult<Versioned> {
    v.value = unseal(sk, &v.key, std::mem::take(&mut v.value))?;
    Ok(v)
}

#[async_trait::async_trait]
impl Store for EncryptingStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>> {
        self.inner.get(key).await?.map(|v| unseal_versioned(&self.key, v)).transpose()
    }

    async fn list(
        &self,
        prefix: &Prefix,
        selector: Option<&discovery::Selector>,
    ) -> StoreResult<(Vec<Versioned>, u64)> {
        let (items, revision) = self.inner.list(prefix, selector).await?;
        let items = items.into_iter().map(|v| unseal_versioned(&self.key, v)).collect::<StoreResult<Vec<_>>>()?;
        Ok((items, revision))
    }

    async fn create(&self, key: &Key, value: Vec<u8>) -> StoreResult<u64> {
        let value = seal(&self.key, key, value)?;
        self.inner.create(key, value).await
    }

    async fn update(&self, key: &Key, value: Vec<u8>, expected_revision: u64) -> StoreResult<u64> {
        let value = seal(&self.key, key, value)?;
        self.inner.update(key, value, expected_revision).await
    }

    async fn delete(&self, key: &Key, expected_revision: Option<u64>) -> StoreResult<u64> {
        self.inner.delete(key, expected_revision).await
    }

    async fn watch(&self, prefix: &Prefix, from_revision: u64) -> StoreResult<WatchStream> {
        let events = self.inner.watch(prefix, from_revision).await?;
        if sealed_fields(&prefix.kind).is_empty() {
            return Ok(events);
        }
        let sk = self.key.clone();
        Ok(Box::pin(events.map(move |ev| match ev? {
            StoreEvent::Put { object, created } => {
                Ok(StoreEvent::Put { object: unseal_versioned(&sk, object)?, created })
            }
            StoreEvent::Delete { key, revision, prev } => {
                let prev = prev.map(|p| unseal(&sk, &key, p)).transpose()?;
                Ok(StoreEvent::Delete { key, revision, prev })
            }
        })))
    }

    async fn revision(&self) -> StoreResult<u64> {
        self.inner.revision().await
    }

    async fn compact(&self, revision: u64) -> StoreResult<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn secret_json(value: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "default", "labels": {"app": "web"}},
            "type": "Opaque",
            "data": {"password": value},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn secrets_are_sealed_in_the_backend_and_open_for_readers() {
        let raw = Arc::new(MemoryStore::new());
        let store = EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[7; 32]));
        let k = Key::new("secrets", "default", "db");
        // base64 of "s3cr3t-value": neither form may reach the backend.
        let b64 = "czNjcjN0LXZhbHVl";
        store.create(&k, secret_json(b64)).await.unwrap();
        let stored = raw.get(&k).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&stored.value);
        assert!(!text.contains(b64) && !text.contains("s3cr3t"), "plaintext in backend: {text}");
        assert!(text.contains(SEALED_FIELD) && text.contains("\"app\""), "{text}");
        let read: Value = serde_json::from_slice(&store.get(&k).await.unwrap().unwrap().value).unwrap();
        assert_eq!(read["data"]["password"], b64);
        assert!(read.get(SEALED_FIELD).is_none());
        // Label selectors still see the labels.
        let sel = discovery::Selector::parse("app=web").unwrap();
        let (listed, _) = store.list(&Prefix { kind: "secrets".into(), namespace: None }, Some(&sel)).await.unwrap();
        assert_eq!(listed.len(), 1);
        // Two writes of the same value differ (fresh nonce).
        let rev = stored.revision;
        store.update(&k, secret_json(b64), rev).await.unwrap();
        let again = raw.get(&k).await.unwrap().unwrap();
        assert_ne!(again.value, stored.value);
    }

    #[tokio::test]
    async fn watch_events_are_opened_and_other_kinds_pass_through() {
        let raw = Arc::new(MemoryStore::new());
        let store = EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[9; 32]));
        let prefix = Prefix { kind: "secrets".into(), namespace: None };
        let mut w = store.watch(&prefix, 0).await.unwrap();
        let k = Key::new("secrets", "default", "db");
        store.create(&k, secret_json("YQ==")).await.unwrap();
        store.delete(&k, None).await.unwrap();
        match w.next().await.unwrap().unwrap() {
            StoreEvent::Put { object, .. } => {
                let v: Value = serde_json::from_slice(&object.value).unwrap();
                assert_eq!(v["data"]["password"], "YQ==");
            }
            other => panic!("{other:?}"),
        }
        match w.next().await.unwrap().unwrap() {
            StoreEvent::Delete { prev: Some(p), .. } => {
                let v: Value = serde_json::from_slice(&p).unwrap();
                assert_eq!(v["data"]["password"], "YQ==");
            }
            other => panic!("{other:?}"),
        }
        let cm = Key::new("configmaps", "default", "c");
        store.create(&cm, b"{\"data\":{\"a\":\"b\"}}".to_vec()).await.unwrap();
        assert_eq!(raw.get(&cm).await.unwrap().unwrap().value, b"{\"data\":{\"a\":\"b\"}}".to_vec());
    }

    #[tokio::test]
    async fn a_different_key_or_a_moved_value_does_not_open() {
        let raw = Arc::new(MemoryStore::new());
        let store = EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[1; 32]));
        let k = Key::new("secrets", "default", "db");
        store.create(&k, secret_json("YQ==")).await.unwrap();
        let other = EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[2; 32]));
        let err = other.get(&k).await.unwrap_err().to_string();
        assert!(err.contains("cannot decrypt"), "{err}");
        // The sealed bytes under another name fail authentication (the key is the AAD).
        let sealed = raw.get(&k).await.unwrap().unwrap().value;
        let moved = Key::new("secrets", "default", "copy");
        raw.create(&moved, sealed).await.unwrap();
        assert!(store.get(&moved).await.is_err());
        // Plaintext written before encryption existed is still readable.
        let old = Key::new("secrets", "default", "old");
        raw.create(&old, secret_json("Yg==")).await.unwrap();
        let v: Value = serde_json::from_slice(&store.get(&old).await.unwrap().unwrap().value).unwrap();
        assert_eq!(v["data"]["password"], "Yg==");
    }

    #[tokio::test]
    async fn the_ca_private_key_is_sealed_and_its_certificate_is_not() {
        let raw = Arc::new(MemoryStore::new());
        let store = EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[3; 32]));
        let k = Key::new(PKI_KIND, "", "cluster-ca");
        let cert = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n";
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHkeymaterial\n-----END PRIVATE KEY-----\n";
        let value = serde_json::to_vec(&serde_json::json!({"cert": cert, "key": pem})).unwrap();
        let mut w = store.watch(&Prefix { kind: PKI_KIND.into(), namespace: None }, 0).await.unwrap();
        store.create(&k, value).await.unwrap();
        let stored = String::from_utf8(raw.get(&k).await.unwrap().unwrap().value).unwrap();
        assert!(!stored.contains("PRIVATE KEY") && !stored.contains("MIGHkeymaterial"), "{stored}");
        assert!(stored.contains("MIIBcert") && stored.contains(SEALED_FIELD), "{stored}");
        let read: Value = serde_json::from_slice(&store.get(&k).await.unwrap().unwrap().value).unwrap();
        assert_eq!((read["cert"].as_str(), read["key"].as_str()), (Some(cert), Some(pem)));
        match w.next().await.unwrap().unwrap() {
            StoreEvent::Put { object, .. } => {
                let v: Value = serde_json::from_slice(&object.value).unwrap();
                assert_eq!(v["key"], pem);
            }
            other => panic!("{other:?}"),
        }
        let (listed, _) = store.list(&Prefix { kind: PKI_KIND.into(), namespace: None }, None).await.unwrap();
        assert!(String::from_utf8_lossy(&listed[0].value).contains("PRIVATE KEY"));
    }

    #[tokio::test]
    async fn a_replica_with_another_key_is_refused_naming_the_key_file() {
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (first, second, third) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        EncryptingStore::open_verified(raw.clone(), first.path()).await.unwrap();
        // Same key copied over: accepted.
        std::fs::copy(first.path().join(KEY_FILE), second.path().join(KEY_FILE)).unwrap();
        EncryptingStore::open_verified(raw.clone(), second.path()).await.unwrap();
        // A fresh key: refused, and the message names the file to copy.
        let err = EncryptingStore::open_verified(raw.clone(), third.path()).await.err().expect("refused");
        assert!(matches!(err, KeyError::Mismatch { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(KEY_FILE) && text.contains(&third.path().display().to_string()), "{text}");
        // The canary is sealed in the backend like any berthpki key.
        let stored = raw.get(&canary_key()).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored.value).contains(CANARY_TEXT));
    }

    #[test]
    fn key_file_is_created_0600_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        SecretKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_to_string(&path).unwrap();
        SecretKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "an existing key is reused");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o640, .. }), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not-hex\n").unwrap();
        let err = SecretKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("64 hex digits"));
    }
}
