//! Tables, JSON/YAML output and `describe` rendering, kubectl style.

use anyhow::{bail, Result};
use client::Client;
use model::Kind;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
pub enum Format {
    Table { wide: bool },
    Json,
    Yaml,
    Name,
}

impl Format {
    pub fn parse(s: Option<&str>) -> Result<Self> {
        Ok(match s {
            None => Format::Table { wide: false },
            Some("wide") => Format::Table { wide: true },
            Some("json") => Format::Json,
            Some("yaml") => Format::Yaml,
            Some("name") => Format::Name,
            Some(other) => bail!("-o {other:?}: expected wide, json, yaml or name"),
        })
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Replace every value of a Secret's `data`/`stringData` with its size, `<N bytes>`: the CLI never prints
/// Secret values (JSON, YAML and describe alike). The API still returns them to authenticated clients.
pub fn redact_secret(v: &mut Value) {
    for section in ["data", "stringData"] {
        if let Some(Value::Object(data)) = v.get_mut(section) {
            for (_, val) in data.iter_mut() {
                let len = val.as_str().map_or(0, |x| decoded_len(x, section == "data"));
                *val = Value::String(format!("<{len} bytes>"));
            }
        }
    }
}

/// Mask a Secret's values for `berth diff` as `kubectl diff` does: `***` where both sides agree,
/// `*** (before)` / `*** (after)` where they differ, so a change shows without its content.
pub fn mask_secret_diff(before: Option<&mut Value>, after: &mut Value) {
    let value_of = |v: &Value, k: &str| v.pointer(&format!("/data/{k}")).cloned();
    let before_copy = before.as_deref().cloned().unwrap_or(Value::Null);
    let after_copy = after.clone();
    let mask = |v: &mut Value, other: &Value, side: &str| {
        if let Some(Value::Object(data)) = v.get_mut("data") {
            for (k, val) in data.iter_mut() {
                let same = value_of(other, k).as_ref() == Some(val);
                *val = Value::String(if same { "***".into() } else { format!("*** ({side})") });
            }
        }
    };
    if let Some(b) = before {
        mask(b, &after_copy, "before");
    }
    mask(after, &before_copy, "after");
}

pub fn print_one(kind: Kind, obj: &Value, format: Format) -> Result<()> {
    if kind == Kind::Secret {
        let mut redacted = obj.clone();
        redact_secret(&mut redacted);
        return print_one_raw(kind, &redacted, format);
    }
    print_one_raw(kind, obj, format)
}

fn print_one_raw(kind: Kind, obj: &Value, format: Format) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(obj)?),
        Format::Yaml => print!("{}", super::to_yaml(obj)?),
        Format::Name => println!("{}/{}", kind.kind_name().to_lowercase(), s(obj, "/metadata/name")),
        Format::Table { .. } => print_list(kind, std::slice::from_ref(obj), format, false)?,
    }
    Ok(())
}

pub fn print_list(kind: Kind, items: &[Value], format: Format, with_namespace: bool) -> Result<()> {
    let redacted: Vec<Value>;
    let items = if kind == Kind::Secret {
        redacted = items
            .iter()
            .map(|i| {
                let mut i = i.clone();
                redact_secret(&mut i);
                i
            })
            .collect();
        &redacted[..]
    } else {
        items
    };
    let wide = match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&json!({ "items": items }))?);
            return Ok(());
        }
        Format::Yaml => {
            print!("{}", super::to_yaml(&json!({ "items": items }))?);
            return Ok(());
        }
        Format::Name => {
            for i in items {
                println!("{}/{}", kind.kind_name().to_lowercase(), s(i, "/metadata/name"));
            }
            return Ok(());
        }
        Format::Table { wide } => wide,
    };
    let (mut header, wide_header) = columns(kind);
    if wide {
        header.extend(wide_header);
    }
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let (mut row, wide_row) = row(kind, item);
        if wide {
            row.extend(wide_row);
        }
        if with_namespace {
            row.insert(0, s(item, "/metadata/namespace").to_string());
        }
        rows.push(row);
    }
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    print!("{}", table(&header, &rows));
    Ok(())
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn columns(kind: Kind) -> (Vec<&'static str>, Vec<&'static str>) {
    match kind {
        Kind::Pod => (vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"], vec!["IP", "NODE"]),
        Kind::Deployment => {
            (vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], vec!["CONTAINERS", "IMAGES", "SELECTOR"])
        }
        Kind::Service => (vec!["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"], vec!["SELECTOR"]),
        Kind::Node => (vec!["NAME", "STATUS", "CPU", "MEMORY", "PODS", "AGE"], vec!["LABELS"]),
        Kind::Route => (vec!["NAME", "HOSTS", "BACKENDS", "AGE"], vec![]),
        Kind::ConfigMap => (vec!["NAME", "DATA", "AGE"], vec![]),
        Kind::Secret => (vec!["NAME", "TYPE", "DATA", "AGE"], vec![]),
        Kind::Autoscaler => (vec!["NAME", "TARGET", "METRIC", "MIN", "MAX", "REPLICAS", "AGE"], vec!["DESIRED"]),
    }
}

fn row(kind: Kind, v: &Value) -> (Vec<String>, Vec<String>) {
    let name = s(v, "/metadata/name").to_string();
    let age = age(s(v, "/metadata/creationTimestamp"));
    match kind {
        Kind::Pod => {
            let containers = v.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let statuses =
                v.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            let reason = statuses
                .iter()
                .find_map(|c| c.pointer("/state/waiting/reason").or_else(|| c.pointer("/state/terminated/reason")))
                .and_then(Value::as_str);
            let status = if !s(v, "/metadata/deletionTimestamp").is_empty() {
                "Terminating".to_string()
            } else {
                reason.map(str::to_string).unwrap_or_else(|| or(s(v, "/status/phase"), "Pending"))
            };
            (
                vec![name, format!("{ready}/{containers}"), status, restarts.to_string(), age],
                vec![or(s(v, "/status/podIP"), "<none>"), or(s(v, "/spec/nodeName"), "<none>")],
            )
        }
        Kind::Deployment => {
            let containers =
                v.pointer("/spec/template/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
            let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
            let images: Vec<String> = containers
                .iter()
                .map(|c| {
                    if !s(c, "/image").is_empty() {
                        s(c, "/image").to_string()
                    } else {
                        c.get("command")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default()
                    }
                })
                .collect();
            let selector = v.pointer("/spec/selector/matchLabels").map(labels_string).unwrap_or_default();
            let replicas = v.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            (
                vec![
                    name,
                    format!("{}/{replicas}", n(v, "/status/readyReplicas")),
                    n(v, "/status/updatedReplicas").to_string(),
                    n(v, "/status/availableReplicas").to_string(),
                    age,
                ],
                vec![names.join(","), images.join(","), selector],
            )
        }
        Kind::Service => {
            let ports = v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| format!("{}/{}", n(p, "/port"), or(s(p, "/protocol"), "TCP")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let selector = v.pointer("/spec/selector").map(labels_string).unwrap_or_default();
            (
                vec![
                    name,
                    or(s(v, "/spec/type"), "ClusterIP"),
                    or(s(v, "/spec/clusterIP"), "<none>"),
                    or(&ports, "<none>"),
                    age,
                ],
                vec![or(&selector, "<none>")],
            )
        }
        Kind::Node => {
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| s(c, "/type") == "Ready"))
                .map(|c| if s(c, "/status") == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let alloc = |k: &str| {
                v.pointer(&format!("/status/allocatable/{k}"))
                    .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                    .unwrap_or_else(|| "-".into())
            };
            (
                vec![name, status, alloc("cpu"), alloc("memory"), alloc("pods"), age],
                vec![v.pointer("/metadata/labels").map(labels_string).unwrap_or_default()],
            )
        }
        Kind::Route => {
            let hosts = v
                .pointer("/spec/hosts")
                .and_then(Value::as_array)
                .map(|h| h.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            let mut backends: Vec<String> = v
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            let path = r
                                .pointer("/path/prefix")
                                .or_else(|| r.pointer("/path/exact"))
                                .and_then(Value::as_str)
                                .unwrap_or("/");
                            format!("{path}->{}", s(r, "/backend/service"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            backends.dedup();
            (vec![name, or(&hosts, "*"), or(&backends.join(","), "<none>"), age], vec![])
        }
        Kind::ConfigMap => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|k| v.get(k).and_then(Value::as_object).map_or(0, |m| m.len()))
                .sum::<usize>();
            (vec![name, count.to_string(), age], vec![])
        }
        Kind::Secret => {
            let count = v.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
            (vec![name, or(s(v, "/type"), "Opaque"), count.to_string(), age], vec![])
        }
        Kind::Autoscaler => {
            let target = format!("{}/{}", s(v, "/spec/scaleTargetRef/kind"), s(v, "/spec/scaleTargetRef/name"));
            let targets = v
                .pointer("/status/currentMetrics")
                .and_then(Value::as_array)
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            m.get("display")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                                .unwrap_or_else(|| m.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "<unknown>".into());
            (
                vec![
                    name,
                    target,
                    targets,
                    n(v, "/spec/minReplicas").to_string(),
                    n(v, "/spec/maxReplicas").to_string(),
                    n(v, "/status/currentReplicas").to_string(),
                    age,
                ],
                vec![n(v, "/status/desiredReplicas").to_string()],
            )
        }
    }
}

fn or(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

fn labels_string(v: &Value) -> String {
    v.as_object()
        .map(|m| m.iter().map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// kubectl's compact ages: 45s, 3m12s, 25m, 5h10m, 12h, 3d.
pub fn age(created: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(created) else {
        return "<unknown>".into();
    };
    let d = SystemTime::now().duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    match d {
        0..120 => format!("{d}s"),
        120..600 => format!("{}m{}s", d / 60, d % 60),
        600..10_800 => format!("{}m", d / 60),
        10_800..28_800 => format!("{}h{}m", d / 3600, (d % 3600) / 60),
        28_800..172_800 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

// ---------------------------------------------------------------------------------------------------------
// describe

/// A human-readable, kind-aware rendering. Secret values are never shown, only their sizes.
pub fn describe(kind: Kind, v: &Value) -> String {
    let mut out = String::new();
    // Printed after everything else, as kubectl prints Events last.
    let mut events = String::new();
    let mut field = |k: &str, val: String| {
        let _ = writeln!(out, "{:<18}{}", format!("{k}:"), val);
    };
    field("Name", s(v, "/metadata/name").to_string());
    if kind.namespaced() {
        field("Namespace", s(v, "/metadata/namespace").to_string());
    }
    field("Kind", format!("{} ({})", s(v, "/kind"), s(v, "/apiVersion")));
    field("Labels", or(&v.pointer("/metadata/labels").map(labels_string).unwrap_or_default(), "<none>"));
    field("Annotations", or(&v.pointer("/metadata/annotations").map(labels_string).unwrap_or_default(), "<none>"));
    let created = s(v, "/metadata/creationTimestamp");
    field("Created", format!("{created} ({} ago)", age(created)));
    field("ResourceVersion", s(v, "/metadata/resourceVersion").to_string());
    match kind {
        Kind::Deployment => {
            let replicas = v.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            field(
                "Replicas",
                format!(
                    "{replicas} desired | {} updated | {} total | {} ready | {} available",
                    n(v, "/status/updatedReplicas"),
                    n(v, "/status/replicas"),
                    n(v, "/status/readyReplicas"),
                    n(v, "/status/availableReplicas")
                ),
            );
            let strategy = or(s(v, "/spec/strategy/type"), "RollingUpdate");
            field("Strategy", strategy);
        }
        Kind::Autoscaler => {
            field(
                "Replicas",
                format!(
                    "{} current | {} desired | min {} | max {}",
                    n(v, "/status/currentReplicas"),
                    n(v, "/status/desiredReplicas"),
                    n(v, "/spec/minReplicas"),
                    n(v, "/spec/maxReplicas")
                ),
            );
            let metrics = v.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
            let shown: Vec<String> =
                metrics.iter().filter_map(|m| m.get("display").and_then(Value::as_str).map(str::to_string)).collect();
            field("Metrics", or(&shown.join(", "), "<unknown>"));
            for c in v.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten() {
                field(s(c, "/type"), format!("{} {}: {}", s(c, "/status"), s(c, "/reason"), s(c, "/message")));
            }
            let decisions = v.pointer("/status/recentDecisions").and_then(Value::as_array).cloned().unwrap_or_default();
            let _ = writeln!(events, "Events (recent scaling decisions, newest last):");
            if decisions.is_empty() {
                let _ = writeln!(events, "  <none>");
            }
            for d in &decisions {
                let _ = writeln!(
                    events,
                    "  {:<10} {} -> {}  {}",
                    age(s(d, "/time")),
                    n(d, "/fromReplicas"),
                    n(d, "/toReplicas"),
                    s(d, "/reason")
                );
            }
        }
        Kind::Service => {
            field("Type", or(s(v, "/spec/type"), "ClusterIP"));
            field("ClusterIP", or(s(v, "/spec/clusterIP"), "<none>"));
        }
        Kind::Pod => {
            field("Node", or(s(v, "/spec/nodeName"), "<none>"));
            field("Phase", or(s(v, "/status/phase"), "Pending"));
            field("IP", or(s(v, "/status/podIP"), "<none>"));
        }
        _ => {}
    }
    let mut body = v.clone();
    if let Some(m) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            m.remove(k);
        }
    }
    if kind == Kind::Secret {
        redact_secret(&mut body);
    }
    if let Some(m) = body.as_object() {
        for (k, val) in m {
            let mut title = k.clone();
            if let Some(first) = title.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            let _ = writeln!(out, "{title}:");
            let yaml = serde_yaml_ng::to_string(val).unwrap_or_default();
            for line in yaml.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out.push_str(&events);
    out
}

fn decoded_len(s: &str, base64: bool) -> usize {
    if base64 {
        let len = s.bytes().filter(|b| !b.is_ascii_whitespace()).count();
        let pad = s.bytes().rev().filter(|b| !b.is_ascii_whitespace()).take_while(|b| *b == b'=').count();
        ((len / 4) * 3).saturating_sub(pad.min(2))
    } else {
        s.len()
    }
}

// ---------------------------------------------------------------------------------------------------------
// endpoints

/// `berth get endpoints`: each Service's ready endpoints from the discovery API.
pub async fn endpoints(client: &Client, namespace: Option<&str>, name: Option<&str>, format: Format) -> Result<()> {
    let services = client.list(Kind::Service, namespace, None).await?;
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    for svc in
        services.iter().filter(|s| name.is_none_or(|n| s.pointer("/metadata/name").and_then(Value::as_str) == Some(n)))
    {
        let ns = s(svc, "/metadata/namespace");
        let selector = svc.pointer("/spec/selector").map(labels_string).unwrap_or_default();
        let answer = if selector.is_empty() {
            json!({"items": []})
        } else {
            client.discovery_endpoints(&[selector], Some(ns)).await?
        };
        let items = answer.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        let addrs: Vec<String> = items
            .iter()
            .flat_map(|e| {
                let addr = s(e, "/address").to_string();
                e.get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| format!("{addr}:{}", n(&p, "/port")))
            })
            .collect();
        let shown = if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        rows.push(vec![s(svc, "/metadata/name").to_string(), or(&shown, "<none>")]);
        objects.push(json!({"namespace": ns, "name": s(svc, "/metadata/name"), "endpoints": items}));
    }
    if name.is_some() && rows.is_empty() {
        bail!("service {:?} not found", name.unwrap_or_default());
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json!({ "items": objects }))?),
        Format::Yaml => print!("{}", super::to_yaml(&json!({ "items": objects }))?),
        _ => print!("{}", table(&["NAME", "ENDPOINTS"], &rows)),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// control plane

/// `berth get controlplane`: the API server replicas (a `ControlPlaneList`) and which one leads.
pub fn control_plane(list: &Value, format: Format) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(list)?),
        Format::Yaml => print!("{}", super::to_yaml(list)?),
        Format::Name => {
            for m in list.get("items").and_then(Value::as_array).into_iter().flatten() {
                println!("controlplane/{}", s(m, "/name"));
            }
        }
        Format::Table { .. } => {
            let rows: Vec<Vec<String>> = list
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|m| {
                    let leader = m.get("leader").and_then(Value::as_bool).unwrap_or(false);
                    vec![
                        s(m, "/name").to_string(),
                        s(m, "/url").to_string(),
                        if leader { "true" } else { "false" }.to_string(),
                        age(s(m, "/since")),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "URL", "LEADER", "AGE"], &rows));
        }
    }
    Ok(())
}
