//! Shapes that cross the wire between the API server and its clients besides the stored objects themselves:
//! the discovery snapshot a registry mirror starts from and the heartbeat of discovery watches.

/// How often an idle discovery watch sends an empty line, so a follower can tell a quiet stream from a dead
/// connection (it gives up after a few missed heartbeats). One second, so that a client with several servers
/// leaves a silent one within a few seconds (the mirror gives up after three).
pub const DISCOVERY_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /discovery/v1/snapshot`: every registry object at one revision, for a remote mirror to start from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DiscoverySnapshot {
    /// The registry instance; a watch resumed with another epoch gets a `Relist`.
    pub epoch: String,
    pub revision: u64,
    pub objects: Vec<discovery::Object>,
}
