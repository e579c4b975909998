//! Berth's control plane: the workload object model and manifests, the durable store, the API server,
//! the scheduler, the controllers and the node agent.

pub mod agent;
pub mod api;
pub mod client;
pub mod clock;
pub mod controllers;
pub mod echo;
pub mod model;
pub mod scheduler;
pub mod store;
