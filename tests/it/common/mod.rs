//! Test harness: start real `berth` processes on loopback port 0 and talk to them as users do.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
pub use test_support::{require_tool, wait_for};

pub mod load;

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
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    /// Start `berth server` listening on `listen` (a restart reuses the port the first run picked, so
    /// separate agents find it again).
    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(BERTH)
            .args(["server", "--api-listen", listen, "--data-dir"])
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

    /// An admin API client that verifies the server against its cluster CA.
    pub fn client(&self) -> client::Client {
        client::Client::with_ca(&self.url, &ca(&self.dir), Some(self.token())).expect("API client")
    }

    /// Run a client command against this server.
    pub fn berth(&self, args: &[&str]) -> Output {
        berth_with_data_dir(&self.dir, args)
    }

    /// Run a client command and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        require_success(args, self.berth(args))
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

/// The cluster CA of the server whose data dir is `dir`.
pub fn ca(dir: &Path) -> pki::CaCert {
    pki::CaCert::from_pem(&std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt in the data dir")).expect("CA")
}

/// A reqwest builder for the API of the server whose data dir is `dir`: it trusts that cluster's CA only.
pub fn api_http(dir: &Path) -> reqwest::ClientBuilder {
    test_support::http().tls_backend_preconfigured(pki::client_config(&ca(dir), None).expect("TLS client config"))
}

/// A client command that finds its server through `dir` (never through the caller's environment).
pub fn berth_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BERTH);
    cmd.args(args).arg("--data-dir").arg(dir).env_remove("BERTH_SERVER").env_remove("BERTH_TOKEN");
    cmd
}

/// Run [`berth_command`] to completion.
pub fn berth_with_data_dir(dir: &Path, args: &[&str]) -> Output {
    berth_command(dir, args).output().expect("run berth")
}

/// `out`'s stdout, after asserting the command succeeded (the message shows both streams).
pub fn require_success(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "berth {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository root (for `config/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `berth up` child process on loopback port 0 everywhere; stopped with SIGINT (Ctrl-C) on drop, so a
/// failed assertion leaks no pods into later tests.
pub struct Up {
    pub child: Child,
    pub dir: PathBuf,
    /// API URL (`http://127.0.0.1:PORT`).
    pub api: String,
    /// Proxy HTTP address (`127.0.0.1:PORT`).
    pub proxy: String,
    /// DNS address (`127.0.0.1:PORT`).
    pub dns: String,
    /// Every line `berth up` printed so far is also sent here.
    pub lines: mpsc::Receiver<String>,
    /// And appended here (with a newline each), for tests that inspect the whole output.
    pub printed: Arc<Mutex<String>>,
}

fn after(line: &str, marker: &str) -> Option<String> {
    line.split(marker).nth(1).and_then(|r| r.split([' ', ',']).next()).map(str::to_string)
}

impl Up {
    /// Start `berth up` with data dir `dir` and `extra` arguments (e.g. `-f config/demo/`, `--agents 2`);
    /// returns once it printed where it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Up {
        Self::start_with(dir, extra, &[], Stdio::inherit())
    }

    /// [`Up::start`] with extra environment variables and `stderr` going where the caller says (e.g. a file).
    pub fn start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Up {
        let mut child = Command::new(BERTH)
            .args(["up", "--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--dns-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .envs(env.iter().copied())
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn berth up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let printed = Arc::new(Mutex::new(String::new()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if let Ok(mut all) = sink.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let mut up = Up {
            child,
            dir: dir.to_path_buf(),
            api: String::new(),
            proxy: String::new(),
            dns: String::new(),
            lines: rx,
            printed,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while up.api.is_empty() || up.proxy.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = up.lines.recv_timeout(left).expect("berth up printed its addresses within 60 s");
            if let Some(api) = after(&line, "API on ") {
                up.api = api;
            }
            if let Some(proxy) = after(&line, "proxy on http://") {
                up.proxy = proxy;
                up.dns = after(&line, "DNS on ").unwrap_or_default();
            }
        }
        up
    }

    /// Run a client command against this `berth up`.
    pub fn berth(&self, args: &[&str]) -> Output {
        berth_with_data_dir(&self.dir, args)
    }

    /// Run a client command; returns its stdout (empty on failure), for polling loops.
    pub fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.berth(args).stdout).into_owned()
    }

    /// One object as JSON (`Null` when it cannot be read).
    pub fn get_json(&self, kind: &str, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.stdout(&["get", kind, name, "-o", "json"])).unwrap_or(serde_json::Value::Null)
    }

    /// Run a client command and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        require_success(args, self.berth(args))
    }

    /// `berth get KIND -o json` as the list of items.
    pub fn items(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = self.berth(&["get", kind, "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        match v.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.clone(),
            None if v.is_object() => vec![v],
            None => Vec::new(),
        }
    }

    /// Ctrl-C and wait; returns the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait for berth up")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
