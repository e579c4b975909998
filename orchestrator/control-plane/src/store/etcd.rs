//! The etcd backend (cargo feature `etcd`), for several control-plane replicas sharing one store.
//!
//! Keys are `/berth/{kind}/{namespace}/{name}` (cluster-scoped kinds have an empty namespace segment:
//! `/berth/nodes//n1`); values are stored as given. The store's revision is etcd's: an object's revision is
//! its `mod_revision`, `list` returns the response header's revision, and every write is one etcd
//! transaction whose compare is the store's precondition (`create_revision == 0` for create,
//! `mod_revision == expected` for update and delete), so compare-and-swap is etcd's, not ours. Watches
//! are etcd watches from `from + 1` with previous values, and a compacted start revision becomes
//! [`StoreError::Compacted`].
//!
//! Not here: leader election and leases (the server's HA layer uses etcd-client directly).

use super::{selected, Key, Prefix, Store, StoreError, StoreEvent, StoreResult, Versioned, WatchStream};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::VecDeque;
use std::time::Duration;

/// Every Berth key lives under this prefix.
pub const KEY_PREFIX: &str = "/berth/";
/// Objects fetched per round trip when listing; the list stays one snapshot (pinned revision).
const LIST_PAGE: i64 = 500;

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn etcd_err(context: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd {context}: {e}"))
}

/// The etcd key of a store key: `/berth/{kind}/{namespace}/{name}`.
pub fn etcd_key(key: &Key) -> StoreResult<String> {
    if key.kind.is_empty() || key.name.is_empty() {
        return Err(StoreError::Backend(format!("invalid key {key:?}: empty kind or name")));
    }
    if [&key.kind, &key.namespace, &key.name].iter().any(|p| p.contains('/')) {
        return Err(StoreError::Backend(format!("invalid key {key:?}: '/' in a key part")));
    }
    Ok(format!("{KEY_PREFIX}{}/{}/{}", key.kind, key.namespace, key.name))
}

fn etcd_prefix(prefix: &Prefix) -> String {
    match &prefix.namespace {
        Some(ns) => format!("{KEY_PREFIX}{}/{ns}/", prefix.kind),
        None => format!("{KEY_PREFIX}{}/", prefix.kind),
    }
}

/// The first key after every key that starts with `prefix` (all our prefixes end in `/`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn parse_key(raw: &[u8]) -> StoreResult<Key> {
    let bad = || StoreError::Backend(format!("etcd key {:?} is not a Berth key", String::from_utf8_lossy(raw)));
    let s = std::str::from_utf8(raw).map_err(|_| bad())?;
    let rest = s.strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(ns), Some(name)) => Ok(Key::new(kind, ns, name)),
        _ => Err(bad()),
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<u64> {
    header
        .map(|h| h.revision())
        .and_then(|r| u64::try_from(r).ok())
        .ok_or_else(|| StoreError::Backend("etcd response without a revision header".into()))
}

fn versioned(kv: &KeyValue) -> StoreResult<Versioned> {
    Ok(Versioned { key: parse_key(kv.key())?, value: kv.value().to_vec(), revision: kv.mod_revision() as u64 })
}

/// etcd revisions are `i64`; ours are `u64`. Revisions above `i64::MAX` cannot exist in etcd.
fn to_etcd(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

/// The current value's `mod_revision` from a transaction's `or_else` get, if the key exists.
fn current_revision(resp: &etcd_client::TxnResponse) -> Option<u64> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision() as u64),
        _ => None,
    })
}

impl EtcdStore {
    /// Connect to the cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> StoreResult<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await.map_err(|e| etcd_err("connect", e))?;
        Ok(Self { client })
    }

    /// Run a compare-and-swap transaction that updates or deletes `key` only at `expected` (when given)
    /// and only when it exists; turn a failed compare into `NotFound` or `Conflict`.
    async fn guarded(&self, key: &Key, k: String, expected: Option<u64>, op: TxnOp) -> StoreResult<u64> {
        let mut when = vec![Compare::create_revision(k.clone(), CompareOp::NotEqual, 0)];
        if let Some(expected) = expected {
            when.push(Compare::mod_revision(k.clone(), CompareOp::Equal, to_etcd(expected)));
        }
        let txn = Txn::new().when(when).and_then(vec![op]).or_else(vec![TxnOp::get(k, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(|e| etcd_err("txn", e))?;
        if resp.succeeded() {
            return revision_of(resp.header());
        }
        match (current_revision(&resp), expected) {
            (None, _) => Err(StoreError::NotFound(key.clone())),
            (Some(actual), Some(expected)) => Err(StoreError::Conflict { key: key.clone(), expected, actual }),
            // Exists and no revision was expected: the compare cannot fail.
            (Some(_), None) => Err(StoreError::Backend(format!("etcd txn on {key} failed without a reason"))),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>> {
        let resp = self.client.kv_client().get(etcd_key(key)?, None).await.map_err(|e| etcd_err("get", e))?;
        resp.kvs().first().map(versioned).transpose()
    }

    async fn list(
        &self,
        prefix: &Prefix,
        selector: Option<&discovery::Selector>,
    ) -> StoreResult<(Vec<Versioned>, u64)> {
        let start = etcd_prefix(prefix);
        let end = prefix_end(&start);
        let mut kv = self.client.kv_client();
        let mut items = Vec::new();
        let mut from = start.into_bytes();
        let mut at: Option<u64> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if let Some(rev) = at {
                options = options.with_revision(to_etcd(rev));
            }
            let resp = kv.get(from.clone(), Some(options)).await.map_err(|e| etcd_err("list", e))?;
            let rev = match at {
                Some(rev) => rev,
                None => revision_of(resp.header())?,
            };
            at = Some(rev);
            for kv in resp.kvs() {
                if selected(selector, kv.value()) {
                    items.push(versioned(kv)?);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    // etcd orders by key bytes, where the '/' separator sorts after '-' and '.': restore
                    // the (namespace, name) order the other backends give.
                    items.sort_by(|a, b| a.key.cmp(&b.key));
                    return Ok((items, rev));
                }
            }
        }
    }

    async fn create(&self, key: &Key, value: Vec<u8>) -> StoreResult<u64> {
        let k = etcd_key(key)?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(k, value, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(|e| etcd_err("create", e))?;
        if resp.succeeded() {
            revision_of(resp.header())
        } else {
            Err(StoreError::AlreadyExists(key.clone()))
        }
    }

    async fn update(&self, key: &Key, value: Vec<u8>, expected_revision: u64) -> StoreResult<u64> {
        let k = etcd_key(key)?;
        self.guarded(key, k.clone(), Some(expected_revision), TxnOp::put(k, value, None)).await
    }

    async fn delete(&self, key: &Key, expected_revision: Option<u64>) -> StoreResult<u64> {
        let k = etcd_key(key)?;
        self.guarded(key, k.clone(), expected_revision, TxnOp::delete(k, Some(DeleteOptions::new()))).await
    }

    async fn watch(&self, prefix: &Prefix, from_revision: u64) -> StoreResult<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(to_etcd(from_revision.saturating_add(1)))
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .watch(etcd_prefix(prefix), Some(options))
            .await
            .map_err(|e| etcd_err("watch", e))?;
        let state = WatchState { stream, buffered: VecDeque::new(), from: from_revision, done: false };
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }

    async fn revision(&self) -> StoreResult<u64> {
        let resp = self
            .client
            .kv_client()
            .get(KEY_PREFIX, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| etcd_err("revision", e))?;
        revision_of(resp.header())
    }

    async fn compact(&self, revision: u64) -> StoreResult<()> {
        let current = self.revision().await?;
        if revision > current {
            return Err(StoreError::Backend(format!(
                "cannot compact at revision {revision}: the current revision is {current}"
            )));
        }
        // etcd keeps the revision it compacts at; our contract forgets it too, so compact one further when
        // there is a later revision to keep.
        let target = if revision < current { revision + 1 } else { revision };
        match self.client.kv_client().compact(to_etcd(target), Some(CompactionOptions::new().with_physical())).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("required revision has been compacted") => {
                Ok(())
            }
            Err(e) => Err(etcd_err("compact", e)),
        }
    }
}

struct WatchState {
    /// Holds the request side open too: dropping it would end the watch.
    stream: etcd_client::WatchStream,
    buffered: VecDeque<StoreEvent>,
    from: u64,
    done: bool,
}

async fn next_event(mut st: WatchState) -> Option<(StoreResult<StoreEvent>, WatchState)> {
    loop {
        if let Some(ev) = st.buffered.pop_front() {
            return Some((Ok(ev), st));
        }
        if st.done {
            return None;
        }
        let failure = match st.stream.message().await {
            Ok(Some(resp)) if resp.compact_revision() > 0 => StoreError::Compacted {
                requested: st.from,
                // etcd can still replay from `compact_revision`, i.e. for watchers from one below it.
                compacted: (resp.compact_revision() as u64).saturating_sub(1),
            },
            Ok(Some(resp)) if resp.canceled() => {
                StoreError::Backend(format!("etcd watch cancelled: {}", resp.cancel_reason()))
            }
            Ok(Some(resp)) => {
                for ev in resp.events() {
                    match convert(ev) {
                        Ok(ev) => st.buffered.push_back(ev),
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                continue;
            }
            Ok(None) => StoreError::Backend("etcd watch stream closed".into()),
            Err(e) => etcd_err("watch", e),
        };
        st.done = true;
        return Some((Err(failure), st));
    }
}

fn convert(ev: &etcd_client::Event) -> StoreResult<StoreEvent> {
    let kv = ev.kv().ok_or_else(|| StoreError::Backend("etcd watch event without a key".into()))?;
    Ok(match ev.event_type() {
        EventType::Put => {
            StoreEvent::Put { object: versioned(kv)?, created: kv.create_revision() == kv.mod_revision() }
        }
        EventType::Delete => StoreEvent::Delete {
            key: parse_key(kv.key())?,
            revision: kv.mod_revision() as u64,
            prev: ev.prev_kv().map(|p| p.value().to_vec()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_berth_paths_and_back() {
        let cases = [
            (Key::new("pods", "default", "web-1"), "/berth/pods/default/web-1"),
            (Key::new("nodes", "", "n1"), "/berth/nodes//n1"),
        ];
        for (key, path) in cases {
            assert_eq!(etcd_key(&key).ok().as_deref(), Some(path));
            assert_eq!(parse_key(path.as_bytes()).ok(), Some(key));
        }
        for bad in [Key::new("pods", "a/b", "c"), Key::new("", "a", "b"), Key::new("pods", "a", "")] {
            assert!(etcd_key(&bad).is_err(), "{bad:?}");
        }
        assert!(parse_key(b"/other/pods/a/b").is_err());
        assert_eq!(prefix_end("/berth/pods/"), b"/berth/pods0".to_vec());
    }
}
