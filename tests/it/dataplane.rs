//! The data plane apart from the control plane: `berth proxy --server` and `berth dns --server` mirror a
//! `berth server`'s registry (following endpoint changes, surviving a server restart on the last known
//! state), and `berth proxy -c FILE` serves a static file that it reloads on change.

use crate::common::{require_tool, wait_for, Server, BERTH};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A child `berth` process: its output lines are collected (and echoed); SIGINT then SIGKILL on drop, so a
/// failed assertion leaks no process (an agent stops its pods on SIGINT).
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BERTH)
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let name = args.first().copied().unwrap_or("berth").to_string();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [out, err] {
            let (lines, tx, name) = (lines.clone(), tx.clone(), name.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    println!("[{name}] {line}");
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Proc { child, lines, rx }
    }

    /// The first output line containing `marker`, within 60 s.
    fn line_with(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(marker)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no output line containing {marker:?} within 60 s");
            let _ = self.rx.recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The word after `after` in `line`, without a trailing comma.
fn field(line: &str, after: &str) -> String {
    line.split(after).nth(1).and_then(|r| r.split([' ', ',']).next()).unwrap_or_default().to_string()
}

/// The `pod` an echo backend names in its answer through the proxy, or None on any failure.
fn pod_via(proxy: &str, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-H", &format!("Host: {host}"), &format!("http://{proxy}/")])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("pod").and_then(|p| p.as_str()).map(str::to_string)
}

/// The pods answering `rounds` requests; None if any request failed.
fn pods_via(proxy: &str, host: &str, rounds: usize) -> Option<BTreeSet<String>> {
    (0..rounds).map(|_| pod_via(proxy, host)).collect()
}

fn metrics(admin: &str) -> String {
    let out = Command::new("curl").args(["-s", "-m", "5", &format!("http://{admin}/metrics")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of an unlabelled-or-labelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// SRV targets `dig` gets for the web service, sorted (None when dig fails).
fn srv(dns: &str, has_dig: bool) -> Option<Vec<String>> {
    if !has_dig {
        return Some(Vec::new());
    }
    let (ip, port) = dns.rsplit_once(':').unwrap();
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, "+short", "+tries=1", "+time=2"])
        .args(["SRV", "_http._tcp.web.default.svc.cluster.local"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut lines: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    lines.sort();
    Some(lines)
}

fn manifest(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: echo
          command: ["berth", "echo"]
          ports: [{{name: http, containerPort: 8080}}]
          env:
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
  loadBalancing: {{policy: roundRobin}}
---
apiVersion: berth.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  hosts: ["web.test"]
  rules:
    - path: {{prefix: /}}
      backend: {{service: web, port: http}}
"#
    )
}

fn apply(server: &Server, dir: &Path, replicas: u32) {
    let file = dir.join("web.yaml");
    std::fs::write(&file, manifest(replicas)).unwrap();
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
}

#[test]
fn standalone_proxy_and_dns_mirror_a_server_and_survive_its_restart() {
    const TEST: &str = "standalone_proxy_and_dns_mirror_a_server_and_survive_its_restart";
    if !require_tool("curl", TEST) {
        return;
    }
    let has_dig = require_tool("dig", TEST);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir, &[]);
    let api = server.url.trim_start_matches("https://").to_string();
    let agent_dir = tmp.path().join("agent");
    let agent_data = agent_dir.to_str().unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();
    let token_file = dir.join("token");
    let token = token_file.to_str().unwrap();
    let ca = server.dir.join("ca.crt").to_str().unwrap().to_string();
    let _agent = Proc::spawn(
        &[
            "agent",
            "--server",
            &server.url,
            "--token-file",
            token,
            "--certificate-authority",
            &ca,
            "--data-dir",
            agent_data,
            "--name",
            "n1",
        ]
        .into_iter()
        .chain(["--stop-pods-on-exit"])
        .collect::<Vec<_>>(),
        &[],
    );
    apply(&server, &dir, 1);

    let proxy = Proc::spawn(
        &[
            "proxy",
            "--server",
            &server.url,
            "--token-file",
            token,
            "--certificate-authority",
            &ca,
            "--http-listen",
            "127.0.0.1:0",
        ]
        .into_iter()
        .chain(["--admin-listen", "127.0.0.1:0"])
        .collect::<Vec<_>>(),
        &[],
    );
    let line = proxy.line_with("proxy on http://");
    let (proxy_addr, proxy_admin) = (field(&line, "proxy on http://"), field(&line, "admin on http://"));
    let dns = Proc::spawn(
        &[
            "dns",
            "--server",
            &server.url,
            "--token-file",
            token,
            "--certificate-authority",
            &ca,
            "--dns-listen",
            "127.0.0.1:0",
            "--dns-ttl",
            "0",
        ]
        .into_iter()
        .chain(["--admin-listen", "127.0.0.1:0"])
        .collect::<Vec<_>>(),
        &[],
    );
    let line = dns.line_with("DNS on ");
    let (dns_addr, dns_admin) = (field(&line, "DNS on "), field(&line, "admin on http://"));
    assert!(!proxy_admin.is_empty() && !dns_admin.is_empty(), "admin addresses printed");

    // One replica: the proxy routes to it and DNS has one SRV record.
    wait_for("the standalone proxy routes web.test to 1 pod", Duration::from_secs(90), || {
        pods_via(&proxy_addr, "web.test", 3).is_some_and(|p| p.len() == 1)
    });
    wait_for("1 SRV record from the standalone DNS", Duration::from_secs(30), || {
        srv(&dns_addr, has_dig).is_some_and(|s| !has_dig || s.len() == 1)
    });

    // An endpoint change on the server reaches both mirrors.
    apply(&server, &dir, 3);
    wait_for("the proxy reaches 3 pods", Duration::from_secs(90), || {
        pods_via(&proxy_addr, "web.test", 6).is_some_and(|p| p.len() == 3)
    });
    wait_for("3 SRV records", Duration::from_secs(30), || {
        srv(&dns_addr, has_dig).is_some_and(|s| !has_dig || s.len() == 3)
    });
    let before = srv(&dns_addr, has_dig).unwrap();
    let m = metrics(&proxy_admin);
    assert_eq!(sample(&m, "berth_mirror_connected"), Some(1.0), "{m}");
    assert!(m.contains("berth_proxy_requests_total"), "proxy metrics served: {m}");
    let d = metrics(&dns_admin);
    assert!(d.contains("berth_dns_queries_total") && sample(&d, "berth_mirror_synced") == Some(1.0), "{d}");

    // The server goes away: both keep serving the last known state and report staleness.
    server.kill9();
    wait_for("the proxy mirror notices the lost server", Duration::from_secs(30), || {
        sample(&metrics(&proxy_admin), "berth_mirror_connected") == Some(0.0)
    });
    let pods = pods_via(&proxy_addr, "web.test", 6).expect("every request answered while the server is down");
    assert_eq!(pods.len(), 3, "the last known 3 endpoints are still used: {pods:?}");
    assert_eq!(srv(&dns_addr, has_dig).expect("DNS answers while the server is down"), before);
    wait_for("staleness reported", Duration::from_secs(10), || {
        sample(&metrics(&dns_admin), "berth_mirror_stale_seconds").is_some_and(|s| s > 0.0)
    });

    // The server returns at the same address; the mirrors catch up and follow the next change.
    server = Server::start_on(&dir, &api, &[]);
    apply(&server, &dir, 2);
    wait_for("the proxy reaches exactly 2 pods after the restart", Duration::from_secs(90), || {
        pods_via(&proxy_addr, "web.test", 6).is_some_and(|p| p.len() == 2)
    });
    wait_for("2 SRV records after the restart", Duration::from_secs(60), || {
        srv(&dns_addr, has_dig).is_some_and(|s| !has_dig || s.len() == 2)
    });
    wait_for("both mirrors connected again", Duration::from_secs(30), || {
        sample(&metrics(&proxy_admin), "berth_mirror_connected") == Some(1.0)
            && sample(&metrics(&dns_admin), "berth_mirror_connected") == Some(1.0)
    });
    assert!(proxy.output().contains("lost the server"), "the proxy logged the outage:\n{}", proxy.output());
    drop(dns);
    drop(proxy);
    drop(server);
}

/// A backend: `berth echo` on a free port, naming itself `name`. Returns the process and its address.
fn echo(name: &str) -> (Proc, String) {
    let p = Proc::spawn(&["echo", "--listen", "127.0.0.1:0"], &[("POD_NAME", name)]);
    let addr = field(&p.line_with("listening on http://"), "listening on http://");
    (p, addr)
}

fn static_file(backend: &str, a: &str, b: &str) -> String {
    format!(
        r#"services:
  - name: a
    endpoints: ["{a}"]
  - name: b
    endpoints: ["{b}"]
routes:
  - namespace: default
    name: main
    hosts: ["x.test"]
    rules:
      - path: {{prefix: /}}
        backend: {{service: {backend}}}
"#
    )
}

/// Replace the file the way careful editors do (write aside, rename over).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One HTTP/1.1 request on an open connection; returns the answer's body.
fn get_on(conn: &mut TcpStream, host: &str) -> String {
    write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "connection closed mid-headers");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn static_proxy_reloads_its_file_and_keeps_the_old_table_on_a_bad_edit() {
    const TEST: &str = "static_proxy_reloads_its_file_and_keeps_the_old_table_on_a_bad_edit";
    if !require_tool("curl", TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_a, a) = echo("backend-a");
    let (_b, b) = echo("backend-b");
    let file = tmp.path().join("proxy.yaml");
    std::fs::write(&file, static_file("a", &a, &b)).unwrap();
    let path = file.to_str().unwrap();

    // A bad file at start is refused with the field at fault.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "services: [{name: a, endpoints: [not-an-address]}]\n").unwrap();
    let out = Command::new(BERTH)
        .args(["proxy", "-c", bad.to_str().unwrap(), "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("services[0].endpoints[0]"), "{err}");

    let proxy =
        Proc::spawn(&["proxy", "-c", path, "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &[]);
    let line = proxy.line_with("proxy on http://");
    let (addr, admin) = (field(&line, "proxy on http://"), field(&line, "admin on http://"));
    assert_eq!(pod_via(&addr, "x.test").as_deref(), Some("backend-a"));
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(get_on(&mut conn, "x.test").contains("backend-a"));

    // An edit takes effect without a restart, and an open connection survives it.
    write_atomically(&file, &static_file("b", &a, &b));
    wait_for("the proxy routes to b after the edit", Duration::from_secs(30), || {
        pod_via(&addr, "x.test").as_deref() == Some("backend-b")
    });
    assert!(get_on(&mut conn, "x.test").contains("backend-b"), "the kept-alive connection sees the new table");

    // A broken edit: reported with the field at fault, and the previous table stays in force.
    write_atomically(&file, &static_file("b", &a, &b).replace("backend: {service: b}", "backend: {servce: b}"));
    wait_for("the failed reload is counted", Duration::from_secs(30), || {
        sample(&metrics(&admin), "berth_static_config_reload_failures_total").is_some_and(|n| n >= 1.0)
    });
    assert_eq!(sample(&metrics(&admin), "berth_static_config_stale"), Some(1.0));
    assert!(proxy.output().contains("routes[0].rules[0].backend"), "error names the field:\n{}", proxy.output());
    for _ in 0..5 {
        assert_eq!(pod_via(&addr, "x.test").as_deref(), Some("backend-b"));
    }
    // An empty file (an interrupted save) is refused too.
    std::fs::write(&file, "").unwrap();
    wait_for("the empty file is refused", Duration::from_secs(30), || {
        sample(&metrics(&admin), "berth_static_config_reload_failures_total").is_some_and(|n| n >= 2.0)
    });
    assert_eq!(pod_via(&addr, "x.test").as_deref(), Some("backend-b"));

    // Fixing the file brings it back in force.
    write_atomically(&file, &static_file("a", &a, &b));
    wait_for("the fixed file applies", Duration::from_secs(30), || {
        pod_via(&addr, "x.test").as_deref() == Some("backend-a")
    });
    assert_eq!(sample(&metrics(&admin), "berth_static_config_stale"), Some(0.0));
    assert!(get_on(&mut conn, "x.test").contains("backend-a"));
}
