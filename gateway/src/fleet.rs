//! This replica's status in etcd, for `weirctl status`: a
//! [`ReplicaStatus`] at `<prefix>-status/<host>@<proxy address>` under a
//! lease of `[source.etcd] status_ttl_seconds`, rewritten whenever what the
//! gateway serves changes (a publish, readiness, the `/readyz` note), and
//! deleted at a clean shutdown. A replica that dies disappears when its
//! lease ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weir_conf::etcd::fleet::{ReplicaStatus, status_prefix};
use weir_conf::etcd::{EtcdSettings, Presence};

use crate::state::Shared;

/// Where this replica reports, and what it reports.
pub struct Reporter {
    /// The shared state it describes.
    pub shared: Arc<Shared>,
    /// The etcd the config comes from.
    pub settings: EtcdSettings,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// This host's name.
    pub host: String,
}

impl Reporter {
    fn status(&self, started: u64) -> ReplicaStatus {
        let current = self.shared.current();
        ReplicaStatus {
            replica: format!("{}@{}", self.host, self.proxy),
            host: self.host.clone(),
            pid: std::process::id(),
            proxy: self.proxy.to_string(),
            admin: self.admin.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            source: current
                .as_ref()
                .map_or("none", |rt| rt.origin.kind())
                .to_owned(),
            revision: current.as_ref().and_then(|rt| rt.origin.revision()),
            generation: current.as_ref().map_or(0, |rt| rt.generation),
            ready: self.shared.is_ready(),
            detail: self.shared.note(),
            started,
        }
    }

    /// Keeps the status in etcd until `stop` says to stop; then deletes it.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = format!(
            "{}{}@{}",
            status_prefix(&self.settings.prefix),
            self.host,
            self.proxy
        );
        let encode = |s: &ReplicaStatus| serde_json::to_string(s).unwrap_or_default();
        let mut delay = Duration::from_millis(200);
        let mut presence = loop {
            let value = encode(&self.status(started));
            match Presence::start(
                self.settings.clone(),
                key.clone(),
                value,
                self.settings.status_ttl,
            )
            .await
            {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(key, error = %e, retry_in = ?delay, "cannot report this replica's status to etcd");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let mut last = self.status(started);
        loop {
            tokio::select! {
                _ = self.shared.changed.notified() => {}
                // A periodic look as well, for anything changed without a
                // notification (and to retry a failed write).
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.changed() => break,
            }
            let now = self.status(started);
            if now != last {
                match presence.set(encode(&now)).await {
                    Ok(()) => last = now,
                    Err(e) => {
                        tracing::warn!(key, error = %e, "cannot update this replica's status")
                    }
                }
            }
        }
        if let Err(e) = presence.remove().await {
            tracing::warn!(key, error = %e, "cannot remove this replica's status; it goes when its lease ends");
        }
    }
}
