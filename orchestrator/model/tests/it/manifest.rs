//! Manifest parsing and validation: table-driven accept/reject cases with the expected error text (source,
//! document, field path), every file under `config/`, the normalize round trip, and the conversions to the
//! data plane's types.

use model::{self, manifest, Kind, ManifestErrorKind};
use serde_json::json;
use std::path::{Path, PathBuf};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: echo
          command: ["berth", "echo"]
          ports:
            - {name: http, containerPort: 8080}
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: "1", memory: 128Mi}
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
"#;

const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n";

fn edit(find: &str, replace: &str) -> String {
    assert!(DEPLOYMENT.contains(find), "test bug: {find:?} not in the base deployment");
    DEPLOYMENT.replacen(find, replace, 1)
}

fn reject(source: &str) -> (String, ManifestErrorKind) {
    match manifest::parse("web.yaml", source) {
        Ok(docs) => panic!("accepted, expected an error: {docs:#?}\n{source}"),
        Err(e) => (e.to_string(), e.kind),
    }
}

#[test]
fn base_deployment_is_valid() {
    let docs = manifest::parse("web.yaml", DEPLOYMENT).unwrap();
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!((d.kind, d.namespace.as_str(), d.name.as_str(), d.index), (Kind::Deployment, "default", "web", 1));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn rejections_name_file_document_and_path() {
    use ManifestErrorKind::*;
    let two_docs = |doc: String| format!("{CONFIGMAP}---\n{doc}");
    let cases: Vec<(&str, String, ManifestErrorKind, &str)> = vec![
        (
            "unknown field",
            two_docs(edit("- {name: http, containerPort: 8080}", "- {name: http, containerPort: 8080}\n          portz: 1")),
            UnknownField,
            "web.yaml: document 2: spec.template.spec.containers[0].portz: unknown field",
        ),
        ("unknown top-level field", edit("kind: Deployment", "kind: Deployment\nspecc: {}"), UnknownField, "document 1: specc: unknown field"),
        (
            "wrong type",
            edit("replicas: 2", "replicas: three"),
            InvalidType,
            "web.yaml: document 1: spec.replicas: invalid type: string \"three\", expected i32",
        ),
        ("wrong type (list for map)", edit("labels: {app: web}\nspec", "labels: [app]\nspec"), InvalidType, "metadata.labels: invalid type: sequence"),
        ("invalid label value", edit("labels: {app: web}\nspec", "labels: {app: \"-web\"}\nspec"), InvalidValue, "document 1: metadata.labels: invalid label value \"-web\""),
        ("invalid label key", edit("labels: {app: web}\n    spec", "labels: {app: web, \"a b\": x}\n    spec"), InvalidValue, "spec.template.metadata.labels: invalid label key \"a b\""),
        (
            "invalid selector operator",
            edit("matchLabels: {app: web}\n  template", "matchLabels: {app: web}\n    matchExpressions: [{key: tier, operator: Like, values: [a]}]\n  template"),
            InvalidValue,
            "spec.selector.matchExpressions[0].operator: unknown variant `Like`",
        ),
        (
            "invalid selector values",
            edit("matchLabels: {app: web}\n  template", "matchLabels: {app: web}\n    matchExpressions: [{key: tier, operator: In}]\n  template"),
            InvalidValue,
            "spec.selector.matchExpressions[0].values: must be non-empty when operator is In",
        ),
        (
            "selector with values for Exists",
            edit("matchLabels: {app: web}\n  template", "matchLabels: {app: web}\n    matchExpressions: [{key: tier, operator: Exists, values: [x]}]\n  template"),
            InvalidValue,
            "spec.selector.matchExpressions[0].values: must be empty when operator is Exists",
        ),
        ("selector not matching template", edit("labels: {app: web}\n    spec", "labels: {app: api}\n    spec"), InvalidValue, "spec.template.metadata.labels: do not match spec.selector (app=web)"),
        ("missing name", edit("name: web\n", ""), MissingField, "web.yaml: document 1: metadata.name: required"),
        ("invalid name", edit("name: web\n", "name: Web_1\n"), InvalidValue, "metadata.name: \"Web_1\" must consist of lowercase"),
        ("missing template", edit("  template:", "  templat:"), UnknownField, "spec.templat: unknown field"),
        (
            "missing required nested field",
            edit("- {name: http, containerPort: 8080}", "- {name: http}"),
            MissingField,
            "spec.template.spec.containers[0].ports[0].containerPort: required",
        ),
        ("malformed yaml", two_docs("apiVersion: v1\nkind: [Pod\nmetadata: {}\n".into()), Syntax, "web.yaml: document 2: line "),
        ("duplicate yaml key", "apiVersion: v1\nkind: ConfigMap\nkind: ConfigMap\nmetadata: {name: x}\n".into(), Syntax, "web.yaml: document 1: line 1 column 1: duplicate entry with key \"kind\""),
        ("unknown kind", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\n".into(), UnknownKind, "document 1: kind: unknown kind \"StatefulSet\""),
        ("unknown apiVersion", "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: x}\n".into(), UnknownKind, "apiVersion: Ingress is served as apiVersion \"networking.k8s.io/v1\", not \"extensions/v1beta1\""),
        ("missing kind", "apiVersion: v1\nmetadata: {name: x}\n".into(), MissingField, "document 1: kind: required"),
        ("not an object", "- a\n- b\n".into(), NotAnObject, "document 1: expected an object"),
        ("negative replicas", edit("replicas: 2", "replicas: -1"), InvalidValue, "spec.replicas: must be >= 0 (got -1)"),
        ("port 0", edit("containerPort: 8080", "containerPort: 0"), InvalidValue, "spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535 (got 0)"),
        ("port too large", edit("containerPort: 8080", "containerPort: 70000"), InvalidValue, "ports[0].containerPort: must be between 1 and 65535 (got 70000)"),
        (
            "maxSurge and maxUnavailable both 0",
            edit("  template:", "  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: \"0%\"}\n  template:"),
            InvalidValue,
            "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0",
        ),
        (
            "bad percentage",
            edit("  template:", "  strategy:\n    rollingUpdate: {maxSurge: 25 percent}\n  template:"),
            InvalidValue,
            "spec.strategy.rollingUpdate.maxSurge: \"25 percent\" must be an integer or a percentage",
        ),
        (
            "rollingUpdate with Recreate",
            edit("  template:", "  strategy:\n    type: Recreate\n    rollingUpdate: {maxSurge: 1}\n  template:"),
            InvalidValue,
            "spec.strategy.rollingUpdate: must not be set when strategy type is Recreate",
        ),
        ("negative probe period", edit("periodSeconds: 5", "periodSeconds: -5"), InvalidValue, "spec.template.spec.containers[0].livenessProbe.periodSeconds: must be >= 1 (got -5)"),
        ("probe on unknown port name", edit("port: http}", "port: admin}"), InvalidValue, "livenessProbe.httpGet.port: no container port named \"admin\""),
        (
            "probe with two handlers",
            edit("periodSeconds: 5", "periodSeconds: 5\n            exec: {command: [\"true\"]}"),
            InvalidValue,
            "spec.template.spec.containers[0].livenessProbe: exactly one of httpGet, tcpSocket, exec must be set",
        ),
        (
            "duplicate container names",
            edit("      containers:\n", "      containers:\n        - {name: echo, command: [sleep]}\n"),
            InvalidValue,
            "spec.template.spec.containers[1].name: duplicate container name \"echo\"",
        ),
        (
            "duplicate ports",
            edit("- {name: http, containerPort: 8080}", "- {name: http, containerPort: 8080}\n            - {name: http2, containerPort: 8080}"),
            InvalidValue,
            "spec.template.spec.containers[0].ports[1].containerPort: duplicate port 8080/Tcp",
        ),
        ("request above limit", edit("cpu: 100m", "cpu: \"2\""), InvalidValue, "spec.template.spec.containers[0].resources.requests.cpu: request 2 must not exceed limit 1"),
        ("bad quantity", edit("memory: 64Mi", "memory: 64MB"), InvalidValue, "resources.requests.memory: invalid quantity \"64MB\": unknown suffix"),
        ("negative quantity", edit("memory: 64Mi", "memory: -64Mi"), InvalidValue, "invalid quantity \"-64Mi\": must not be negative"),
        ("no image or command", edit("command: [\"berth\", \"echo\"]", "args: [x]"), InvalidValue, "spec.template.spec.containers[0]: needs an image or a command"),
        ("initContainers refused", edit("      containers:\n", "      initContainers: []\n      containers:\n"), InvalidValue, "spec.template.spec.initContainers: not supported by Berth"),
        ("restartPolicy in deployment", edit("      containers:\n", "      restartPolicy: Never\n      containers:\n"), InvalidValue, "spec.template.spec.restartPolicy: must be Always"),
        (
            "node affinity Gt needs one integer",
            edit(
                "      containers:\n",
                "      affinity:\n        nodeAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            nodeSelectorTerms:\n              - matchExpressions: [{key: cores, operator: Gt, values: [many]}]\n      containers:\n",
            ),
            InvalidValue,
            "nodeSelectorTerms[0].matchExpressions[0].values: must hold exactly one integer when operator is Gt",
        ),
        (
            "anti-affinity without topologyKey",
            edit(
                "      containers:\n",
                "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n            - labelSelector: {matchLabels: {app: web}}\n              topologyKey: \"\"\n      containers:\n",
            ),
            InvalidValue,
            "spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: must not be empty",
        ),
        (
            "spread maxSkew 0",
            edit("      containers:\n", "      topologySpreadConstraints:\n        - {maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}\n      containers:\n"),
            InvalidValue,
            "spec.template.spec.topologySpreadConstraints[0].maxSkew: must be >= 1 (got 0)",
        ),
        (
            "toleration Exists with value",
            edit("      containers:\n", "      tolerations: [{key: k, operator: Exists, value: v}]\n      containers:\n"),
            InvalidValue,
            "spec.template.spec.tolerations[0].value: must be empty when operator is Exists",
        ),
        (
            "env value and valueFrom",
            edit("          ports:\n", "          env: [{name: A, value: x, valueFrom: {configMapKeyRef: {name: c, key: k}}}]\n          ports:\n"),
            InvalidValue,
            "spec.template.spec.containers[0].env[0]: value and valueFrom are mutually exclusive",
        ),
        (
            "minReplicas > maxReplicas",
            "apiVersion: berth.dev/v1\nkind: Autoscaler\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {kind: Deployment, name: web}\n  minReplicas: 5\n  maxReplicas: 2\n  metrics: [{requestsPerSecond: {targetPerReplica: 10}}]\n".into(),
            InvalidValue,
            "spec.minReplicas: must not exceed maxReplicas (5 > 2)",
        ),
        (
            "autoscaler metric with two sources",
            "apiVersion: berth.dev/v1\nkind: Autoscaler\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 2\n  metrics: [{requestsPerSecond: {targetPerReplica: 10}, concurrency: {targetPerReplica: 1}}]\n".into(),
            InvalidValue,
            "spec.metrics[0]: exactly one of requestsPerSecond",
        ),
        (
            "hpa unknown metric",
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 3\n  metrics:\n    - type: Pods\n      pods: {metric: {name: queue_depth}, target: {type: AverageValue, averageValue: \"5\"}}\n".into(),
            InvalidValue,
            "spec.metrics[0].pods.metric.name: unknown metric \"queue_depth\"",
        ),
        (
            "service port 0",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 0}]\n".into(),
            InvalidValue,
            "document 1: spec.ports[0].port: must be between 1 and 65535 (got 0)",
        ),
        (
            "service name not DNS-1035",
            "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n".into(),
            InvalidValue,
            "metadata.name: \"1web\" must start with a lowercase letter",
        ),
        (
            "consistent hash without source",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n  loadBalancing: {policy: consistentHash}\n".into(),
            InvalidValue,
            "spec.loadBalancing.hashOn: required when policy is consistentHash",
        ),
        (
            "unknown balancing policy",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n  loadBalancing: {policy: random}\n".into(),
            InvalidValue,
            "spec.loadBalancing.policy: unknown variant `random`",
        ),
        (
            "ingress unknown field",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules:\n    - host: a.example.com\n      http:\n        paths:\n          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {numbr: 80}}}}\n".into(),
            UnknownField,
            "spec.rules[0].http.paths[0].backend.service.port.numbr: unknown field",
        ),
        (
            "ingress bad pathType",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules:\n    - http:\n        paths:\n          - {path: /, pathType: Regex, backend: {service: {name: web, port: {number: 80}}}}\n".into(),
            InvalidValue,
            "spec.rules[0].http.paths[0].pathType: unknown variant `Regex`",
        ),
        (
            "route path without slash",
            "apiVersion: berth.dev/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  rules: [{path: {prefix: api}, backend: {service: web}}]\n".into(),
            InvalidValue,
            "spec.rules[0].path.prefix: \"api\" must start with '/'",
        ),
        (
            "route bad host",
            "apiVersion: berth.dev/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [\"Web Site\"]\n  rules: [{backend: {service: web}}]\n".into(),
            InvalidValue,
            "spec.hosts[0]: \"Web Site\" must be a lowercase DNS name",
        ),
        (
            "secret not base64",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: \"not base64!\"}\n".into(),
            InvalidValue,
            "data.token: value is not valid base64",
        ),
        (
            "secret wrong type does not echo the value",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: 123456}\n".into(),
            InvalidType,
            "data.token: invalid value (not shown)",
        ),
        (
            "bad namespace",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: Prod}\n".into(),
            InvalidValue,
            "metadata.namespace: \"Prod\" must consist",
        ),
    ];
    let mut failures = Vec::new();
    for (name, source, kind, want) in &cases {
        let (got, got_kind) = reject(source);
        if !got.contains(want) || got_kind != *kind {
            failures.push(format!("{name}:\n   want {kind:?} {want:?}\n    got {got_kind:?} {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn secret_values_never_appear_in_errors() {
    let src = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: \"hunter2!!\"}\n";
    let e = manifest::parse("s.yaml", src).unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn known_but_unimplemented_fields_warn_with_their_path() {
    let src = edit("command: [\"berth\", \"echo\"]", "command: [\"berth\", \"echo\"]\n          imagePullPolicy: Always\n          securityContext: {runAsUser: 1000}")
        .replace("      containers:\n", "      serviceAccountName: web\n      dnsPolicy: ClusterFirst\n      containers:\n");
    let docs = manifest::parse("web.yaml", &src).unwrap();
    let w = &docs[0].warnings;
    for want in [
        "spec.template.spec.containers[0].imagePullPolicy: accepted but ignored",
        "spec.template.spec.containers[0].securityContext: accepted but ignored",
        "spec.template.spec.serviceAccountName: accepted but ignored",
        "spec.template.spec.dnsPolicy: accepted but ignored",
    ] {
        assert!(w.iter().any(|x| x.starts_with(want)), "missing warning {want:?} in {w:#?}");
    }
    // Kept in the stored object, so `get -o yaml` shows what the user wrote.
    assert_eq!(docs[0].object["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
}

#[test]
fn status_in_a_manifest_is_ignored_but_checked_in_api_bodies() {
    let src = format!("{DEPLOYMENT}status:\n  replicas: lots\n  whatever: true\n");
    let docs = manifest::parse("web.yaml", &src).unwrap();
    assert!(docs[0].object.get("status").is_none());

    let mut body = docs[0].object.clone();
    body["status"] = json!({"replicas": 2, "readyReplicas": 1, "observedGeneration": 3});
    let d = model::decode(Some(Kind::Deployment), body.clone()).unwrap();
    assert_eq!(d.object["status"]["readyReplicas"], 1);

    body["status"] = json!({"replicas": 2, "whatever": 1});
    let e = model::decode(Some(Kind::Deployment), body).unwrap_err();
    assert_eq!(e.to_string(), "request body: status.whatever: unknown field");
}

#[test]
fn decode_checks_the_kind_and_fills_type_meta() {
    let docs = manifest::parse("c.yaml", CONFIGMAP).unwrap();
    let e = model::decode(Some(Kind::Pod), docs[0].object.clone()).unwrap_err();
    assert_eq!(e.kind, ManifestErrorKind::KindMismatch);
    assert_eq!(e.to_string(), "request body: kind: expected Pod, got ConfigMap");

    let d = model::decode(Some(Kind::ConfigMap), json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    assert_eq!(d.object["apiVersion"], "v1");
    assert_eq!(d.object["kind"], "ConfigMap");
    assert_eq!(d.object["metadata"]["namespace"], "default");

    let e = model::decode(None, json!("garbage")).unwrap_err();
    assert_eq!(e.kind, ManifestErrorKind::NotAnObject);
}

#[test]
fn pod_status_round_trips_through_decode() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "prod", "resourceVersion": "42",
                     "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "command": ["berth", "echo"],
                  "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
            "startTime": "2026-01-02T03:04:06Z",
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2,
                "state": {"running": {"startedAt": "2026-01-02T03:04:07Z"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                "ports": [{"name": "http", "containerPort": 8080, "hostPort": 40123}]}]
        }
    });
    let d = model::decode(Some(Kind::Pod), pod).unwrap();
    assert_eq!(d.namespace, "prod");
    let again = model::decode(Some(Kind::Pod), d.object.clone()).unwrap();
    assert_eq!(again.object, d.object);
    let typed: model::Pod = d.typed().unwrap();
    assert!(typed.is_ready());
    assert_eq!(typed.metadata.revision(), Some(42));
    let cs = &typed.status.as_ref().unwrap().container_statuses[0];
    assert_eq!(cs.ports[0].host_port, 40123);
    assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("OOMKilled"));
}

#[test]
fn defaults_are_filled_in() {
    let src = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n        - name: c\n          image: nginx\n          resources: {limits: {memory: 1Gi}}\n          readinessProbe: {tcpSocket: {port: 80}}\n";
    let d: model::Deployment = manifest::parse("d.yaml", src).unwrap()[0].typed().unwrap();
    assert_eq!(d.spec.replicas, 1);
    assert_eq!(d.spec.progress_deadline_seconds, 600);
    assert_eq!(d.spec.revision_history_limit, 10);
    let ru = d.spec.strategy.rolling_update.clone().unwrap();
    assert_eq!(ru.resolve(10), (3, 2));
    let pod = &d.spec.template.spec;
    assert_eq!(pod.restart_policy, model::RestartPolicy::Always);
    assert_eq!(pod.termination_grace_period_seconds, 30);
    let probe = pod.containers[0].readiness_probe.clone().unwrap();
    assert_eq!(
        (probe.period_seconds, probe.timeout_seconds, probe.success_threshold, probe.failure_threshold),
        (10, 1, 1, 3)
    );
    // A limit without a request requests the limit.
    assert_eq!(pod.containers[0].resources.requests["memory"].as_str(), "1Gi");
    assert_eq!(pod.total_requests(), model::Resources { cpu_millis: 0, memory_bytes: 1 << 30, pods: 1 });
}

#[test]
fn total_requests_sums_containers() {
    let src = edit("      containers:\n", "      containers:\n        - {name: side, command: [sleep], resources: {requests: {cpu: \"0.5\", memory: 1e3}}}\n");
    let d: model::Deployment = manifest::parse("d.yaml", &src).unwrap()[0].typed().unwrap();
    let r = d.spec.template.spec.total_requests();
    assert_eq!(r, model::Resources { cpu_millis: 600, memory_bytes: 64 * 1024 * 1024 + 1000, pods: 1 });
}

#[test]
fn json_sources_and_lists() {
    let src = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}"#;
    let docs = manifest::parse("cm.json", src).unwrap();
    assert_eq!(docs.iter().map(|d| (d.index, d.name.as_str())).collect::<Vec<_>>(), vec![(1, "a"), (2, "b")]);

    let list = r#"{"items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
                             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "labels": {"x": "-"}}}]}"#;
    let e = manifest::parse("list.json", list).unwrap_err();
    assert_eq!(e.to_string(), "list.json: document 1: items[1].metadata.labels: invalid label value \"-\": must start and end with an alphanumeric character");

    let e = manifest::parse("bad.json", "{\"apiVersion\": \"v1\",\n \"kind\": }").unwrap_err();
    assert_eq!(e.kind, ManifestErrorKind::Syntax);
    assert!(e.to_string().starts_with("bad.json: document 1: line 2 column"), "{e}");

    let yaml_list = "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n";
    assert_eq!(manifest::parse("l.yaml", yaml_list).unwrap().len(), 1);

    // Empty documents are skipped but still counted.
    let docs = manifest::parse("e.yaml", &format!("---\n---\n{CONFIGMAP}")).unwrap();
    assert_eq!(docs.len(), 1);
}

#[test]
fn ingress_becomes_a_route() {
    let src = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: nginx
  defaultBackend: {service: {name: fallback, port: {number: 8080}}}
  tls: [{hosts: [a.example.com], secretName: a-tls}]
  rules:
    - host: a.example.com
      http:
        paths:
          - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
          - {path: /, pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 80}}}}
    - host: b.example.com
      http:
        paths:
          - {path: /exact, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
"#;
    let docs = manifest::parse("ing.yaml", src).unwrap();
    let d = &docs[0];
    assert_eq!((d.kind, d.name.as_str(), d.namespace.as_str()), (Kind::Route, "shop", "shop"));
    assert_eq!(d.object["apiVersion"], "berth.dev/v1");
    assert_eq!(d.object["kind"], "Route");
    assert!(
        d.warnings.iter().any(|w| w.starts_with("spec.ingressClassName: accepted but ignored")),
        "{:?}",
        d.warnings
    );
    assert!(d.warnings.iter().any(|w| w.contains("ImplementationSpecific is read as Prefix")));

    let route: model::Route = d.typed().unwrap();
    let routes = route.to_discovery();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].name, "shop#0");
    assert_eq!(routes[0].hosts, vec!["a.example.com".to_string()]);
    assert_eq!(routes[0].rules.len(), 2);
    assert_eq!(routes[0].rules[0].path, Some(discovery::PathMatch::Prefix("/api".into())));
    assert_eq!(routes[0].rules[0].backend.port, Some(discovery::TargetPort::Name("http".into())));
    assert_eq!(routes[0].tls.len(), 1);
    assert_eq!(routes[1].hosts, vec!["b.example.com".to_string()]);
    assert_eq!(routes[1].rules[0].path, Some(discovery::PathMatch::Exact("/exact".into())));
    assert!(routes[1].tls.is_empty());
    assert_eq!(routes[1].default_backend.as_ref().unwrap().service, "fallback");
}

#[test]
fn berth_route_converts_to_one_discovery_route() {
    let src = r#"
apiVersion: berth.dev/v1
kind: Route
metadata: {name: web}
spec:
  hosts: [web.localhost, "*.web.localhost"]
  rules:
    - path: {prefix: /api}
      methods: [GET, POST]
      headers: [{name: x-canary, value: "1"}, {name: x-user}]
      backend: {service: api, port: 8080}
      rewrite: {prefix: /}
      requestHeaders: {add: [{name: x-from, value: berth}], remove: [cookie]}
      rateLimit: {requestsPerSecond: 100}
    - backend: {service: web}
"#;
    let route: model::Route = manifest::parse("r.yaml", src).unwrap()[0].typed().unwrap();
    let r = route.to_discovery();
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!((r.name.as_str(), r.namespace.as_str()), ("web", "default"));
    let rule = &r.rules[0];
    assert_eq!(rule.methods, vec!["GET", "POST"]);
    assert_eq!(rule.headers[1], discovery::HeaderMatch { name: "x-user".into(), value: None });
    assert_eq!(rule.backend.port, Some(discovery::TargetPort::Number(8080)));
    assert_eq!(rule.rewrite_prefix.as_deref(), Some("/"));
    assert_eq!(rule.add_request_headers, vec![("x-from".to_string(), "berth".to_string())]);
    assert_eq!(rule.remove_request_headers, vec!["cookie"]);
    assert_eq!(rule.rate_limit_rps, Some(100));
    assert_eq!(r.rules[1].path, None);
}

#[test]
fn service_converts_to_discovery() {
    let src = r#"
apiVersion: v1
kind: Service
metadata: {name: web, labels: {team: a}}
spec:
  selector: {app: web}
  clusterIP: 10.0.0.10
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: admin, port: 9000}
  loadBalancing: {policy: consistentHash, hashOn: {header: x-user}}
  healthCheck: {path: /healthz, intervalMs: 500}
  retry: {onStatuses: [502, 503, 504]}
"#;
    let svc: model::Service = manifest::parse("s.yaml", src).unwrap()[0].typed().unwrap();
    let d = svc.to_discovery();
    assert_eq!(d.retry_on_statuses, vec![502, 503, 504]);
    assert_eq!(d.selector.to_string(), "app=web");
    assert!(d.selector.matches(&[("app".to_string(), "web".to_string())].into()));
    assert_eq!(d.ports[0].target_port, discovery::TargetPort::Name("http".into()));
    assert_eq!(d.ports[1].target_port, discovery::TargetPort::Number(9000));
    assert_eq!(
        d.balance,
        discovery::BalancePolicy::ConsistentHash { hash_on: discovery::HashOn::Header("x-user".into()) }
    );
    // The clusterIP is not announced by DNS until a proxy serves it.
    assert_eq!(d.virtual_ip, None);
    let hc = d.health_check.unwrap();
    assert_eq!((hc.http_path.as_deref(), hc.interval_ms, hc.timeout_ms), (Some("/healthz"), 500, 1000));

    // A retry status that is not an error status is refused, naming the field.
    let bad = src.replace("[502, 503, 504]", "[503, 200]");
    let err = manifest::parse("s.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("spec.retry.onStatuses[1]") && err.contains("200"), "{err}");

    // Headless, no selector: matches no endpoint (rather than every endpoint).
    let src = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n";
    let doc = &manifest::parse("s.yaml", src).unwrap()[0];
    assert!(doc.warnings.iter().any(|w| w.contains("no endpoints")));
    let svc: model::Service = doc.typed().unwrap();
    assert!(svc.is_headless());
    let d = svc.to_discovery();
    assert!(!d.selector.matches(&Default::default()));
    assert!(!d.selector.matches(&[("berth.dev/no-selector".to_string(), String::new())].into()));
    assert_eq!(d.virtual_ip, None);
}

#[test]
fn hpa_becomes_an_autoscaler() {
    let src = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
    - type: Resource
      resource: {name: memory, target: {type: Utilization, averageUtilization: 70}}
    - type: Pods
      pods: {metric: {name: http_requests_per_second}, target: {type: AverageValue, averageValue: 500m}}
    - type: Object
      object:
        describedObject: {apiVersion: v1, kind: Service, name: web}
        metric: {name: requests_in_flight}
        target: {type: AverageValue, averageValue: "8"}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 5
    scaleDown:
      policies: [{type: Pods, value: 1, periodSeconds: 30}]
"#;
    let doc = &manifest::parse("hpa.yaml", src).unwrap()[0];
    assert_eq!(doc.kind, Kind::Autoscaler);
    assert!(doc.warnings.iter().any(|w| w.starts_with("spec.metrics[1].resource.name:")), "{:?}", doc.warnings);
    let a: model::Autoscaler = doc.typed().unwrap();
    assert_eq!((a.spec.min_replicas, a.spec.max_replicas), (2, 10));
    let targets: Vec<_> = a.spec.metrics.iter().map(|m| m.target().unwrap()).collect();
    assert_eq!(
        targets,
        vec![
            (model::MetricName::Cpu, 70.0),
            (model::MetricName::RequestsPerSecond, 0.5),
            (model::MetricName::Concurrency, 8.0)
        ]
    );
    assert_eq!(a.spec.behavior.scale_up.stabilization_window_seconds, 5);
    assert_eq!(a.spec.behavior.scale_up.policies.len(), 2, "defaults kept for unspecified parts");
    assert_eq!(a.spec.behavior.scale_down.stabilization_window_seconds, 300);
    assert_eq!(a.spec.behavior.scale_down.policies[0].value, 1);
    assert_eq!(a.spec.behavior.scale_down.tolerance, 0.1);

    // No metrics: Kubernetes' default, CPU at 80%.
    let src = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: w}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: w}\n  maxReplicas: 3\n";
    let a: model::Autoscaler = manifest::parse("h.yaml", src).unwrap()[0].typed().unwrap();
    assert_eq!(a.spec.metrics[0].target(), Some((model::MetricName::Cpu, 80.0)));
}

#[test]
fn scale_to_zero_is_allowed_with_a_request_metric() {
    let src = "apiVersion: berth.dev/v1\nkind: Autoscaler\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {kind: Deployment, name: web}\n  minReplicas: 0\n  maxReplicas: 4\n  metrics: [{concurrency: {targetPerReplica: 4}}]\n";
    let a: model::Autoscaler = manifest::parse("a.yaml", src).unwrap()[0].typed().unwrap();
    assert_eq!(a.spec.min_replicas, 0);
    assert_eq!(a.spec.scale_target_ref.api_version, "apps/v1");
}

#[test]
fn secret_string_data_is_folded_into_data() {
    let wrapped = "apiVersion: v1\nkind: Secret\nmetadata: {name: w}\ndata:\n  a: |\n    aGVs\n    bG8=\n";
    let w: model::Secret = manifest::parse("w.yaml", wrapped).unwrap()[0].typed().unwrap();
    assert_eq!(w.get("a").unwrap(), b"hello");
    let src = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: YQ==}\nstringData: {b: hello}\n";
    let doc = &manifest::parse("s.yaml", src).unwrap()[0];
    assert_eq!(doc.object["data"], json!({"a": "YQ==", "b": "aGVsbG8="}));
    assert!(doc.object.get("stringData").is_none());
    let s: model::Secret = doc.typed().unwrap();
    assert_eq!(s.get("b").unwrap(), b"hello");
    let debug = format!("{s:?}");
    assert!(!debug.contains("aGVsbG8") && !debug.contains("hello"), "{debug}");
}

#[test]
fn nodes_are_cluster_scoped() {
    let src = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a, namespace: default, labels: {topology.kubernetes.io/zone: zone-a}}
spec:
  unschedulable: true
  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
"#;
    let doc = &manifest::parse("n.yaml", src).unwrap()[0];
    assert_eq!(doc.namespace, "");
    assert!(doc.object["metadata"].get("namespace").is_none());
    assert!(doc.warnings.iter().any(|w| w.contains("cluster-scoped")));

    let body = json!({
        "metadata": {"name": "node-a"},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "3500m", "memory": "7Gi", "pods": "110"},
            "addresses": [{"type": "Hostname", "address": "host"}, {"type": "InternalIP", "address": "127.0.0.1"}],
            "heartbeatTime": "2026-01-02T03:04:05.250Z",
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-02T03:04:05Z"}],
            "nodeInfo": {"operatingSystem": "linux", "architecture": "amd64", "machineID": "m"}
        }
    });
    let doc = model::decode(Some(Kind::Node), body).unwrap();
    let node: model::Node = doc.typed().unwrap();
    assert!(node.is_ready());
    assert_eq!(node.address(), Some("127.0.0.1"));
    assert_eq!(node.allocatable(), model::Resources { cpu_millis: 3500, memory_bytes: 7 << 30, pods: 110 });
    assert_eq!(doc.object["status"]["heartbeatTime"], "2026-01-02T03:04:05.250Z");
    let t = model::Toleration {
        key: Some("dedicated".into()),
        operator: model::TolerationOperator::Equal,
        value: Some("gpu".into()),
        effect: None,
        toleration_seconds: None,
    };
    let cordoned: model::Node = manifest::parse("n.yaml", src).unwrap()[0].typed().unwrap();
    assert!(cordoned.spec.unschedulable);
    assert!(t.tolerates(&cordoned.spec.taints[0]));
}

fn config_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Manifest directories (proxy configs elsewhere under config/ are not manifests).
fn is_manifest_dir(p: &Path) -> bool {
    p.components().any(|c| matches!(c.as_os_str().to_str(), Some("examples" | "k8s")))
}

#[test]
fn every_config_manifest_parses_and_round_trips() {
    let files: Vec<_> = config_files().into_iter().filter(|p| is_manifest_dir(p)).collect();
    assert!(files.len() >= 4, "expected the example manifests, found {files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let docs = manifest::parse(&f.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{}", f.display());
        for d in docs {
            kinds.insert(d.kind);
            let again =
                model::decode(Some(d.kind), d.object.clone()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert_eq!(again.object, d.object, "{}: {} is not stable under decode", f.display(), d.display_name());
            assert_eq!((again.namespace, again.name), (d.namespace.clone(), d.name.clone()));
            // And through text, as the CLI's `-o yaml` would print it.
            let yaml = serde_yaml_ng::to_string(&d.object).unwrap();
            let reparsed = manifest::parse("printed.yaml", &yaml).unwrap();
            assert_eq!(reparsed[0].object, d.object);
        }
    }
    for k in [Kind::Deployment, Kind::Service, Kind::Route, Kind::ConfigMap, Kind::Secret, Kind::Autoscaler] {
        assert!(kinds.contains(&k), "no {k} in config/");
    }
}

#[test]
fn kubernetes_manifest_set_applies_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/k8s");
    let mut all = Vec::new();
    for f in config_files().into_iter().filter(|p| p.starts_with(&dir) || p.to_string_lossy().contains("/config/k8s/"))
    {
        let text = std::fs::read_to_string(&f).unwrap();
        all.extend(manifest::parse(&f.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}")));
    }
    let names: Vec<_> = all.iter().map(|d| (d.kind, d.namespace.as_str(), d.name.as_str())).collect();
    for want in [
        (Kind::Deployment, "shop", "shop"),
        (Kind::Service, "shop", "shop"),
        (Kind::Route, "shop", "shop"),
        (Kind::ConfigMap, "shop", "shop-config"),
        (Kind::Autoscaler, "shop", "shop"),
        (Kind::Secret, "shop", "shop-db"),
    ] {
        assert!(names.contains(&want), "{want:?} missing from {names:?}");
    }
    let dep = all.iter().find(|d| d.kind == Kind::Deployment).unwrap();
    assert!(dep.warnings.iter().any(|w| w.contains("imagePullPolicy")), "{:?}", dep.warnings);
}

#[test]
fn example_web_deployment_has_what_describe_shows() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples/web.yaml");
    let docs = manifest::parse("web.yaml", &std::fs::read_to_string(path).unwrap()).unwrap();
    let d: model::Deployment = docs.iter().find(|d| d.kind == Kind::Deployment).unwrap().typed().unwrap();
    assert_eq!(d.metadata.name, "web");
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(c.command, vec!["berth", "echo"]);
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    assert_eq!(d.spec.template.spec.total_requests().cpu_millis, 100);
    assert!(docs.iter().all(|d| d.warnings.is_empty()), "the example should be warning-free");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Cutting any slice out of a valid manifest gives a document or an error, never a panic, and an error
    /// always names the source.
    #[test]
    fn damaged_manifests_never_panic(start in 0usize..DEPLOYMENT.len(), len in 0usize..40) {
        let end = (start + len).min(DEPLOYMENT.len());
        if DEPLOYMENT.is_char_boundary(start) && DEPLOYMENT.is_char_boundary(end) {
            let text = format!("{}{}", &DEPLOYMENT[..start], &DEPLOYMENT[end..]);
            if let Err(e) = manifest::parse("cut.yaml", &text) {
                proptest::prop_assert!(e.to_string().starts_with("cut.yaml: "));
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = manifest::parse("x.yaml", &text);
    }

    /// Whatever is accepted is stable: decoding the stored form gives it back.
    #[test]
    fn accepted_documents_are_fixed_points(replicas in 0i32..1000, surge in 0i32..5, unavailable in 0i32..5) {
        let text = DEPLOYMENT
            .replace("replicas: 2", &format!("replicas: {replicas}\n  strategy: {{rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}}}"));
        match manifest::parse("d.yaml", &text) {
            Ok(docs) => {
                let again = model::decode(Some(Kind::Deployment), docs[0].object.clone()).unwrap();
                proptest::prop_assert_eq!(&again.object, &docs[0].object);
            }
            Err(e) => {
                proptest::prop_assert!(surge == 0 && unavailable == 0, "{}", e);
            }
        }
    }
}
