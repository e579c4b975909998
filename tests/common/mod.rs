//! Test harness: start real `berth` processes on loopback port 0 and talk to them as users do.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A `berth server` child process; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Server {
    /// Start `berth server` on a free port with `dir` as data dir; waits until it prints its address.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BERTH)
            .args(["server", "--api-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("API on ").nth(1) {
                    let url = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(url);
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).expect("server printed its address within 60 s");
        Server { child, url, dir: dir.to_path_buf() }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("token")).expect("token file").trim().to_string()
    }

    /// Run a client command against this server.
    pub fn berth(&self, args: &[&str]) -> Output {
        Command::new(BERTH)
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .output()
            .expect("run berth")
    }

    /// Run a client command and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The repository root (for `config/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Wait for `cond` with a generous deadline; panics with `what` when it never holds.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Whether a system tool is available; when it is not, records why the caller skips (fails under
/// `BERTH_REQUIRE_ALL=1`).
pub fn require_tool(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let reason = format!("{test}: `{tool}` is not installed");
    assert!(std::env::var("BERTH_REQUIRE_ALL").as_deref() != Ok("1"), "BERTH_REQUIRE_ALL=1 but {reason}");
    eprintln!("SKIP {reason}");
    if let Ok(log) = std::env::var("BERTH_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{reason}");
        }
    }
    false
}

/// A `berth up` child process on loopback port 0; stopped with SIGINT on drop (so its pods stop too).
pub struct Up {
    pub child: Child,
    pub dir: PathBuf,
    /// The proxy's HTTP address (`127.0.0.1:PORT`).
    pub proxy: String,
}

impl Up {
    /// Start `berth up -f manifests` with `dir` as data dir; waits until it prints its proxy address.
    pub fn start(dir: &Path, manifests: &Path) -> Up {
        let mut child = Command::new(BERTH)
            .args(["up", "--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .arg("-f")
            .arg(manifests)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if let Some(rest) = line.split("proxy on http://").nth(1) {
                    let _ = tx.send(rest.split([' ', ',']).next().unwrap_or("").to_string());
                }
            }
        });
        let proxy = rx.recv_timeout(Duration::from_secs(60)).expect("berth up printed its proxy address within 60 s");
        Up { child, dir: dir.to_path_buf(), proxy }
    }

    /// Run a client command against it; returns stdout (empty on failure).
    pub fn berth(&self, args: &[&str]) -> String {
        let out = Command::new(BERTH)
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .output()
            .expect("run berth");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One object as JSON (`Null` when it cannot be read).
    pub fn get_json(&self, kind: &str, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.berth(&["get", kind, name, "-o", "json"])).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
