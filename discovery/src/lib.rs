//! Discovery: Berth's data-plane view of the world.
//!
//! Labels and label selectors (Kubernetes syntax), the [`Service`], [`Endpoint`] and [`Route`] types, and the
//! [`Registry`]: a concurrent, versioned store of those objects with an inverted label index, immutable
//! snapshots and resumable watches. The proxy and the DNS server read it; the orchestrator's endpoints
//! controller writes it.
//!
//! Features: `registry` (the [`Registry`]) and `dns` (the DNS server; implies `registry`; default). Without
//! them the crate is plain data with no runtime, which is what the object model depends on.
//!
//! Boundary: this crate knows nothing about containers, nodes, pods or schedulers.

#[cfg(feature = "dns")]
pub mod dns;
pub mod labels;
pub mod object;
#[cfg(feature = "registry")]
pub mod registry;
pub mod selector;
pub mod types;

pub use labels::{LabelError, Labels};
pub use object::{Change, Object, ObjectKey, ObjectKind, WatchEvent};
#[cfg(feature = "registry")]
pub use registry::{Registry, Snapshot, Watch};
pub use selector::{Operator, Requirement, Selector, SelectorError};
pub use types::*;
