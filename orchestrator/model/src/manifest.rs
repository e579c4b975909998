//! Reading manifests: YAML (several `---` documents) or JSON (one or more values, or an array), each document
//! checked against its kind's type and rules and turned into a [`Document`] holding the normalized object.
//!
//! Errors ([`ManifestError`]) name the source, the 1-based document number and the field path, e.g.
//! `web.yaml: document 2: spec.template.spec.containers[0].portz: unknown field`. Documents that are a
//! Kubernetes `List` (`kind: List`, `items: [...]`) are expanded; paths inside them start with `items[N]`.
//!
//! Decoding here is strict, the model's types are not: a field its kind does not know is rejected
//! (`ManifestErrorKind::UnknownField`) by this module, which records ignored fields while it deserializes
//! (`serde_ignored`), so that agents and controllers can read stored objects with the same types leniently.
//!
//! In a manifest, `status` is dropped without a look (users export objects with it); an API body read by
//! [`decode`] keeps and checks it, because agents and controllers write status through the API.

use super::meta::{field_err, join, validate_dns1035_label, validate_dns_label, validate_dns_subdomain};
use super::meta::{Check, FieldError, ObjectMeta};
use super::{autoscaler, config, deployment, node, pod, service, Kind, Object};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// One object read from a manifest or an API body, validated and normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The source name given to [`parse`] (a file name, `-`, or `request body`).
    pub source: String,
    /// 1-based document number in the source.
    pub index: usize,
    pub kind: Kind,
    /// The namespace (the default one when the manifest gave none); empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The normalized object that gets stored (apiVersion/kind/metadata/spec[/status]).
    pub object: Value,
    /// One line per accepted-but-ignored field or questionable value, each naming its path.
    pub warnings: Vec<String>,
}

impl Document {
    /// The store key of this object.
    pub fn key(&self) -> crate::Key {
        crate::Key::new(self.kind.plural(), self.namespace.clone(), self.name.clone())
    }

    /// The object as its typed form (`Deployment`, `Pod`, ...).
    pub fn typed<T: Object>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.object)
    }

    /// `kind/name` as kubectl prints it (`deployment/web`).
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.kind.singular(), self.name)
    }
}

/// What went wrong, for callers that map errors to statuses or tests that match on class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestErrorKind {
    /// Malformed YAML or JSON.
    Syntax,
    /// A document is not an object, or is missing `apiVersion`/`kind`.
    NotAnObject,
    /// `apiVersion`/`kind` Berth does not serve.
    UnknownKind,
    /// The body's kind is not the one the API path names.
    KindMismatch,
    UnknownField,
    InvalidType,
    MissingField,
    /// A value that parses but is not allowed (names, labels, selectors, ranges, cross-field rules).
    InvalidValue,
}

/// A rejected document: where (source, document, field path or line/column) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub source_name: String,
    /// 1-based document number; `None` for an API body.
    pub document: Option<usize>,
    /// The field path (`spec.template.spec.containers[0].portz`), when the error is about a field.
    pub path: Option<String>,
    /// Line and column (1-based) of a syntax error.
    pub location: Option<(usize, usize)>,
    pub kind: ManifestErrorKind,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some((l, c)) = self.location {
            write!(f, ": line {l} column {c}")?;
        }
        if let Some(p) = &self.path {
            write!(f, ": {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// An error inside one document, before it is placed in its source.
#[derive(Debug)]
struct Fail {
    kind: ManifestErrorKind,
    path: Option<String>,
    message: String,
}

impl From<FieldError> for Fail {
    fn from(e: FieldError) -> Self {
        Fail { kind: ManifestErrorKind::InvalidValue, path: Some(e.path), message: e.message }
    }
}

impl Fail {
    fn at(self, source: &str, document: Option<usize>) -> ManifestError {
        ManifestError {
            source_name: source.to_string(),
            document,
            path: self.path,
            location: None,
            kind: self.kind,
            message: self.message,
        }
    }

    fn prefixed(mut self, prefix: &str) -> Fail {
        self.path = Some(match self.path {
            Some(p) if p.starts_with('[') => format!("{prefix}{p}"),
            Some(p) => join(prefix, &p),
            None => prefix.to_string(),
        });
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A manifest: `status` is dropped.
    Manifest,
    /// An API body: `status` is kept and checked.
    Api,
}

/// Parse a manifest (YAML or JSON, several documents) into validated, normalized documents. Documents
/// without a namespace go to `default`. Empty documents are skipped. The first bad document fails the whole
/// source, so nothing of a rejected file needs to be applied.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    parse_in(source_name, text, "default")
}

/// [`parse`] with another default namespace (`berth apply -n NS`). A document naming its own namespace keeps
/// it; the caller decides whether a mismatch is an error.
pub fn parse_in(source_name: &str, text: &str, default_namespace: &str) -> Result<Vec<Document>, ManifestError> {
    let values = read_values(source_name, text)?;
    let mut out = Vec::new();
    for (index, value) in values {
        let doc_err = |f: Fail| f.at(source_name, Some(index));
        if value.is_null() {
            continue;
        }
        // A Kubernetes List (`kubectl get -o yaml` of several objects) or Berth's `{"items": [...]}`.
        if is_list(&value) {
            let Value::Object(mut map) = value else {
                continue;
            };
            let Some(Value::Array(items)) = map.remove("items") else {
                return Err(doc_err(Fail {
                    kind: ManifestErrorKind::InvalidType,
                    path: Some("items".into()),
                    message: "must be a list of objects".into(),
                }));
            };
            for (i, item) in items.into_iter().enumerate() {
                let (kind, namespace, name, object, warnings) =
                    decode_value(item, None, default_namespace, Mode::Manifest)
                        .map_err(|f| doc_err(f.prefixed(&format!("items[{i}]"))))?;
                out.push(Document { source: source_name.into(), index, kind, namespace, name, object, warnings });
            }
            continue;
        }
        let (kind, namespace, name, object, warnings) =
            decode_value(value, None, default_namespace, Mode::Manifest).map_err(doc_err)?;
        out.push(Document { source: source_name.into(), index, kind, namespace, name, object, warnings });
    }
    Ok(out)
}

/// Validate and normalize one API body. With `kind` given, the body must be of that kind (`apiVersion` and
/// `kind` may then be omitted); `status` is kept and checked. Errors use the source name `request body`.
pub fn decode(kind: Option<Kind>, value: Value) -> Result<Document, ManifestError> {
    decode_in(kind, value, "default")
}

/// [`decode`] with the namespace of the API path as the default.
pub fn decode_in(kind: Option<Kind>, value: Value, default_namespace: &str) -> Result<Document, ManifestError> {
    const SOURCE: &str = "request body";
    let (kind, namespace, name, object, warnings) =
        decode_value(value, kind, default_namespace, Mode::Api).map_err(|f| f.at(SOURCE, None))?;
    Ok(Document { source: SOURCE.into(), index: 1, kind, namespace, name, object, warnings })
}

fn is_list(v: &Value) -> bool {
    match v.get("kind") {
        Some(Value::String(k)) => k == "List" || k.ends_with("List") && v.get("items").is_some(),
        None => v.get("items").is_some() && v.get("apiVersion").is_none(),
        _ => false,
    }
}

/// Split a source into JSON values with their 1-based document numbers.
fn read_values(source: &str, text: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let syntax = |document: Option<usize>, location: Option<(usize, usize)>, message: String| ManifestError {
        source_name: source.to_string(),
        document,
        path: None,
        location,
        kind: ManifestErrorKind::Syntax,
        message,
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, v) in stream.enumerate() {
            let v = v.map_err(|e| syntax(Some(i + 1), Some((e.line(), e.column())), strip_location(&e.to_string())))?;
            match v {
                Value::Array(items) if i == 0 && trimmed.starts_with('[') => {
                    out.extend(items.into_iter().enumerate().map(|(j, v)| (j + 1, v)));
                }
                v => out.push((out.len() + 1, v)),
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        // Through serde_yaml_ng's own Value first: it rejects duplicate keys, which serde_json would merge.
        let yaml = serde_yaml_ng::Value::deserialize(de).map_err(|e| {
            let loc = e.location().map(|l| (l.line(), l.column()));
            syntax(Some(index), loc, strip_location(&e.to_string()))
        })?;
        let yaml = resolve_merge_keys(yaml);
        let json = serde_json::to_value(&yaml).map_err(|e| syntax(Some(index), None, e.to_string()))?;
        out.push((index, json));
    }
    Ok(out)
}

/// `<<: *anchor` merge keys, as Kubernetes' YAML reader resolves them.
fn resolve_merge_keys(v: serde_yaml_ng::Value) -> serde_yaml_ng::Value {
    let mut v = v;
    // apply_merge fails only on malformed merge values; the typed decode reports those as unknown `<<`.
    let _ = v.apply_merge();
    v
}

/// serde_yaml_ng and serde_json append "at line L column C"; the location is printed separately.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

type Decoded = (Kind, String, String, Value, Vec<String>);

/// The stored kind an (apiVersion, kind) pair is read as, or why not.
fn resolve_kind(api_version: &str, kind: &str) -> Result<Kind, Fail> {
    let unknown =
        |path: &str, message: String| Fail { kind: ManifestErrorKind::UnknownKind, path: Some(path.into()), message };
    let expected = match kind {
        "Node" => ("v1", Kind::Node),
        "Deployment" => ("apps/v1", Kind::Deployment),
        "Pod" => ("v1", Kind::Pod),
        "Service" => ("v1", Kind::Service),
        "ConfigMap" => ("v1", Kind::ConfigMap),
        "Secret" => ("v1", Kind::Secret),
        "Route" => ("berth.dev/v1", Kind::Route),
        "Ingress" => ("networking.k8s.io/v1", Kind::Route),
        "Autoscaler" => ("berth.dev/v1", Kind::Autoscaler),
        "HorizontalPodAutoscaler" => ("autoscaling/v2", Kind::Autoscaler),
        other => {
            return Err(unknown(
                "kind",
                format!(
                    "unknown kind {other:?} (Berth serves Deployment, Pod, Service, ConfigMap, Secret, Node, \
                     Ingress, HorizontalPodAutoscaler, and berth.dev/v1 Route and Autoscaler)"
                ),
            ))
        }
    };
    let ok = api_version == expected.0 || (kind == "Node" && api_version == "berth.dev/v1");
    if !ok {
        return Err(unknown(
            "apiVersion",
            format!("{kind} is served as apiVersion {:?}, not {api_version:?}", expected.0),
        ));
    }
    Ok(expected.1)
}

fn decode_value(mut value: Value, expected: Option<Kind>, default_ns: &str, mode: Mode) -> Result<Decoded, Fail> {
    let Value::Object(map) = &mut value else {
        return Err(Fail {
            kind: ManifestErrorKind::NotAnObject,
            path: None,
            message: format!("expected an object with apiVersion and kind, found {}", type_name(&value)),
        });
    };
    if let Some(k) = expected {
        // An API body may leave the type to the path.
        map.entry("apiVersion").or_insert_with(|| Value::String(k.api_version().into()));
        map.entry("kind").or_insert_with(|| Value::String(k.kind_name().into()));
    }
    let text_field = |name: &str| -> Result<String, Fail> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Fail {
                kind: ManifestErrorKind::InvalidType,
                path: Some(name.into()),
                message: format!("must be a string, found {}", type_name(other)),
            }),
            None => {
                Err(Fail { kind: ManifestErrorKind::MissingField, path: Some(name.into()), message: "required".into() })
            }
        }
    };
    let api_version = text_field("apiVersion")?;
    let kind_text = text_field("kind")?;
    let kind = resolve_kind(&api_version, &kind_text)?;
    if let Some(k) = expected {
        if k != kind {
            return Err(Fail {
                kind: ManifestErrorKind::KindMismatch,
                path: Some("kind".into()),
                message: format!("expected {k}, got {kind_text}"),
            });
        }
    }
    if mode == Mode::Manifest {
        map.remove("status");
    }
    let mut cx = Check::default();
    let secret = kind == Kind::Secret;
    let object = match kind_text.as_str() {
        "Node" => finish::<node::Node>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?,
        "Deployment" => finish::<deployment::Deployment>(
            typed(value, secret)?,
            default_ns,
            &mut cx,
            |o, cx| o.check(cx),
            deployment::Deployment::normalize,
        )?,
        "Pod" => {
            finish::<pod::Pod>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), pod::Pod::normalize)?
        }
        "Service" => {
            finish::<service::Service>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?
        }
        "ConfigMap" => {
            finish::<config::ConfigMap>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?
        }
        "Secret" => finish::<config::Secret>(
            typed(value, secret)?,
            default_ns,
            &mut cx,
            |o, cx| o.check(cx),
            config::Secret::normalize,
        )?,
        "Route" => finish::<service::Route>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?,
        "Ingress" => {
            let ing: service::Ingress = typed(value, secret)?;
            check_meta(&ing.metadata, Kind::Route, &mut cx)?;
            let route = ing.into_route(&mut cx)?;
            finish::<service::Route>(route, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?
        }
        "Autoscaler" => {
            finish::<autoscaler::Autoscaler>(typed(value, secret)?, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?
        }
        "HorizontalPodAutoscaler" => {
            let hpa: autoscaler::HorizontalPodAutoscaler = typed(value, secret)?;
            check_meta(&hpa.metadata, Kind::Autoscaler, &mut cx)?;
            let a = hpa.into_autoscaler(&mut cx)?;
            finish::<autoscaler::Autoscaler>(a, default_ns, &mut cx, |o, cx| o.check(cx), |_| {})?
        }
        // resolve_kind accepted only the names above.
        other => {
            return Err(Fail {
                kind: ManifestErrorKind::UnknownKind,
                path: Some("kind".into()),
                message: format!("unknown kind {other:?}"),
            })
        }
    };
    let (namespace, name, object) = object;
    Ok((kind, namespace, name, object, cx.warnings))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Deserialize a document strictly: like Kubernetes, reject fields its type does not know. The model's types
/// are lenient themselves (agents and controllers read stored objects with them, and a field added by a later
/// version must not break those readers); strictness lives here. Unknown fields are collected while the
/// document deserializes, and the first one wins if it came before the first deserialization error in
/// document order, as `deny_unknown_fields` would have stopped there: serde visits the document in order and
/// stops at the first error, so a field recorded before the error came first.
fn typed<T: serde::de::DeserializeOwned>(value: Value, secret: bool) -> Result<T, Fail> {
    let mut unknown: Option<String> = None;
    let mut record = |path: serde_ignored::Path<'_>| {
        unknown.get_or_insert_with(|| ignored_path(&path));
    };
    let result = serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(value, &mut record));
    if let Some(path) = unknown {
        return Err(Fail { kind: ManifestErrorKind::UnknownField, path: Some(path), message: "unknown field".into() });
    }
    result.map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let msg = e.inner().to_string();
        classify(path, &msg, secret)
    })
}

/// An ignored field's path written as serde_path_to_error writes error paths (`spec.containers[0].portz`).
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn classify(path: String, msg: &str, secret: bool) -> Fail {
    let backticked = |m: &str| m.split('`').nth(1).map(str::to_string);
    let some = |p: String| if p.is_empty() { None } else { Some(p) };
    if msg.starts_with("missing field") {
        let field = backticked(msg).unwrap_or_default();
        return Fail {
            kind: ManifestErrorKind::MissingField,
            path: some(join(&path, &field)),
            message: "required".into(),
        };
    }
    if secret && (path.starts_with("data") || path.starts_with("stringData")) {
        // Never echo what might be secret material.
        return Fail {
            kind: ManifestErrorKind::InvalidType,
            path: some(path),
            message: "invalid value (not shown)".into(),
        };
    }
    let kind =
        if msg.starts_with("invalid type") { ManifestErrorKind::InvalidType } else { ManifestErrorKind::InvalidValue };
    Fail { kind, path: some(path), message: msg.to_string() }
}

/// Name and namespace rules, shared by every kind (and by Ingress/HPA before conversion).
fn check_meta(meta: &ObjectMeta, kind: Kind, cx: &mut Check) -> Result<(), Fail> {
    if meta.name.is_empty() {
        return Err(Fail {
            kind: ManifestErrorKind::MissingField,
            path: Some("metadata.name".into()),
            message: "required".into(),
        });
    }
    let rule = match kind {
        Kind::Service => validate_dns1035_label(&meta.name),
        _ => validate_dns_subdomain(&meta.name),
    };
    rule.map_err(|m| field_err("metadata.name", m))?;
    if !meta.namespace.is_empty() {
        validate_dns_label(&meta.namespace).map_err(|m| field_err("metadata.namespace", m))?;
    }
    meta.check("metadata", cx)?;
    Ok(())
}

fn finish<T: Object>(
    mut obj: T,
    default_ns: &str,
    cx: &mut Check,
    check: impl FnOnce(&T, &mut Check) -> Result<(), FieldError>,
    normalize: impl FnOnce(&mut T),
) -> Result<(String, String, Value), Fail> {
    let kind = T::KIND;
    check_meta(obj.metadata(), kind, cx)?;
    check(&obj, cx)?;
    normalize(&mut obj);
    obj.set_type_meta();
    let meta = obj.metadata_mut();
    if kind.namespaced() {
        if meta.namespace.is_empty() {
            validate_dns_label(default_ns).map_err(|m| field_err("metadata.namespace", m))?;
            meta.namespace = default_ns.to_string();
        }
    } else if !meta.namespace.is_empty() {
        cx.warn("metadata.namespace", format!("{kind} is cluster-scoped; namespace ignored"));
        meta.namespace.clear();
    }
    let (namespace, name) = (meta.namespace.clone(), meta.name.clone());
    let value = serde_json::to_value(&obj).map_err(|e| Fail {
        kind: ManifestErrorKind::InvalidValue,
        path: None,
        message: format!("cannot encode the object: {e}"),
    })?;
    Ok((namespace, name, value))
}
