//! Which gateway replicas are live and what each serves: every gateway
//! following etcd keeps a [`ReplicaStatus`] at `<prefix>-status/<replica>`
//! under a lease (see [`super::Presence`]), updated when what it serves
//! changes; a replica that dies disappears when its lease ends.
//!
//! Like the audit log, these keys sit beside the config prefix, not under
//! it, so that writing them never makes a gateway rebuild.

use serde::{Deserialize, Serialize};

/// The status prefix that goes with a config prefix: `/weir/` → `/weir-status/`.
pub fn status_prefix(config_prefix: &str) -> String {
    format!("{}-status/", config_prefix.trim_end_matches('/'))
}

/// What one gateway replica reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica (`host:proxy-port`, unique per process).
    pub replica: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The proxy listener's address.
    pub proxy: String,
    /// The admin listener's address.
    pub admin: String,
    /// The gateway's version.
    pub version: String,
    /// Where the config it serves came from: `etcd`, `etcd-cache`, `file`.
    pub source: String,
    /// The etcd revision of the config it serves (none: not from etcd).
    pub revision: Option<i64>,
    /// The runtime generation it serves.
    pub generation: u64,
    /// Whether it is ready (`/readyz` 200).
    pub ready: bool,
    /// Its `/readyz` detail: why it serves what it serves, when not the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it started (Unix seconds).
    pub started: u64,
}
