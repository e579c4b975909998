//! Discovery: Berth's data-plane view of the world.
//!
//! Labels and label selectors (Kubernetes syntax), the [`Service`], [`Endpoint`] and [`Route`] types, and the
//! [`Registry`]: a concurrent, versioned store of those objects with an inverted label index, immutable
//! snapshots and resumable watches. The proxy and the DNS server read it; the orchestrator's endpoints
//! controller writes it.
//!
//! Boundary: this crate knows nothing about containers, nodes, pods or schedulers.

pub mod labels;
pub mod registry;
pub mod selector;
pub mod types;

pub use labels::{Labels, LabelError};
pub use registry::{Change, Object, ObjectKey, ObjectKind, Registry, Snapshot, Watch, WatchEvent};
pub use selector::{Operator, Requirement, Selector, SelectorError};
pub use types::*;
