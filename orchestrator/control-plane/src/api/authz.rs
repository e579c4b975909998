//! Authorization: what an [`Identity`] may do. [`decide`] is a pure function of the identity and the request's
//! [`Attributes`]; the node rules that depend on stored objects (is this pod bound to me, does a pod of mine
//! use this Secret) come back as a [`Relation`] that [`guard`] checks against the store.
//!
//! - admin: everything;
//! - proxy: `GET /discovery/v1/*` only;
//! - node NAME: its own Node (get, create, update, status, serving certificate); pods only as a list or watch
//!   with `fieldSelector=spec.nodeName=NAME`, get and status update of pods bound to NAME; get of the
//!   ConfigMaps and Secrets a pod bound to NAME references. Nothing else.
//!
//! Denials are Kubernetes `Status` objects (reason `Forbidden`) in Kubernetes' words, naming the identity and
//! the verb.

use super::{parse_body, parse_query, ApiError, ApiState};
use crate::store::{Key, Prefix, Store};
use axum::body::Body;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::auth::Identity;
use serde_json::{json, Value};

/// A Kubernetes verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
    /// Any other method: only admins get past authorization with it (the router then answers 405).
    Other,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Other => "use",
        }
    }
}

/// What a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A resource path: `resource` is the plural (`pods`, `tokens`), `subresource` the segment after the name
    /// (`status`, `log`, `revisions`, `certificate`).
    Resource { resource: String, subresource: Option<String>, namespace: Option<String>, name: Option<String> },
    /// A path that names no resource (`/discovery/v1/...`, `/api/v1/apply`).
    Path(String),
}

/// The parts of a request authorization reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: Verb,
    pub target: Target,
    /// The node of a pods list or watch's `fieldSelector=spec.nodeName=NODE`.
    pub node_selector: Option<String>,
}

/// A fact about stored objects a node rule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The pod named by the request has `spec.nodeName` = the node.
    PodOnNode,
    /// A pod bound to the node in the request's namespace references the ConfigMap or Secret it names.
    ConfigUsedOnNode,
    /// The body's `metadata.name` is the node's name (a node registering itself).
    BodyNamesNode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed when the store shows the relation.
    AllowIf(Relation),
}

pub fn decide(identity: &Identity, a: &Attributes) -> Decision {
    match identity {
        Identity::Admin { .. } => Decision::Allow,
        Identity::Proxy { .. } => match &a.target {
            Target::Path(p) if a.verb == Verb::Get && p.starts_with("/discovery/v1/") => Decision::Allow,
            _ => Decision::Deny,
        },
        Identity::Node { node, .. } => node_decision(node, a),
    }
}

fn node_decision(node: &str, a: &Attributes) -> Decision {
    use {Decision::*, Verb::*};
    let Target::Resource { resource, subresource, namespace, name } = &a.target else { return Deny };
    let own = name.as_deref() == Some(node);
    match (resource.as_str(), subresource.as_deref(), a.verb) {
        ("nodes", None, Get | Update) if own => Allow,
        ("nodes", Some("status"), Update) if own => Allow,
        ("nodes", Some("certificate"), Create) if own => Allow,
        ("nodes", None, Create) if name.is_none() => AllowIf(Relation::BodyNamesNode),
        ("pods", None, List | Watch) if name.is_none() && a.node_selector.as_deref() == Some(node) => Allow,
        ("pods", None, Get) | ("pods", Some("status"), Update) if name.is_some() && namespace.is_some() => {
            AllowIf(Relation::PodOnNode)
        }
        ("configmaps" | "secrets", None, Get) if name.is_some() && namespace.is_some() => {
            AllowIf(Relation::ConfigUsedOnNode)
        }
        _ => Deny,
    }
}

impl Attributes {
    /// From the route that matched (`/api/v1/namespaces/{ns}/{plural}/{name}`), its parameters (already
    /// percent-decoded, as the handlers see them), the method and the query.
    pub(super) fn of(
        method: &Method,
        route: &str,
        params: &[(&str, &str)],
        path: &str,
        query: Option<&str>,
    ) -> Result<Attributes, ApiError> {
        let param = |segment: &str| -> Option<String> {
            let name = segment.strip_prefix('{')?.strip_suffix('}')?;
            params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let resource_path = route.strip_prefix("/api/v1/").filter(|r| *r != "apply" && *r != "join");
        let target = match resource_path {
            None => Target::Path(path.to_string()),
            Some(rest) => {
                let segments: Vec<&str> = rest.split('/').collect();
                let (namespace, segments) = match segments.as_slice() {
                    ["namespaces", ns, rest @ ..] if !rest.is_empty() => (param(ns), rest),
                    _ => (None, segments.as_slice()),
                };
                let resolve = |s: &&str| param(s).unwrap_or_else(|| s.to_string());
                Target::Resource {
                    resource: segments.first().map(resolve).unwrap_or_default(),
                    name: segments.get(1).map(resolve),
                    subresource: segments.get(2).map(resolve),
                    namespace,
                }
            }
        };
        let q = parse_query(query.map(str::to_string))?;
        let listing = matches!(&target, Target::Resource { name: None, .. });
        let verb = match *method {
            Method::GET | Method::HEAD if listing && q.watch => Verb::Watch,
            Method::GET | Method::HEAD if listing => Verb::List,
            Method::GET | Method::HEAD => Verb::Get,
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::DELETE => Verb::Delete,
            _ => Verb::Other,
        };
        Ok(Attributes { verb, target, node_selector: q.node_name })
    }
}

/// The 403 for `identity` doing `a`, in Kubernetes' words; `why` is appended when a relation was missing.
pub(super) fn forbidden(identity: &Identity, a: &Attributes, why: Option<&str>) -> ApiError {
    let verb = a.verb.as_str();
    let (mut message, details) = match &a.target {
        Target::Resource { resource, subresource, namespace, name } => {
            let what = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            let subject = match name {
                Some(n) => format!("{resource} \"{n}\""),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            let message =
                format!("{subject} is forbidden: User \"{identity}\" cannot {verb} resource \"{what}\" {scope}");
            let details = json!({"name": name.clone().unwrap_or_default(), "kind": resource});
            (message, Some(details))
        }
        Target::Path(p) => (format!("forbidden: User \"{identity}\" cannot {verb} path \"{p}\""), None),
    };
    if let Some(why) = why {
        message.push_str(": ");
        message.push_str(why);
    }
    let mut e = ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message);
    e.details = details;
    e
}

/// Whether the store shows `relation` for `node` and the request `a` (whose body, for `BodyNamesNode`, is
/// `body`). A pod that does not exist counts as related, so the handler answers 404 as it would to anyone: an
/// agent must learn that a pod of its node is gone.
async fn holds(
    store: &dyn Store,
    node: &str,
    relation: Relation,
    a: &Attributes,
    body: &[u8],
) -> Result<bool, ApiError> {
    if relation == Relation::BodyNamesNode {
        let body = parse_body(&axum::body::Bytes::copy_from_slice(body))?;
        return Ok(body.pointer("/metadata/name").and_then(Value::as_str) == Some(node));
    }
    let Target::Resource { resource, namespace: Some(ns), name: Some(name), .. } = &a.target else {
        return Ok(false);
    };
    if relation == Relation::PodOnNode {
        let Some(pod) = store.get(&Key::new("pods", ns.clone(), name.clone())).await? else { return Ok(true) };
        return Ok(pod_node(&pod.value).as_deref() == Some(node));
    }
    let prefix = Prefix { kind: "pods".into(), namespace: Some(ns.clone()) };
    let (pods, _) = store.list(&prefix, None).await?;
    Ok(pods.iter().any(|p| {
        let Ok(v) = serde_json::from_slice::<Value>(&p.value) else { return false };
        if v.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
            return false;
        }
        let Some(spec) = v.get("spec").and_then(|s| serde_json::from_value::<model::PodSpec>(s.clone()).ok()) else {
            return false;
        };
        let refs = spec.config_references();
        match resource.as_str() {
            "secrets" => refs.secrets.contains(name),
            _ => refs.config_maps.contains(name),
        }
    }))
}

/// `spec.nodeName` of a stored pod.
pub(super) fn pod_node(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    v.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string)
}

fn unauthorized(e: &super::auth::AuthError) -> Response {
    match e {
        super::auth::AuthError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", e.to_string()).into_response()
        }
        _ => ApiError::unauthorized(e.to_string()).into_response(),
    }
}

/// The middleware of every authenticated route: authenticate, decide, check the relation a node rule needs.
/// The identity is left in the request's extensions.
pub(super) async fn guard(
    State(state): State<ApiState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.inner.auth.clone() else { return next.run(request).await };
    auth.follow(state.inner.store.clone());
    let now = state.inner.clock.now();
    let header = request.headers().get(header::AUTHORIZATION);
    let identity = match auth.authenticate(state.inner.store.as_ref(), header, now).await {
        Ok(identity) => identity,
        Err(e) => {
            tracing::debug!("unauthenticated {} {}: {e}", request.method(), request.uri().path());
            return unauthorized(&e);
        }
    };
    let params: Vec<(&str, &str)> = params.as_ref().map(|p| p.iter().collect()).unwrap_or_default();
    let route = matched.as_ref().map_or(request.uri().path(), MatchedPath::as_str);
    let attributes = match Attributes::of(request.method(), route, &params, request.uri().path(), request.uri().query())
    {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let relation = match decide(&identity, &attributes) {
        Decision::Allow => None,
        Decision::AllowIf(relation) => Some(relation),
        Decision::Deny => {
            tracing::debug!("{identity} may not {:?}", attributes);
            return forbidden(&identity, &attributes, None).into_response();
        }
    };
    if let (Some(relation), Some(node)) = (relation, identity.node()) {
        let mut body = Vec::new();
        if relation == Relation::BodyNamesNode {
            let (parts, b) = request.into_parts();
            body = match axum::body::to_bytes(b, super::MAX_BODY_BYTES).await {
                Ok(b) => b.to_vec(),
                Err(e) => return ApiError::bad_request(format!("request body: {e}")).into_response(),
            };
            request = Request::from_parts(parts, Body::from(body.clone()));
        }
        match holds(state.inner.store.as_ref(), node, relation, &attributes, &body).await {
            Ok(true) => {}
            Ok(false) => {
                let why = match relation {
                    Relation::BodyNamesNode => format!("a node may only register itself (metadata.name {node:?})"),
                    _ => format!("no relationship found between node \"{node}\" and this object"),
                };
                return forbidden(&identity, &attributes, Some(&why)).into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Identity {
        Identity::Node { node: "a".into(), token_id: "0123456789ab".into() }
    }

    fn attrs(method: Method, route: &str, params: &[(&str, &str)], query: Option<&str>) -> Attributes {
        Attributes::of(&method, route, params, route, query).unwrap()
    }

    #[test]
    fn node_rules() {
        use Decision::*;
        let ns = ("ns", "default");
        let cases: Vec<(Attributes, Decision)> = vec![
            (attrs(Method::GET, "/api/v1/{plural}/{name}", &[("plural", "nodes"), ("name", "a")], None), Allow),
            (attrs(Method::GET, "/api/v1/{plural}/{name}", &[("plural", "nodes"), ("name", "b")], None), Deny),
            (attrs(Method::PUT, "/api/v1/{plural}/{name}/status", &[("plural", "nodes"), ("name", "a")], None), Allow),
            (attrs(Method::PUT, "/api/v1/{plural}/{name}/status", &[("plural", "nodes"), ("name", "b")], None), Deny),
            (attrs(Method::DELETE, "/api/v1/{plural}/{name}", &[("plural", "nodes"), ("name", "a")], None), Deny),
            (attrs(Method::GET, "/api/v1/{plural}", &[("plural", "nodes")], None), Deny),
            (attrs(Method::POST, "/api/v1/{plural}", &[("plural", "nodes")], None), AllowIf(Relation::BodyNamesNode)),
            (
                attrs(Method::POST, "/api/v1/{plural}/{name}/certificate", &[("plural", "nodes"), ("name", "a")], None),
                Allow,
            ),
            (
                attrs(Method::POST, "/api/v1/{plural}/{name}/certificate", &[("plural", "nodes"), ("name", "b")], None),
                Deny,
            ),
            (
                attrs(Method::GET, "/api/v1/{plural}", &[("plural", "pods")], Some("fieldSelector=spec.nodeName%3Da")),
                Allow,
            ),
            (
                attrs(
                    Method::GET,
                    "/api/v1/{plural}",
                    &[("plural", "pods")],
                    Some("watch=1&fieldSelector=spec.nodeName==a"),
                ),
                Allow,
            ),
            (
                attrs(Method::GET, "/api/v1/{plural}", &[("plural", "pods")], Some("fieldSelector=spec.nodeName=b")),
                Deny,
            ),
            (attrs(Method::GET, "/api/v1/{plural}", &[("plural", "pods")], None), Deny),
            (
                attrs(
                    Method::GET,
                    "/api/v1/namespaces/{ns}/{plural}/{name}",
                    &[ns, ("plural", "pods"), ("name", "p")],
                    None,
                ),
                AllowIf(Relation::PodOnNode),
            ),
            (
                attrs(
                    Method::PUT,
                    "/api/v1/namespaces/{ns}/{plural}/{name}/status",
                    &[ns, ("plural", "pods"), ("name", "p")],
                    None,
                ),
                AllowIf(Relation::PodOnNode),
            ),
            (
                attrs(
                    Method::PUT,
                    "/api/v1/namespaces/{ns}/{plural}/{name}",
                    &[ns, ("plural", "pods"), ("name", "p")],
                    None,
                ),
                Deny,
            ),
            (attrs(Method::GET, "/api/v1/namespaces/{ns}/pods/{name}/log", &[ns, ("name", "p")], None), Deny),
            (
                attrs(
                    Method::GET,
                    "/api/v1/namespaces/{ns}/{plural}/{name}",
                    &[ns, ("plural", "secrets"), ("name", "s")],
                    None,
                ),
                AllowIf(Relation::ConfigUsedOnNode),
            ),
            (attrs(Method::GET, "/api/v1/namespaces/{ns}/{plural}", &[ns, ("plural", "secrets")], None), Deny),
            (attrs(Method::POST, "/api/v1/namespaces/{ns}/{plural}", &[ns, ("plural", "deployments")], None), Deny),
            (attrs(Method::POST, "/api/v1/apply", &[], None), Deny),
            (attrs(Method::GET, "/api/v1/tokens", &[], None), Deny),
            (attrs(Method::GET, "/discovery/v1/snapshot", &[], None), Deny),
        ];
        for (a, want) in cases {
            assert_eq!(decide(&node(), &a), want, "{a:?}");
        }
    }

    #[test]
    fn proxy_and_admin_rules() {
        let proxy = Identity::Proxy { token_id: "0123456789ab".into() };
        let admin = Identity::Admin { token_id: None };
        let snapshot = attrs(Method::GET, "/discovery/v1/snapshot", &[], None);
        let secrets =
            attrs(Method::GET, "/api/v1/namespaces/{ns}/{plural}", &[("ns", "d"), ("plural", "secrets")], None);
        assert_eq!(decide(&proxy, &snapshot), Decision::Allow);
        assert_eq!(decide(&proxy, &secrets), Decision::Deny);
        assert_eq!(decide(&admin, &secrets), Decision::Allow);
        assert_eq!(
            decide(&admin, &attrs(Method::DELETE, "/api/v1/tokens/{id}", &[("id", "x")], None)),
            Decision::Allow
        );
    }

    #[test]
    fn forbidden_speaks_kubernetes() {
        let a = attrs(
            Method::GET,
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            &[("ns", "default"), ("plural", "pods"), ("name", "x")],
            None,
        );
        let e = forbidden(&Identity::Node { node: "node-1".into(), token_id: "t".into() }, &a, None);
        assert_eq!(
            e.message,
            "pods \"x\" is forbidden: User \"system:node:node-1\" cannot get resource \"pods\" in the namespace \"default\""
        );
        assert_eq!(e.details, Some(json!({"name": "x", "kind": "pods"})));
        let list = attrs(Method::GET, "/api/v1/{plural}", &[("plural", "nodes")], None);
        let e = forbidden(&Identity::Proxy { token_id: "p".into() }, &list, None);
        assert_eq!(
            e.message,
            "nodes is forbidden: User \"berth:proxy:p\" cannot list resource \"nodes\" at the cluster scope"
        );
        let bad =
            Attributes::of(&Method::GET, "/api/v1/{plural}", &[("plural", "pods")], "/", Some("fieldSelector=x=y"));
        assert!(bad.unwrap_err().message.contains("fieldSelector"));
    }
}
