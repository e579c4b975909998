//! Berth's control plane: the durable [`store`] and its backends, the HTTP [`api`] server, the [`scheduler`] and
//! the [`controllers`], and [`ha`], which decides which of several replicas runs the scheduler and controllers. It decides and writes; the node agent and the data plane read what it writes.
//!
//! Boundary: object kinds, manifests and store keys come from the `model` crate; this crate depends on no
//! agent, runtime or proxy code. Request load reaches the autoscaler only through
//! [`controllers::LoadSource`].

pub mod api;
pub mod ca;
pub mod controllers;
pub mod ha;
pub mod scheduler;
pub mod store;
