//! A throwaway single-member etcd on loopback for the tests that need a real one (feature `etcd`).

use control_plane::store::etcd::EtcdStore;
use control_plane::store::Store;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd; killed on drop, including when a test fails.
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// The store URL of this etcd (`etcd://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.endpoint.replace("http://", "etcd://")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Start etcd in a temporary dir on free loopback ports and wait until it answers. Callers check
/// `test_support::require_tool("etcd", ...)` first.
pub async fn start_etcd() -> (EtcdProcess, EtcdStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
    let child = Command::new("etcd")
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
    let process = EtcdProcess { child, endpoint: endpoint.clone(), _dir: dir };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(store) = EtcdStore::connect(std::slice::from_ref(&process.endpoint)).await {
            if store.revision().await.is_ok() {
                return (process, store);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "etcd did not answer on {endpoint} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
