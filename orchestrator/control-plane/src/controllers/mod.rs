//! The controllers that keep actual state equal to desired state: Deployments and rollouts
//! ([`deployment`]), node lifecycle ([`node`]), endpoints into the discovery registry ([`endpoints`]) and
//! replicas from request load ([`autoscaler`], reading a [`LoadSource`]).
//!
//! Each controller is a pure function over (desired, observed, now) returning actions, tested with a
//! simulated clock. [`reconcilers`] adapts each one to the [`driver`], the one loop that lists and watches the
//! store into typed caches, maps changes to keys, reconciles each key once per burst of events, requeues and
//! backs off, and writes with compare-and-swap. [`Controllers`] starts and stops them all together.
//!
//! Contract with the node agent: a pod object deleted from the store must be stopped by its agent, including
//! when the agent comes back after its node was declared lost and the pod was replaced elsewhere. A pod with
//! `metadata.deletionTimestamp` set is terminating: it is published as such (no new requests) and removed from
//! the store after the drain period; the agent may stop it then.

pub mod autoscaler;
pub mod deployment;
pub mod driver;
pub mod endpoints;
pub mod node;
pub mod reconcilers;
mod start;

pub use autoscaler::{AutoscalerConfig, LoadSample, LoadSource};
pub use start::{Controllers, ControllersConfig};
