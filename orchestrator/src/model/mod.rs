//! The workload object model (Kubernetes shapes) and manifest parsing/validation.
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
