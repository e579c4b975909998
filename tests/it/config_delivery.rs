//! ConfigMaps and Secrets end to end with `berth up` (process runtime, `berth echo` pods): a pod sees a
//! ConfigMap value as env and as a file and a Secret as a file (mode 0600); changing the ConfigMap rolls a
//! Deployment annotated `berth.dev/rollout-on-config-change` to pods that see the new value; the Secret is
//! sealed in the redb file, hidden by `get -o yaml` and `describe`, and read back after a restart.

use crate::common::{wait_for, Up};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "s3cr3t-pass-9f2c";

fn manifest(greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  greeting: {greeting}
---
apiVersion: v1
kind: Secret
metadata:
  name: db
stringData:
  password: {PASSWORD}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cfg
  annotations:
    berth.dev/rollout-on-config-change: "true"
spec:
  replicas: 1
  selector:
    matchLabels:
      app: cfg
  strategy:
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app: cfg
    spec:
      terminationGracePeriodSeconds: 2
      volumes:
        - name: settings
          configMap:
            name: settings
        - name: creds
          secret:
            secretName: db
            items:
              - key: password
                path: db/password
      containers:
        - name: echo
          command: ["berth", "echo"]
          ports:
            - name: http
              containerPort: 8080
          env:
            - name: GREETING
              valueFrom:
                configMapKeyRef:
                  name: settings
                  key: greeting
          volumeMounts:
            - name: settings
              mountPath: /etc/settings
            - name: creds
              mountPath: /run/creds
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 1
"#
    )
}

fn get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    get_via(test_support::http(), url, token)
}

fn get_via(builder: reqwest::ClientBuilder, url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = builder.timeout(Duration::from_secs(5)).build().ok()?;
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.ok()?))
    })
}

/// Host ports of the Deployment's running, ready, not terminating pods.
fn ready_ports(up: &Up) -> Vec<u16> {
    let out = up.berth(&["get", "pods", "-l", "app=cfg", "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .filter(|p| p["status"]["containerStatuses"][0]["ready"] == Value::Bool(true))
                .filter_map(|p| p["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64())
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default()
}

fn echo(port: u16, path: &str) -> String {
    match get(&format!("http://127.0.0.1:{port}{path}"), None) {
        Some((200, body)) => body,
        other => panic!("GET {path} on port {port}: {other:?}"),
    }
}

#[test]
fn config_maps_and_secrets_reach_pods_roll_deployments_and_stay_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let files = tempfile::tempdir().unwrap();
    let up = Up::start(data, &[]);

    let m1 = files.path().join("v1.yaml");
    std::fs::write(&m1, manifest("hello")).unwrap();
    up.ok(&["apply", "-f", m1.to_str().unwrap()]);
    wait_for("one ready cfg pod", Duration::from_secs(90), || ready_ports(&up).len() == 1);
    let port = ready_ports(&up)[0];
    assert_eq!(echo(port, "/env/GREETING"), "hello", "ConfigMap value as env");
    assert_eq!(echo(port, "/file?path=/etc/settings/greeting"), "hello", "ConfigMap value as a file");
    assert_eq!(echo(port, "/file?path=/run/creds/db/password"), PASSWORD, "Secret as a file (items key->path)");
    // The process runtime maps mount paths below $BERTH_ROOT; the Secret file is owner-only.
    let root = echo(port, "/env/BERTH_ROOT");
    assert_eq!(echo(port, "/env/BERTH_MOUNT_CREDS"), format!("{root}/run/creds"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Path::new(&root).join("run/creds/db/password")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "Secret files default to 0600");
        let mode = std::fs::metadata(Path::new(&root).join("etc/settings/greeting")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "ConfigMap files default to 0644");
    }

    // The CLI never prints the value, nor its base64.
    let b64 = "czNjcjN0LXBhc3MtOWYyYw==";
    let yaml = up.ok(&["get", "secret", "db", "-o", "yaml"]);
    assert!(!yaml.contains(PASSWORD) && !yaml.contains(b64) && yaml.contains("password"), "{yaml}");
    let described = up.ok(&["describe", "secret", "db"]);
    assert!(!described.contains(PASSWORD) && !described.contains(b64), "{described}");
    assert!(described.contains("password: <16 bytes>"), "describe shows keys and sizes: {described}");
    // The key file is owner-only; the redb file holds no plaintext.
    {
        use std::os::unix::fs::PermissionsExt;
        let key = data.join("secret-encryption.key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let redb = std::fs::read(data.join("store.redb")).unwrap();
    let contains = |needle: &str| redb.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(PASSWORD) && !contains(b64), "plaintext Secret in store.redb");
    assert!(contains("encryptedData"), "the sealed Secret is in store.redb");

    // Changing the ConfigMap rolls the Deployment to pods that see the new value.
    let m2 = files.path().join("v2.yaml");
    std::fs::write(&m2, manifest("bonjour")).unwrap();
    up.ok(&["apply", "-f", m2.to_str().unwrap()]);
    wait_for("a rolled pod that sees the new value", Duration::from_secs(90), || {
        let ports = ready_ports(&up);
        ports.len() == 1
            && ports[0] != port
            && get(&format!("http://127.0.0.1:{}/env/GREETING", ports[0]), None)
                .is_some_and(|(code, body)| code == 200 && body == "bonjour")
    });
    let new_port = ready_ports(&up)[0];
    assert_eq!(echo(new_port, "/file?path=/etc/settings/greeting"), "bonjour");
    let history = up.ok(&["get", "deployment", "cfg", "-o", "json"]);
    let d: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");

    // Restart: the Secret is read back (decrypted) through the API.
    drop(up);
    let _up = Up::start(data, &[]);
    let url = std::fs::read_to_string(data.join("api-address")).unwrap().trim().to_string();
    let token = std::fs::read_to_string(data.join("token")).unwrap().trim().to_string();
    let (code, body) =
        get_via(crate::common::api_http(data), &format!("{url}/api/v1/namespaces/default/secrets/db"), Some(&token))
            .expect("API answers");
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["data"]["password"], b64, "decrypted after restart");
    assert!(s.get("encryptedData").is_none());
    let (code, _) =
        get_via(crate::common::api_http(data), &format!("{url}/api/v1/namespaces/default/secrets/db"), None)
            .expect("API answers");
    assert_eq!(code, 401, "only authenticated clients read Secrets");
}
