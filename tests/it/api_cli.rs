//! Foundation acceptance through the real binary: `berth server`, apply/get/describe/diff, bad input, auth.

use crate::common;
use crate::common::{repo, Server};
use serde_json::Value;
use std::collections::BTreeMap;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `(kind, namespace, name) -> resourceVersion` of everything the server holds for these kinds.
fn versions(server: &Server, kinds: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kind in kinds {
        let list = json(&server.ok(&["get", kind, "-A", "-o", "json"]));
        for item in list["items"].as_array().expect("items") {
            let key = format!(
                "{kind}/{}/{}",
                item["metadata"]["namespace"].as_str().unwrap_or(""),
                item["metadata"]["name"].as_str().unwrap_or("")
            );
            out.insert(key, item["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string());
        }
    }
    out
}

const KINDS: &[&str] = &["deployments", "services", "routes", "configmaps", "secrets", "autoscalers", "pods", "nodes"];

#[test]
fn apply_get_describe_reapply_diff() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let examples = repo().join("config/examples");
    let examples = examples.to_str().unwrap();

    let out = server.ok(&["apply", "-f", examples]);
    assert!(out.lines().count() >= 5, "every example object is created: {out}");
    assert!(out.lines().all(|l| l.ends_with(" created")), "{out}");

    let deployments = server.ok(&["get", "deployments"]);
    assert!(deployments.starts_with("NAME"), "{deployments}");
    assert!(deployments.contains("READY") && deployments.contains("AGE"), "{deployments}");
    assert!(deployments.lines().any(|l| l.starts_with("web ")), "{deployments}");

    let services = json(&server.ok(&["get", "services", "-o", "json"]));
    let names: Vec<&str> =
        services["items"].as_array().unwrap().iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&"web"), "{services}");
    assert_eq!(services["items"][0]["kind"], "Service");

    let one = json(&server.ok(&["get", "deployment", "web", "-o", "json"]));
    assert_eq!(one["metadata"]["name"], "web");
    assert!(one["metadata"]["resourceVersion"].as_str().is_some_and(|r| r.parse::<u64>().is_ok()));

    let described = server.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("Name:") && described.contains("web"), "{described}");
    assert!(described.contains("Replicas:"), "{described}");

    // A second apply of the same files changes nothing. Controllers react to the first apply (pods, status,
    // revision bookkeeping), so compare against the state once they are done with it.
    let mut before = versions(&server, KINDS);
    common::wait_for("controllers to settle", std::time::Duration::from_secs(60), || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = versions(&server, KINDS);
        std::mem::replace(&mut before, now) == before
    });
    let again = server.ok(&["apply", "-f", examples]);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    assert_eq!(before, versions(&server, KINDS), "resourceVersions must not move on a no-op apply");

    // diff: nothing against the same files, the replica change against an edited copy.
    let same = server.berth(&["diff", "-f", examples]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
    let edited = dir.path().join("web-scaled.json");
    let mut deployment = one.clone();
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    deployment["spec"]["replicas"] = Value::from(replicas + 4);
    for k in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
        deployment["metadata"].as_object_mut().unwrap().remove(k);
    }
    deployment.as_object_mut().unwrap().remove("status");
    std::fs::write(&edited, deployment.to_string()).unwrap();
    let diff = server.berth(&["diff", "-f", edited.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "diff exits 1 on differences: {text}");
    assert!(
        text.contains(&format!("-  replicas: {replicas}")) && text.contains(&format!("+  replicas: {}", replicas + 4)),
        "{text}"
    );
}

#[test]
fn kubernetes_manifests_apply_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let k8s = repo().join("config/k8s");
    let out = server.berth(&["apply", "-f", k8s.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for (kind, what) in [
        ("deployments", "Deployment"),
        ("services", "Service"),
        ("routes", "Ingress"),
        ("configmaps", "ConfigMap"),
        ("autoscalers", "HPA"),
    ] {
        let listed = server.ok(&["get", kind, "-n", "shop"]);
        assert!(listed.lines().count() >= 2, "{what} shows up in `berth get {kind}`: {listed}");
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_manifests_are_rejected_with_their_place_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let good = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\ndata:\n  a: b\n";
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector:\n    matchLabels: {app: d}\n  template:\n    metadata:\n      labels: {app: d}\n    spec:\n      containers:\n      - name: c\n        image: x\n        portz: [1]\n", &["unknown.yaml", "document 2", "spec.template.spec.containers[0].portz"]),
        ("type.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: many\n  selector:\n    matchLabels: {app: d}\n  template:\n    metadata:\n      labels: {app: d}\n    spec:\n      containers:\n      - name: c\n        image: x\n", &["type.yaml", "document 2", "spec.replicas"]),
        ("label.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels:\n    \"bad key!\": x\n", &["label.yaml", "document 2", "metadata.labels"]),
        ("selector.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  selector:\n    matchExpressions:\n    - {key: app, operator: Within, values: [d]}\n  template:\n    metadata:\n      labels: {app: d}\n    spec:\n      containers:\n      - name: c\n        image: x\n", &["selector.yaml", "document 2", "spec.selector.matchExpressions[0].operator"]),
        ("noname.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n", &["noname.yaml", "document 2", "metadata.name"]),
        ("broken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n", &["broken.yaml", "document 2"]),
    ];
    for (file, bad, expect) in cases {
        let path = write(dir.path(), file, &format!("{good}---\n{bad}"));
        let out = server.berth(&["apply", "-f", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} must be rejected");
        for e in *expect {
            assert!(stderr.contains(e), "{file}: error {stderr:?} should name {e:?}");
        }
        assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    }
    // Nothing of a rejected file was stored, not even its valid documents.
    let listed = server.berth(&["get", "configmaps", "-o", "json"]);
    assert_eq!(json(&String::from_utf8_lossy(&listed.stdout))["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn api_rejects_bad_requests_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = common::api_http(dir.path()).build().unwrap();
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url);

    let no_token = http.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    let token = server.token();
    let garbage = http.post(&url).bearer_auth(&token).body("{not json").send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    let body: Value = garbage.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("JSON"), "{body}");

    let invalid = http
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("metadata.name"), "{body}");

    // Oversized body: the server answers 413 from the declared length, before reading the body.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Raw bytes need plain HTTP: a second server with --plain-http (loopback), same API.
        let plain_dir = tempfile::tempdir().unwrap();
        let plain = Server::start(plain_dir.path(), &["--plain-http"]);
        let token = plain.token();
        let addr = plain.url.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            4 * 1024 * 1024
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&[b' '; 4096]).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(30), conn.read(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    // Stale resourceVersion: 409.
    let created = http
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm"},"data":{"a":"1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let mut update = created.clone();
    update["data"]["a"] = "2".into();
    let ok = http.put(format!("{url}/cm")).bearer_auth(&token).json(&update).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let stale = http.put(format!("{url}/cm")).bearer_auth(&token).json(&update).send().await.unwrap();
    assert_eq!(stale.status(), 409);

    let health = http.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server is still up");
    let metrics = http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("berth_api_requests_total{method=\"POST\",code=\"400\"}"), "{metrics}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `berth get ... | head -1`: the reader is gone before berth prints. Unix tools die of SIGPIPE without a
    // word; a Rust println! would panic on EPIPE instead.
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.ok(&["apply", "-f", repo().join("config/k8s").to_str().unwrap()]);
    for args in [&["get", "deployments", "-A"][..], &["get", "services", "-A", "-o", "yaml"][..]] {
        let mut child = common::berth_command(dir.path(), args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "berth {args:?} panicked on a closed pipe: {stderr}");
        assert!(out.status.success() || out.status.signal() == Some(13), "berth {args:?}: {:?} {stderr}", out.status);
    }
}

#[test]
fn services_show_a_cluster_ip_from_the_service_range_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bad = common::berth_with_data_dir(
        dir.path(),
        &["server", "--api-listen", "127.0.0.1:0", "--service-cidr", "10.0.0.0/12"],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--service-cidr") && err.contains("127.0.0.0/8"), "{err}");

    let server = Server::start(dir.path(), &["--service-cidr", "127.99.0.0/16"]);
    let manifest = dir.path().join("svc.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata: {name: kv}\nspec:\n  selector: {app: kv}\n  ports: [{port: 7000}]\n",
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let table = server.ok(&["get", "svc", "kv"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let at = header.iter().position(|h| *h == "CLUSTER-IP").expect("a CLUSTER-IP column");
    let ip = row[at].to_string();
    assert!(ip.starts_with("127.99."), "{table}");
    assert!(server.ok(&["describe", "svc", "kv"]).contains(&format!("ClusterIP:        {ip}")));
    drop(server);

    let server = Server::start(dir.path(), &["--service-cidr", "127.99.0.0/16"]);
    let again = server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(again.trim_end().ends_with(" unchanged"), "{again}");
    let kv = json(&server.ok(&["get", "svc", "kv", "-o", "json"]));
    assert_eq!(kv["spec"]["clusterIP"], ip.as_str());
    assert_eq!(server.berth(&["diff", "-f", manifest.to_str().unwrap()]).status.code(), Some(0));
}
