//! Berth's object model: every kind in its Kubernetes shape, manifest parsing and validation, the store keys
//! objects are addressed by, the few wire types clients share with the API server, and the injected clock.
//!
//! Plain data and pure functions (serde only): no runtime, no IO, so the API server, the controllers, the agent
//! and the CLI all decode the same types, and this crate's tests build without a server.
//!
//! CONTRACT (API server and CLI rely on it; the model owner fills it in):
//! - [`Kind`]: every kind Berth stores, with its plural (the store key and API path segment), whether it is
//!   namespaced, and the names the CLI accepts (singular, plural, short);
//! - `manifest::parse(source_name, text) -> Result<Vec<Document>, ManifestError>`: YAML or JSON, several
//!   documents; Kubernetes kinds (`apps/v1` Deployment, `v1` Pod/Service/ConfigMap/Secret,
//!   `networking.k8s.io/v1` Ingress read as Route, `autoscaling/v2` HorizontalPodAutoscaler read as Autoscaler)
//!   and Berth's own (`berth.dev/v1` Route, Autoscaler, Node); errors name the source, document index and field
//!   path; known-but-unimplemented Kubernetes fields become warnings;
//! - `decode(kind, json) -> Result<Document, ManifestError>` validates one API body the same way.
//! - A `Document`'s `object` is the normalized JSON that gets stored (apiVersion/kind/metadata/spec[/status]).
//!
//! Strict in, lenient out: [`manifest`] rejects fields a kind does not know (with their path), but the types
//! themselves accept and drop them, so that agents and controllers decode stored objects with these very types
//! (`serde_json::from_value`) and a field added by a later version never breaks them. For the same reason
//! `apiVersion` and `kind` default to empty when absent; manifest decoding requires them on the raw document.
//! Fields Kubernetes has and Berth does not implement are typed [`Ignored`], kept, and produce a warning.
//!
//! Normalized form: the typed object serialized back, with defaults filled in (replicas 1, RollingUpdate
//! 25%/25%, probe periods, restart policy `Always`, protocol `TCP`, autoscaler behavior...), Secret
//! `stringData` folded into base64 `data`, `metadata.namespace` set for namespaced kinds. ConfigMap and Secret
//! keep their Kubernetes top-level `data`/`binaryData`/`type` instead of a `spec`. Normalizing is idempotent,
//! so `decode(Some(kind), doc.object)` gives back `doc.object`, and comparing normalized objects tells whether
//! an apply changes anything.
//!
//! Berth's additions to Kubernetes shapes (all optional, all in this module's types):
//! - Service `spec.loadBalancing {policy: p2c|roundRobin|weightedRoundRobin|leastRequest|consistentHash,
//!   hashOn: {header|cookie|clientIP}}`, `spec.healthCheck {path, intervalMs, timeoutMs, healthyThreshold,
//!   unhealthyThreshold}` and `spec.retry {onStatuses: [502, 503, 504]}`;
//! - `berth.dev/v1` Route (`spec.hosts`, `spec.rules[] {hosts, path {exact|prefix}, methods, headers, backend
//!   {service, port}, rewrite {prefix}, requestHeaders {add, remove}, rateLimit {requestsPerSecond}}`,
//!   `defaultBackend`, `tls[] {hosts, secretName}`) and Autoscaler (see `autoscaler.rs`);
//! - status fields written by Berth itself: Node `status.heartbeatTime`, Pod
//!   `status.containerStatuses[].ports[] {name, containerPort, hostPort}` (where the endpoint really listens);
//! - annotation `berth.dev/rollout-on-config-change: "true"` on a Deployment ([`well_known`]).
//!
//! Not here: storage (the control plane's `store`), and the data-plane types, which live in `discovery`; the `to_discovery`
//! conversions on [`Service`] and [`Route`] bridge the two.

pub mod auth;
pub mod autoscaler;
pub mod clock;
pub mod config;
pub mod container;
pub mod deployment;
pub mod key;
pub mod manifest;
pub mod meta;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod resources;
pub mod revision;
pub mod rollout;
pub mod scheduling;
pub mod service;
pub mod wire;

pub use autoscaler::*;
pub use config::*;
pub use container::*;
pub use deployment::*;
pub use key::{Key, Prefix};
pub use manifest::{decode, decode_in, Document, ManifestError, ManifestErrorKind};
pub use meta::*;
pub use node::*;
pub use pod::*;
pub use quantity::{Quantity, QuantityError};
pub use resources::*;
pub use revision::RevisionRecord;
pub use scheduling::*;
pub use service::*;

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// Every kind Berth stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Node,
    Deployment,
    Pod,
    Service,
    Route,
    ConfigMap,
    Secret,
    Autoscaler,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::Deployment,
        Kind::Pod,
        Kind::Service,
        Kind::Route,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Autoscaler,
    ];

    /// The store key and API path segment: `nodes`, `deployments`, `pods`, `services`, `routes`,
    /// `configmaps`, `secrets`, `autoscalers`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Deployment => "deployments",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Route => "routes",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::Autoscaler => "autoscalers",
        }
    }

    /// Lower-case singular (`deployment`), as kubectl prints it in `deployment/web`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Deployment => "deployment",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Route => "route",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
            Kind::Autoscaler => "autoscaler",
        }
    }

    /// Only nodes are cluster-scoped.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node)
    }

    /// The apiVersion of the stored (normalized) form.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Node | Kind::Pod | Kind::Service | Kind::ConfigMap | Kind::Secret => "v1",
            Kind::Deployment => "apps/v1",
            Kind::Route | Kind::Autoscaler => "berth.dev/v1",
        }
    }

    /// The `kind` field of the stored form (`Deployment`, `ConfigMap`...).
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Deployment => "Deployment",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Route => "Route",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Autoscaler => "Autoscaler",
        }
    }

    /// Short names accepted by the CLI besides singular and plural.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Node => &["no"],
            Kind::Deployment => &["deploy"],
            Kind::Pod => &["po"],
            Kind::Service => &["svc"],
            Kind::Route => &["rt", "ingress", "ingresses", "ing"],
            Kind::ConfigMap => &["cm"],
            Kind::Secret => &[],
            Kind::Autoscaler => &["hpa", "horizontalpodautoscaler", "horizontalpodautoscalers"],
        }
    }

    /// Case-insensitive singular, plural or short name (`po`, `deploy`, `svc`, `no`, `cm`, `hpa`...);
    /// also the kind name itself (`Deployment`). Endpoints are not a stored kind: see [`Resource`].
    pub fn from_cli_name(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| k.singular() == s || k.plural() == s || k.short_names().contains(&s.as_str()))
    }

    /// The kind whose plural this is (`deployments` -> Deployment), for API paths and store keys.
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind_name())
    }
}

/// What the CLI can name: a stored [`Kind`], or the endpoints the API serves from the discovery registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Kind(Kind),
    /// `endpoints`, `endpoint`, `ep`: read-only, served from the registry, never stored.
    Endpoints,
}

impl Resource {
    pub fn from_cli_name(s: &str) -> Option<Resource> {
        match s.to_ascii_lowercase().as_str() {
            "endpoints" | "endpoint" | "ep" => Some(Resource::Endpoints),
            _ => Kind::from_cli_name(s).map(Resource::Kind),
        }
    }

    /// Every accepted name, for a help or error message.
    pub fn all_cli_names() -> String {
        let mut names: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let mut v = vec![k.singular(), k.plural()];
                v.extend(k.short_names().iter().take(1));
                v.join("|")
            })
            .collect();
        names.push("endpoints|ep".into());
        names.join(", ")
    }
}

/// A typed object of one [`Kind`] (all of them are `apiVersion`/`kind`/`metadata`/...).
pub trait Object: Serialize + DeserializeOwned + Clone + fmt::Debug {
    const KIND: Kind;
    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// Set `apiVersion` and `kind` to this kind's stored form.
    fn set_type_meta(&mut self);
}

macro_rules! impl_object {
    ($($t:ty => $k:expr),* $(,)?) => {$(
        impl Object for $t {
            const KIND: Kind = $k;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
            fn set_type_meta(&mut self) {
                self.api_version = $k.api_version().to_string();
                self.kind = $k.kind_name().to_string();
            }
        }
    )*};
}

impl_object!(
    Node => Kind::Node,
    Deployment => Kind::Deployment,
    Pod => Kind::Pod,
    Service => Kind::Service,
    Route => Kind::Route,
    ConfigMap => Kind::ConfigMap,
    Secret => Kind::Secret,
    Autoscaler => Kind::Autoscaler,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names() {
        let table = [
            ("pod", Kind::Pod),
            ("pods", Kind::Pod),
            ("po", Kind::Pod),
            ("deployment", Kind::Deployment),
            ("deployments", Kind::Deployment),
            ("deploy", Kind::Deployment),
            ("service", Kind::Service),
            ("svc", Kind::Service),
            ("node", Kind::Node),
            ("no", Kind::Node),
            ("route", Kind::Route),
            ("routes", Kind::Route),
            ("autoscaler", Kind::Autoscaler),
            ("hpa", Kind::Autoscaler),
            ("configmap", Kind::ConfigMap),
            ("cm", Kind::ConfigMap),
            ("secret", Kind::Secret),
            ("secrets", Kind::Secret),
            ("Deployment", Kind::Deployment),
        ];
        for (name, kind) in table {
            assert_eq!(Kind::from_cli_name(name), Some(kind), "{name}");
            assert_eq!(Resource::from_cli_name(name), Some(Resource::Kind(kind)), "{name}");
        }
        assert_eq!(Kind::from_cli_name("ep"), None);
        assert_eq!(Resource::from_cli_name("ep"), Some(Resource::Endpoints));
        assert_eq!(Resource::from_cli_name("endpoints"), Some(Resource::Endpoints));
        assert_eq!(Kind::from_cli_name("statefulset"), None);
        for k in Kind::ALL {
            assert_eq!(Kind::from_plural(k.plural()), Some(k));
        }
        assert!(!Kind::Node.namespaced());
        assert!(Kind::Pod.namespaced());
    }
}
