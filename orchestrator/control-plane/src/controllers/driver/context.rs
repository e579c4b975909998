//! What a reconcile sees and how it writes: the caches, the clock, and store writes that keep the caches
//! current, so no controller writes both the store and a cache by hand.

use super::cache::{Cache, Cached, Caches};
use crate::store::{Key, Store, StoreError};
use model::clock::Clock;
use std::time::SystemTime;

/// How often [`Context::update`] reads the object again after a conflict before giving up.
const UPDATE_ATTEMPTS: usize = 8;

/// Given to every [`super::Reconciler::reconcile`] call.
pub struct Context<'a> {
    pub(crate) store: &'a dyn Store,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) caches: &'a mut Caches,
}

impl Context<'_> {
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn caches(&self) -> &Caches {
        self.caches
    }

    /// The cache of `T` (see [`Caches::of`]).
    pub fn cache<T: Cached>(&self) -> &Cache<T> {
        self.caches.of::<T>()
    }

    /// Create `object` at `key`; fails with [`StoreError::AlreadyExists`] when the key is taken.
    pub async fn create<T: Cached>(&mut self, key: &Key, object: &T) -> Result<(), StoreError> {
        let revision = self.store.create(key, encode(object)?).await?;
        self.caches.of_mut::<T>().put(key.clone(), revision, object.clone());
        Ok(())
    }

    /// Read-modify-write with compare-and-swap on the cached revision; on a conflict the object is read
    /// again and `change` applied to the fresh copy. `change` returns false when there is nothing to write.
    /// Nothing happens when the object is not cached or is gone.
    pub async fn update<T: Cached>(
        &mut self,
        key: &Key,
        mut change: impl FnMut(&mut T) -> bool + Send,
    ) -> Result<(), StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let cache = self.caches.of_mut::<T>();
            let (Some(revision), Some(current)) = (cache.revision(key), cache.get(key)) else {
                return Ok(());
            };
            let mut object = current.clone();
            if !change(&mut object) {
                return Ok(());
            }
            match self.store.update(key, encode(&object)?, revision).await {
                Ok(r) => {
                    self.caches.of_mut::<T>().put(key.clone(), r, object);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => {
                    if !self.refresh::<T>(key).await? {
                        return Ok(());
                    }
                }
                Err(StoreError::NotFound(_)) => {
                    self.caches.of_mut::<T>().forget(key, 0);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!("{key}: too many concurrent writers")))
    }

    /// Write `object` at `key` if the store still holds what the cache holds (create it when the cache holds
    /// nothing). Returns false when someone else wrote it first: the cache then holds their version, and the
    /// caller should decide again.
    pub async fn replace<T: Cached>(&mut self, key: &Key, object: T) -> Result<bool, StoreError> {
        let bytes = encode(&object)?;
        let written = match self.caches.of::<T>().revision(key) {
            Some(r) => self.store.update(key, bytes, r).await,
            None => self.store.create(key, bytes).await,
        };
        match written {
            Ok(r) => {
                self.caches.of_mut::<T>().put(key.clone(), r, object);
                Ok(true)
            }
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                self.refresh::<T>(key).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Delete `key` whatever its revision (a decision to delete stands when the object changed meanwhile, e.g.
    /// a status write). The cache keeps a tombstone, so a watch event older than the delete cannot bring the
    /// object back.
    pub async fn delete(&mut self, key: &Key) -> Result<(), StoreError> {
        let revision = match self.store.delete(key, None).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => 0,
            Err(e) => return Err(e),
        };
        if let Some(cache) = self.caches.find_mut(&key.kind) {
            cache.forget(key, revision);
        }
        Ok(())
    }

    /// Read `key` again into the cache; false when it is gone or undecodable.
    async fn refresh<T: Cached>(&mut self, key: &Key) -> Result<bool, StoreError> {
        let fresh = self.store.get(key).await?;
        let cache = self.caches.of_mut::<T>();
        match fresh {
            Some(v) => match Cache::<T>::decode(&v) {
                Some(t) => {
                    cache.put(key.clone(), v.revision, t);
                    Ok(true)
                }
                None => Ok(false),
            },
            None => {
                cache.forget(key, 0);
                Ok(false)
            }
        }
    }
}

fn encode<T: Cached>(t: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(t).map_err(|e| StoreError::Backend(format!("encoding object: {e}")))
}
