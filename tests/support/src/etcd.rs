//! A throwaway single-member etcd on loopback for tests that need a real one: its own temporary data dir,
//! free ports, killed on drop (also when the test fails). Callers check `require_tool("etcd", ...)` first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd.
pub struct Etcd {
    child: Child,
    /// `http://127.0.0.1:PORT`, what etcd clients take.
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start etcd and wait (up to 30 s) until it reports itself healthy (it has elected itself leader).
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
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
        let etcd = Etcd { child, endpoint, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(client) {
            assert!(Instant::now() < deadline, "etcd did not become healthy on {} within 30 s", etcd.endpoint);
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Berth's store URL for it: `etcd://127.0.0.1:PORT`.
    /// The etcd process id (to stop and continue it: a stalled store).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        self.endpoint.replace("http://", "etcd://")
    }

    /// etcd's own log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// etcd's `/health` on the client port says `"health":"true"` once it has a leader.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
