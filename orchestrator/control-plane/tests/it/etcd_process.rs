//! A throwaway etcd (`test_support::etcd`) and a store connected to it, for the tests that need a real one.

use control_plane::store::etcd::EtcdStore;
use control_plane::store::Store;
use std::time::Duration;
pub use test_support::etcd::Etcd;

/// Start etcd and connect a store to it. Callers check `test_support::require_tool("etcd", ...)` first.
pub async fn start_etcd() -> (Etcd, EtcdStore) {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.expect("etcd starter");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(store) = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await {
            if store.revision().await.is_ok() {
                return (etcd, store);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "etcd did not answer on {} within 30 s", etcd.endpoint);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
