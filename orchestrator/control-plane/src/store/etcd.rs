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
//! Every unary request has a deadline ([`REQUEST_TIMEOUT`]): a cluster without quorum fails fast with
//! [`StoreError::Backend`] (the API answers 503) instead of hanging.
//!
//! Fencing: a store made with [`EtcdStore::fenced`] belongs to one leadership term (see `crate::ha`). Each of
//! its writes is one transaction whose compare also holds `create_revision(leader key) == term revision` and
//! which also puts the term's audit key (`/berth-fence/<lease id in hex>` = the term revision), so the write
//! and its attribution land in the same etcd revision. A write refused because the leader key is gone or
//! belongs to another term fails with [`StoreError::Fenced`] and trips the [`Fence`]. Reads are not fenced.
//!
//! Not here: the election itself (`crate::ha::etcd`).

use super::{selected, Key, Prefix, Store, StoreError, StoreEvent, StoreResult, Versioned, WatchStream};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every Berth key lives under this prefix.
pub const KEY_PREFIX: &str = "/berth/";
/// Where fenced writes record which leadership term made them: `/berth-fence/<lease id in hex>`.
pub const FENCE_AUDIT_PREFIX: &str = "/berth-fence/";
/// Objects fetched per round trip when listing; the list stays one snapshot (pinned revision).
const LIST_PAGE: i64 = 500;
/// The deadline of every unary etcd request. Without quorum etcd does not answer writes (nor linearizable
/// reads) at all; a caller must learn that in bounded time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// Set on a leadership term's store: every write is conditional on the term's leader key.
    fence: Option<Arc<Fence>>,
}

/// One leadership term's fence: the leader key and its create revision, which every fenced write compares.
#[derive(Debug)]
pub struct Fence {
    leader_key: Vec<u8>,
    revision: i64,
    audit_key: String,
    lost: watch::Sender<bool>,
    rejected: Arc<AtomicU64>,
}

impl Fence {
    /// The fence of the term whose leader key `leader_key` was created at `revision` under `lease`. Each
    /// refused write adds one to `rejected`. Returns the receiver that turns true when a write was refused.
    pub fn new(
        leader_key: impl Into<Vec<u8>>,
        revision: i64,
        lease: i64,
        rejected: Arc<AtomicU64>,
    ) -> (Arc<Fence>, watch::Receiver<bool>) {
        let (lost, rx) = watch::channel(false);
        let fence = Fence { leader_key: leader_key.into(), revision, audit_key: audit_key(lease), lost, rejected };
        (Arc::new(fence), rx)
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    fn compare(&self) -> Compare {
        Compare::create_revision(self.leader_key.clone(), CompareOp::Equal, self.revision)
    }

    fn audit(&self) -> TxnOp {
        TxnOp::put(self.audit_key.clone(), self.revision.to_string(), None)
    }

    fn read_leader(&self) -> TxnOp {
        TxnOp::get(self.leader_key.clone(), None)
    }

    /// Whether the leader key read in a failed transaction's `or_else` shows the term is over.
    fn is_lost(&self, leader: Option<&KeyValue>) -> bool {
        leader.is_none_or(|kv| kv.create_revision() != self.revision)
    }

    /// End the term from this side: every operation of the fenced store under way or to come fails at once
    /// with [`StoreError::Fenced`], so the leader's loops stop without waiting out requests to a store that
    /// may not answer for seconds (a write already sent still lands only if etcd finds the term valid).
    pub fn end(&self) {
        self.lost.send_replace(true);
    }

    async fn ended(&self) {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    fn over(&self, context: &str) -> StoreError {
        StoreError::Fenced(format!("etcd {context}: this replica's leadership term is over"))
    }

    fn reject(&self, key: &Key) -> StoreError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.lost.send_replace(true);
        StoreError::Fenced(format!(
            "{key}: leader key {} no longer holds revision {} (this replica's term is over)",
            String::from_utf8_lossy(&self.leader_key),
            self.revision
        ))
    }
}

/// The audit key of the term held under `lease`.
pub fn audit_key(lease: i64) -> String {
    format!("{FENCE_AUDIT_PREFIX}{lease:x}")
}

fn etcd_err(context: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd {context}: {e}"))
}

/// `request` with the [`REQUEST_TIMEOUT`] deadline.
async fn timed<T>(context: &str, request: impl Future<Output = Result<T, etcd_client::Error>>) -> StoreResult<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| etcd_err(context, e)),
        Err(_) => Err(StoreError::Backend(format!(
            "etcd {context}: no answer within {} s (is a quorum of etcd members reachable?)",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
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

/// The key read by the `index`th operation of a failed transaction's `or_else`, if it exists.
fn read_in_or_else(resp: &etcd_client::TxnResponse, index: usize) -> Option<KeyValue> {
    match resp.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
        _ => None,
    }
}

impl EtcdStore {
    /// Connect to the cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> StoreResult<Self> {
        // HTTP/2 pings find a dead connection in seconds (etcd refuses pings more often than every 5 s);
        // `require_leader` makes a member cut off from its cluster's leader end our watches and lease
        // keep-alives at once instead of leaving them silent.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_require_leader(true);
        let client = timed("connect", Client::connect(endpoints, Some(options))).await?;
        Ok(Self { client, fence: None })
    }

    /// The etcd client (for the election, which shares the connection).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One request under [`REQUEST_TIMEOUT`]; on a fenced store also cut short by [`Fence::end`].
    async fn request<T>(
        &self,
        context: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> StoreResult<T> {
        match &self.fence {
            None => timed(context, request).await,
            Some(fence) => tokio::select! {
                biased;
                _ = fence.ended() => Err(fence.over(context)),
                answer = timed(context, request) => answer,
            },
        }
    }

    /// The same store, every write of which is fenced by `fence` (see the module docs).
    pub fn fenced(&self, fence: Arc<Fence>) -> EtcdStore {
        EtcdStore { client: self.client.clone(), fence: Some(fence) }
    }

    /// Run `txn` (its `or_else` must start with the reads `or_else` lists) with the fence's compare, audit
    /// put and leader read added when fenced. A refused fence is [`StoreError::Fenced`]; otherwise the
    /// response is returned for the caller to read.
    async fn write(
        &self,
        key: &Key,
        mut when: Vec<Compare>,
        mut then: Vec<TxnOp>,
        mut or_else: Vec<TxnOp>,
    ) -> StoreResult<etcd_client::TxnResponse> {
        let reads = or_else.len();
        if let Some(fence) = &self.fence {
            when.push(fence.compare());
            then.push(fence.audit());
            or_else.push(fence.read_leader());
        }
        let txn = Txn::new().when(when).and_then(then).or_else(or_else);
        let resp = match self.request("txn", self.client.kv_client().txn(txn)).await {
            Ok(resp) => resp,
            Err(e) => {
                if let (Some(fence), StoreError::Fenced(_)) = (&self.fence, &e) {
                    // Refused here because the term had ended: a fenced write rejected all the same.
                    fence.rejected.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        if let Some(fence) = &self.fence {
            if !resp.succeeded() && fence.is_lost(read_in_or_else(&resp, reads).as_ref()) {
                return Err(fence.reject(key));
            }
        }
        Ok(resp)
    }

    /// Run a compare-and-swap transaction that updates or deletes `key` only at `expected` (when given)
    /// and only when it exists; turn a failed compare into `NotFound` or `Conflict`.
    async fn guarded(&self, key: &Key, k: String, expected: Option<u64>, op: TxnOp) -> StoreResult<u64> {
        let mut when = vec![Compare::create_revision(k.clone(), CompareOp::NotEqual, 0)];
        if let Some(expected) = expected {
            when.push(Compare::mod_revision(k.clone(), CompareOp::Equal, to_etcd(expected)));
        }
        let resp = self.write(key, when, vec![op], vec![TxnOp::get(k, None)]).await?;
        if resp.succeeded() {
            return revision_of(resp.header());
        }
        match (read_in_or_else(&resp, 0).map(|kv| kv.mod_revision() as u64), expected) {
            (None, _) => Err(StoreError::NotFound(key.clone())),
            (Some(actual), Some(expected)) if actual != expected => {
                Err(StoreError::Conflict { key: key.clone(), expected, actual })
            }
            // The key's compares held, so only the fence can have failed, and it held too when read.
            _ => Err(StoreError::Backend(format!("etcd txn on {key} failed without a reason"))),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<Versioned>> {
        let resp = self.request("get", self.client.kv_client().get(etcd_key(key)?, None)).await?;
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
            let resp = self.request("list", kv.get(from.clone(), Some(options))).await?;
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
        let when = vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)];
        let resp = self.write(key, when, vec![TxnOp::put(k, value, None)], Vec::new()).await?;
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
        let mut watcher = self.client.watch_client();
        let stream = self.request("watch", watcher.watch(etcd_prefix(prefix), Some(options))).await?;
        let state = WatchState { stream, buffered: VecDeque::new(), from: from_revision, done: false };
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }

    async fn revision(&self) -> StoreResult<u64> {
        let mut kv = self.client.kv_client();
        let resp = self.request("revision", kv.get(KEY_PREFIX, Some(GetOptions::new().with_count_only()))).await?;
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
        let mut kv = self.client.kv_client();
        let compacted = kv.compact(to_etcd(target), Some(CompactionOptions::new().with_physical()));
        match tokio::time::timeout(REQUEST_TIMEOUT, compacted).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(etcd_err("compact", e)),
            Err(_) => {
                Err(StoreError::Backend(format!("etcd compact: no answer within {} s", REQUEST_TIMEOUT.as_secs())))
            }
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
