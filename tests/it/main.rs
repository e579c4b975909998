//! End-to-end tests of the `berth` binary: each module starts real `berth` processes on loopback port 0.
//! One test binary for the whole package, so the workspace links once instead of once per file.

mod agent_cli;
mod agent_docker_cli;
mod api_cli;
mod autoscale;
mod cluster;
mod common;
mod config_delivery;
mod controllers_e2e;
mod dataplane;
mod durability;
mod e2e;
mod ha;
mod multi_server;
mod node_cli;
mod scheduling;
mod security;
mod tour;
mod up;
mod watch;
