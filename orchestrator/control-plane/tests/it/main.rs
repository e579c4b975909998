//! Integration tests of the control plane (store backends, scheduler, controllers, API and the registry mirror
//! over it), in one test binary.

mod api_auth;
mod api_cluster_ip;
mod api_ha;
mod cluster_ca;
mod controllers_config;
mod controllers_deployment;
mod controllers_pure;
mod controllers_runner;
#[cfg(feature = "etcd")]
mod etcd_process;
#[cfg(feature = "etcd")]
mod ha_etcd;
mod ha_sole;
mod mirror;
mod scheduler_store;
mod store_conformance;
mod store_durability;
