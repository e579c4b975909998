//! Each controller as a [`Reconciler`](super::driver::Reconciler) over its pure decision function: what it
//! watches, which keys a change affects, and how a decision becomes store writes (or registry changes).
//!
//! A new controller goes here as one module: a pure decision function next to [`super::deployment`] and a
//! few dozen lines implementing the trait, started in [`super::Controllers::start_with_load`].

pub mod autoscaler;
pub mod deployment;
pub mod endpoints;
pub mod node;

pub use autoscaler::Autoscalers;
pub use deployment::Deployments;
pub use endpoints::Endpoints;
pub use node::NodeLifecycle;
