//! The cluster under test, each part its own container with its own addresses:
//!
//! ```text
//!  etcd-1..3 (.11-.13) ── berth-store-<id> ── server-1..3 (.21-.23 on both networks)
//!                                                 │
//!  agent-1..3 (.31-.33), proxy (.41) ── berth-node-<id>
//! ```
//!
//! The test process reaches every container at its address (Docker's bridge networks are routed from the
//! host), runs the checker's etcd watch from revision 1 before the first server starts, and removes every
//! container and network it made when the [`Cluster`] is dropped (printing their last log lines first when
//! the test is failing).

use super::api::Api;
use super::checker::{self, Ack, History};
use super::docker::{self, Container, Network};
use super::image;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const API_PORT: u16 = 7070;
pub const PROXY_PORT: u16 = 8080;
pub const PROXY_ADMIN_PORT: u16 = 9090;
/// Election timing passed to the servers (the issue's suggested defaults).
pub const LEASE: Duration = Duration::from_secs(10);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(7);
pub const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// The replica the proxy tries first (the first replica usually leads: this one usually does not).
pub const PROXY_FIRST_SERVER: usize = 1;
/// The host name the test app is routed by on the proxy.
pub const APP_HOST: &str = "web.test";
pub const NS: &str = "default";

/// What the binary under test supports: the harness runs against today's binary and tomorrow's.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// `berth server --lease-duration ...`: leader election and fencing (issue #17, server side).
    pub election: bool,
    /// `berth agent --node-ip`: agents on their own hosts, several `--server`s (issue #17, client side).
    pub multi_host: bool,
}

impl Features {
    pub fn detect(berth: &Path) -> Features {
        let help = |role: &str| {
            std::process::Command::new(berth)
                .args([role, "--help"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        Features {
            election: help("server").contains("--lease-duration"),
            multi_host: help("agent").contains("--node-ip"),
        }
    }
}

pub struct Etcd {
    pub c: Container,
    pub ip: Ipv4Addr,
}

impl Etcd {
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
}

pub struct Server {
    pub c: Container,
    pub name: String,
    pub store_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    /// The data dir, bind-mounted at /data.
    pub dir: PathBuf,
}

impl Server {
    /// The URL agents, the proxy and the harness use (the node-network address).
    pub fn url(&self) -> String {
        format!("https://{}:{API_PORT}", self.node_ip)
    }
}

pub struct Agent {
    pub c: Container,
    pub name: String,
}

pub struct Proxy {
    pub c: Container,
    pub ip: Ipv4Addr,
}

impl Proxy {
    /// `IP:PORT` of the proxy's HTTP listener.
    pub fn http(&self) -> String {
        format!("{}:{PROXY_PORT}", self.ip)
    }
}

/// Knobs of one cluster.
#[derive(Debug, Clone)]
pub struct Spec {
    pub agents: usize,
    /// Agent capacity (`--capacity`): small, so the over-commit check means something.
    pub capacity: String,
    /// Replicas of the test app.
    pub replicas: u32,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec { agents: 3, capacity: "cpu=1,memory=1Gi,pods=12".into(), replicas: 3 }
    }
}

pub struct Cluster {
    pub id: String,
    pub features: Features,
    pub rt: tokio::runtime::Runtime,
    pub store_net: Network,
    pub node_net: Network,
    pub etcd: Vec<Etcd>,
    pub servers: Vec<Server>,
    pub agents: Vec<Agent>,
    pub proxy: Option<Proxy>,
    pub api: Api,
    pub history: History,
    watch: tokio::task::JoinHandle<()>,
    /// Writes the harness saw acknowledged (for the lost-write check).
    pub acks: Arc<Mutex<Vec<Ack>>>,
    image: String,
    node_join: String,
    proxy_join: String,
    _dirs: tempfile::TempDir,
}

fn log(msg: &str) {
    eprintln!("[cluster {:>7.1}s] {msg}", super::since_start().as_secs_f64());
}

impl Cluster {
    /// Start the whole cluster and the test app, or `None` (skipped, with the reason recorded) when Docker, root
    /// or the etcd binary is missing. Panics when a part does not come up.
    pub fn start(test: &str, spec: Spec) -> Option<Cluster> {
        if !super::prerequisites(test) {
            return None;
        }
        let berth = Path::new(crate::common::BERTH);
        let features = Features::detect(berth);
        docker::remove_leftovers();
        let t0 = Instant::now();
        let image = image::image(berth);
        log(&format!("image {image} ready in {:.1}s; features {features:?}", t0.elapsed().as_secs_f64()));
        let seed: u32 = std::process::id().wrapping_mul(2_654_435_761) ^ (t0.elapsed().subsec_nanos());
        let id = format!("{:06x}", seed & 0xff_ffff);
        let store_net = Network::create(&format!("berth-store-{id}"), &id, seed);
        let node_net = Network::create(&format!("berth-node-{id}"), &id, seed.wrapping_add(1));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dirs = tempfile::tempdir().expect("temp dir");

        // etcd: three members, then the checker's watch from revision 1.
        let members: Vec<(String, Ipv4Addr)> =
            (1..=3).map(|i| (format!("etcd-{i}-{id}"), store_net.addr(10 + i as u8))).collect();
        let initial = members.iter().map(|(n, ip)| format!("{n}=http://{ip}:2380")).collect::<Vec<_>>().join(",");
        let etcd: Vec<Etcd> = members
            .iter()
            .map(|(name, ip)| {
                let cmd: Vec<String> = [
                    "/usr/bin/etcd",
                    "--name",
                    name,
                    "--data-dir",
                    "/tmp/etcd",
                    "--listen-client-urls",
                    "http://0.0.0.0:2379",
                    "--advertise-client-urls",
                    &format!("http://{ip}:2379"),
                    "--listen-peer-urls",
                    "http://0.0.0.0:2380",
                    "--initial-advertise-peer-urls",
                    &format!("http://{ip}:2380"),
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &id,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let c = Container::run(name, &id, &image, &[(&store_net.name, *ip)], &[], &[], &cmd);
                Etcd { c, ip: *ip }
            })
            .collect();
        let endpoints: Vec<String> = etcd.iter().map(Etcd::endpoint).collect();
        rt.block_on(wait_etcd(&endpoints, Duration::from_secs(30)));
        let history = History::default();
        let watch = rt.spawn(history.follow(endpoints.clone()));
        log(&format!("etcd up ({:.1}s)", t0.elapsed().as_secs_f64()));

        let mut cluster = Cluster {
            id: id.clone(),
            features,
            rt,
            store_net,
            node_net,
            etcd,
            servers: Vec::new(),
            agents: Vec::new(),
            proxy: None,
            api: Api::new(Vec::new(), &dummy_ca(), String::new(), Duration::from_secs(10)),
            history,
            watch,
            acks: Arc::default(),
            image,
            node_join: String::new(),
            proxy_join: String::new(),
            _dirs: dirs,
        };

        // Servers: the first creates the token, the encryption key and the CA; the others get copies of the
        // first two (the CA comes from the store).
        let store_url =
            format!("etcd://{}", cluster.etcd.iter().map(|e| format!("{}:2379", e.ip)).collect::<Vec<_>>().join(","));
        for i in 1..=3u8 {
            let name = format!("server-{i}-{id}");
            let dir = cluster._dirs.path().join(format!("server-{i}"));
            std::fs::create_dir_all(&dir).expect("server dir");
            if i > 1 {
                let first = &cluster.servers[0].dir;
                for f in ["token", "secret-encryption.key"] {
                    std::fs::copy(first.join(f), dir.join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
                }
            }
            let (store_ip, node_ip) = (cluster.store_net.addr(20 + i), cluster.node_net.addr(20 + i));
            let mut cmd: Vec<String> = vec![
                "/usr/local/bin/berth".into(),
                "server".into(),
                "--data-dir".into(),
                "/data".into(),
                "--api-listen".into(),
                format!("0.0.0.0:{API_PORT}"),
                "--store".into(),
                store_url.clone(),
                "--tls-san".into(),
                store_ip.to_string(),
                "--tls-san".into(),
                node_ip.to_string(),
            ];
            if features.election {
                for (flag, v) in [
                    ("--name", name.clone()),
                    ("--advertise-url", format!("https://{node_ip}:{API_PORT}")),
                    ("--lease-duration", humantime::format_duration(LEASE).to_string()),
                    ("--renew-deadline", humantime::format_duration(RENEW_DEADLINE).to_string()),
                    ("--retry-period", humantime::format_duration(RETRY_PERIOD).to_string()),
                ] {
                    cmd.push(flag.into());
                    cmd.push(v);
                }
            }
            let c = Container::run(
                &name,
                &id,
                &cluster.image,
                &[(&cluster.store_net.name, store_ip), (&cluster.node_net.name, node_ip)],
                &[format!("{}:/data", dir.display())],
                &[("RUST_LOG", "info")],
                &cmd,
            );
            cluster.servers.push(Server { c, name, store_ip, node_ip, dir });
            let s = cluster.servers.last().expect("server");
            if i == 1 {
                cluster.wait("server-1 to write its token and the cluster CA", Duration::from_secs(60), || {
                    s.dir.join("ca.crt").exists() && s.dir.join("token").exists()
                });
                let ca = crate::common::ca(&s.dir);
                let token = std::fs::read_to_string(s.dir.join("token")).expect("token").trim().to_string();
                cluster.api = Api::new(vec![s.url()], &ca, token, Duration::from_secs(10));
            }
            let url = format!("{}/healthz", s.url());
            cluster.wait(&format!("{url} to answer"), Duration::from_secs(60), || cluster.http_ok(&url));
        }
        cluster.api.servers = cluster.servers.iter().map(Server::url).collect();
        log(&format!("servers up ({:.1}s)", t0.elapsed().as_secs_f64()));

        cluster.node_join = cluster.join_token("node");
        cluster.proxy_join = cluster.join_token("proxy");
        for i in 1..=spec.agents {
            cluster.start_agent(i, &spec.capacity);
        }
        cluster.wait_nodes_ready(spec.agents, Duration::from_secs(60));
        log(&format!("{} agents ready ({:.1}s)", spec.agents, t0.elapsed().as_secs_f64()));
        cluster.start_proxy();
        cluster.deploy_app(spec.replicas);
        log(&format!("cluster {id} ready in {:.1}s", t0.elapsed().as_secs_f64()));
        Some(cluster)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Wait for `cond` (polled every 100 ms), printing the cluster's logs and panicking after `timeout`.
    pub fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server URLs in the form `--server` takes, starting with replica `first` so that clients spread over
    /// the replicas (all of them once clients fail over, else only that one).
    pub fn server_arg(&self, first: usize) -> String {
        let n = self.servers.len();
        let urls: Vec<String> = (0..n).map(|k| self.servers[(first + k) % n].url()).collect();
        if self.features.multi_host {
            urls.join(",")
        } else {
            urls[0].clone()
        }
    }

    fn join_token(&self, role: &str) -> String {
        let req = json!({"role": role, "usage": "join", "ttlSeconds": 3600, "description": "cluster test"});
        let a = self.block_on(self.api.call("POST", "/api/v1/tokens", Some(&req))).expect("create a join token");
        assert!(a.ok(), "create a {role} join token: {} {}", a.status, a.body);
        a.body["token"].as_str().expect("token in the answer").to_string()
    }

    /// Start agent `i` (`agent-i`, at `.30+i`, zone `zone-<letter>`; its first server is replica `i-1`).
    pub fn start_agent(&mut self, i: usize, capacity: &str) {
        let name = format!("agent-{i}");
        let ip = self.node_net.addr(30 + i as u8);
        let mut cmd: Vec<String> = vec![
            "/usr/local/bin/berth".into(),
            "agent".into(),
            "--server".into(),
            self.server_arg(i - 1),
            "--join".into(),
            self.node_join.clone(),
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            "/var/lib/berth".into(),
            "--capacity".into(),
            capacity.into(),
            "--labels".into(),
            format!("topology.kubernetes.io/zone=zone-{}", (b'a' + (i as u8 - 1)) as char),
            "--logs-listen".into(),
            "0.0.0.0:10250".into(),
        ];
        if self.features.multi_host {
            cmd.push("--node-ip".into());
            cmd.push(ip.to_string());
        }
        let cname = format!("{name}-{}", self.id);
        let c = Container::run(
            &cname,
            &self.id,
            &self.image,
            &[(&self.node_net.name, ip)],
            &[],
            &[("RUST_LOG", "info")],
            &cmd,
        );
        self.agents.push(Agent { c, name });
    }

    pub fn start_proxy(&mut self) {
        let ip = self.node_net.addr(41);
        let cmd: Vec<String> = vec![
            "/usr/local/bin/berth".into(),
            "proxy".into(),
            "--server".into(),
            self.server_arg(PROXY_FIRST_SERVER),
            "--join".into(),
            self.proxy_join.clone(),
            "--data-dir".into(),
            "/var/lib/berth".into(),
            "--http-listen".into(),
            format!("0.0.0.0:{PROXY_PORT}"),
            "--admin-listen".into(),
            format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
        ];
        let name = format!("proxy-{}", self.id);
        let c = Container::run(&name, &self.id, &self.image, &[(&self.node_net.name, ip)], &[], &[], &cmd);
        let admin = format!("http://{ip}:{PROXY_ADMIN_PORT}/healthz");
        self.wait("the proxy's admin endpoint", Duration::from_secs(30), || self.http_ok(&admin));
        self.proxy = Some(Proxy { c, ip });
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("proxy started")
    }

    /// Nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> Vec<String> {
        self.block_on(self.api.items("/api/v1/nodes"))
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    pub fn wait_nodes_ready(&self, n: usize, timeout: Duration) {
        self.wait(&format!("{n} nodes Ready"), timeout, || self.ready_nodes().len() >= n);
    }

    /// The test app: a Deployment `web` of `berth echo` (100m CPU each), a Service and a Route for
    /// [`APP_HOST`]; returns once `replicas` pods are ready (and, on multi-host agents, once the proxy serves).
    pub fn deploy_app(&self, replicas: u32) {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "echo",
                            "command": ["berth", "echo"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                        }],
                        "terminationGracePeriodSeconds": 2,
                    }
                }
            }
        });
        let service = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        });
        let route = json!({
            "apiVersion": "berth.dev/v1", "kind": "Route", "metadata": {"name": "web", "namespace": NS},
            "spec": {"hosts": [APP_HOST], "rules": [{"path": {"prefix": "/"}, "backend": {"service": "web", "port": "http"}}]}
        });
        for (plural, obj) in [("deployments", &deployment), ("services", &service), ("routes", &route)] {
            let path = format!("/api/v1/namespaces/{NS}/{plural}");
            self.block_on(self.api.apply(&path, obj, Duration::from_secs(30)))
                .unwrap_or_else(|e| panic!("apply {plural}/web: {e}"));
        }
        self.wait_ready_pods(replicas as usize, Duration::from_secs(60));
        if self.features.multi_host {
            let proxy = self.proxy().http();
            self.wait("the proxy to serve the app", Duration::from_secs(30), || {
                crate::common::load::get_once(&proxy, APP_HOST).is_ok()
            });
        }
    }

    /// The app's pods (not being deleted).
    pub fn app_pods(&self) -> Vec<Value> {
        self.block_on(self.api.items(&format!("/api/v1/namespaces/{NS}/pods")))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    pub fn ready_app_pods(&self) -> Vec<Value> {
        self.app_pods()
            .into_iter()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .collect()
    }

    /// Wait until exactly `n` app pods exist and all are ready.
    pub fn wait_ready_pods(&self, n: usize, timeout: Duration) {
        self.wait(&format!("{n} ready app pods (and no others)"), timeout, || {
            self.app_pods().len() == n && self.ready_app_pods().len() == n
        });
    }

    /// Container restarts of the app's pods, by pod name (a restart or a replaced pod shows up here).
    pub fn restarts(&self) -> std::collections::BTreeMap<String, u64> {
        self.app_pods()
            .iter()
            .map(|p| {
                let n = p["status"]["containerStatuses"]
                    .as_array()
                    .map(|cs| cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum())
                    .unwrap_or(0);
                (p["metadata"]["name"].as_str().unwrap_or_default().to_string(), n)
            })
            .collect()
    }

    /// The replica etcd names as leader now (`/api/v1/controlplane` when the servers have it, else etcd).
    pub fn leader(&self) -> Option<usize> {
        let name = self.block_on(self.leader_name())?;
        self.servers.iter().position(|s| s.name == name)
    }

    async fn leader_name(&self) -> Option<String> {
        let endpoints: Vec<String> = self.etcd.iter().filter(|e| e.c.running()).map(Etcd::endpoint).collect();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        let mut client = etcd_client::Client::connect(endpoints, Some(options)).await.ok()?;
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
        let resp = client.get(checker::ELECTION_PREFIX, Some(opts)).await.ok()?;
        resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    /// Wait until some replica other than `not` leads; its index.
    pub fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        let mut found = None;
        self.wait("a leader", timeout, || {
            found = self.leader().filter(|l| Some(*l) != not);
            found.is_some()
        });
        found.expect("leader")
    }

    /// The gauge `berth_leader` of replica `i` (`None` when its /metrics does not answer).
    pub fn leader_gauge(&self, i: usize) -> Option<u64> {
        self.server_metric(i, "berth_leader").map(|v| v as u64)
    }

    /// Wait until the checker has seen etcd's current revision, then analyse the whole history.
    pub fn check(&self) -> checker::Report {
        if let Some(rev) = self.block_on(self.etcd_revision()) {
            self.wait("the checker to catch up with etcd", Duration::from_secs(30), || {
                self.history.seen_revision() >= rev
            });
        }
        let mut report = checker::analyse(&self.history.events(), &self.acks.lock().unwrap());
        report.violations.extend(self.history.errors());
        report
    }

    /// Assert that every invariant held so far.
    pub fn assert_invariants(&self) -> checker::Report {
        let r = self.check();
        assert!(r.violations.is_empty(), "invariants violated:\n  {}", r.violations.join("\n  "));
        log(&format!(
            "invariants hold: {} pods, {} bindings, {} fenced writes, {} leader terms",
            r.pods_seen,
            r.bindings,
            r.fences.len(),
            r.terms.len()
        ));
        r
    }

    pub async fn etcd_revision(&self) -> Option<i64> {
        let endpoints: Vec<String> = self.etcd.iter().filter(|e| e.c.running()).map(Etcd::endpoint).collect();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(3));
        let mut client = etcd_client::Client::connect(endpoints, Some(options)).await.ok()?;
        let resp = client.get("/", None).await.ok()?;
        resp.header().map(|h| h.revision())
    }

    /// GET `url` without credentials (TLS verified against the cluster CA): status and body, `None` when it
    /// does not answer within 4 s (a replica cut from its store takes 2 s to answer `/metrics` and `/readyz`).
    pub fn http_get(&self, url: &str) -> Option<(u16, String)> {
        self.block_on(async { tokio::time::timeout(Duration::from_secs(4), self.api.raw(url)).await.ok().flatten() })
    }

    pub fn http_ok(&self, url: &str) -> bool {
        self.http_get(url).is_some_and(|(s, _)| s == 200)
    }

    /// A gauge or counter of replica `i`'s `/metrics` (`None` when it does not answer).
    pub fn server_metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, text) = self.http_get(&format!("{}/metrics", self.servers[i].url()))?;
        metric(&text, name)
    }

    /// A gauge or counter of the proxy's admin `/metrics`.
    pub fn proxy_metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.http_get(&format!("http://{}:{PROXY_ADMIN_PORT}/metrics", self.proxy().ip))?;
        metric(&text, name)
    }

    /// Wait until replica `i` answers `/readyz` (or `/healthz` on a binary without it) with 200.
    pub fn wait_serving(&self, i: usize, timeout: Duration) {
        let path = if self.features.election { "readyz" } else { "healthz" };
        let url = format!("{}/{path}", self.servers[i].url());
        self.wait(&format!("{url} to answer 200"), timeout, || self.http_ok(&url));
    }

    /// Processes of `berth echo` (the app's workloads) in agent `a`'s container, from the host.
    pub fn workloads_on(&self, a: usize) -> usize {
        docker::docker(&["top", &self.agents[a].c.name, "-o", "pid,args"])
            .map(|t| t.lines().filter(|l| l.contains("berth echo")).count())
            .unwrap_or(0)
    }

    /// The app pods bound to each agent, by agent index.
    pub fn pods_per_agent(&self) -> Vec<usize> {
        let pods = self.app_pods();
        self.agents.iter().map(|a| pods.iter().filter(|p| p["spec"]["nodeName"] == a.name.as_str()).count()).collect()
    }

    /// Every container of the cluster.
    pub fn containers(&self) -> Vec<&Container> {
        let mut all: Vec<&Container> = self.etcd.iter().map(|e| &e.c).collect();
        all.extend(self.servers.iter().map(|s| &s.c));
        all.extend(self.agents.iter().map(|a| &a.c));
        all.extend(self.proxy.iter().map(|p| &p.c));
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.watch.abort();
        if std::thread::panicking() || std::env::var_os("BERTH_CLUSTER_LOGS").is_some() {
            for c in self.containers() {
                eprintln!("----- last lines of {} -----\n{}", c.name, c.logs(40));
            }
        }
        for c in self.containers() {
            c.remove();
        }
        // The networks go when their fields drop, after every container that used them.
    }
}

/// The value of the first sample of `name` (any labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_etcd(endpoints: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        if let Ok(mut c) = etcd_client::Client::connect(endpoints, Some(options)).await {
            if c.put("/berth-test/ready", "1", None).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "etcd at {endpoints:?} did not accept a write within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A placeholder CA for the API client until the first server wrote its own.
fn dummy_ca() -> pki::CaCert {
    pki::ClusterCa::generate("placeholder").expect("CA").cert().clone()
}
