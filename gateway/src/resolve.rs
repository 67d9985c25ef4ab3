//! Host names of backends, resolved off the request path.
//!
//! A pool backend written `HOST:PORT` becomes one backend per address the
//! name resolves to (A and AAAA records alike), each with the backend's
//! weight. [`Resolver::refresh`] looks names up (a `[server] hosts_file`
//! first, re-read every time, then the system resolver) and keeps the last
//! good addresses of a name that stops resolving, counting the failure in
//! `weir_resolve_failures_total{pool,name}` and logging it: a name that
//! fails is never a failed config. `source::watch_names` refreshes the live
//! config's names every pool's `resolve.refresh_ms` and rebuilds the
//! runtime when an answer changed, which keeps the breakers, health and
//! load of the addresses that stay (like any other config change).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use weir_conf::Snapshot;

use crate::metrics::Metrics;

/// Longest wait for one lookup.
const LOOKUP_LIMIT: Duration = Duration::from_secs(2);

/// A name and port, as a pool lists it.
pub type Name = (String, u16);

/// The addresses of every name looked up so far.
#[derive(Default)]
pub struct Resolver {
    table: Mutex<BTreeMap<Name, Vec<SocketAddr>>>,
}

impl Resolver {
    /// The addresses `name` resolved to last (empty if it never did).
    pub fn addrs(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        self.table
            .lock()
            .ok()
            .and_then(|t| t.get(&(host.to_owned(), port)).cloned())
            .unwrap_or_default()
    }

    /// Looks up the names of `snapshot`'s pools (`only_new`: just those
    /// never resolved); true when any answer changed. A failed lookup keeps
    /// the name's last good addresses.
    pub async fn refresh(&self, snapshot: &Snapshot, only_new: bool, metrics: &Metrics) -> bool {
        let hosts_file = snapshot.server.hosts_file.as_deref().map(Path::new);
        let mut wanted: BTreeMap<Name, &str> = BTreeMap::new();
        for p in &snapshot.pools {
            for n in &p.names {
                wanted.entry((n.host.clone(), n.port)).or_insert(&p.name);
            }
        }
        let mut changed = false;
        for ((host, port), pool) in wanted {
            let known = self
                .table
                .lock()
                .ok()
                .and_then(|t| t.get(&(host.clone(), port)).cloned());
            if only_new && known.is_some() {
                continue;
            }
            match lookup(hosts_file, &host, port).await {
                Ok(addrs) => {
                    if known.as_ref() != Some(&addrs) {
                        tracing::info!(pool, name = %host, port, addrs = ?addrs, "backend name resolved");
                        changed = true;
                        if let Ok(mut t) = self.table.lock() {
                            t.insert((host, port), addrs);
                        }
                    }
                }
                Err(e) => {
                    metrics
                        .resolve_failures
                        .with_label_values(&[pool, host.as_str()])
                        .inc();
                    tracing::warn!(
                        pool,
                        name = %host,
                        error = %e,
                        kept = known.as_ref().map_or(0, Vec::len),
                        "backend name did not resolve; keeping its last good addresses"
                    );
                }
            }
        }
        changed
    }
}

/// The addresses of `host:port`, sorted: from `hosts_file` when it lists
/// the name, else from the system resolver.
async fn lookup(
    hosts_file: Option<&Path>,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(file) = hosts_file {
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("hosts file {}: {e}", file.display()))?;
        let ips = from_hosts(&text, host);
        if !ips.is_empty() {
            return Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect());
        }
    }
    let found = tokio::time::timeout(LOOKUP_LIMIT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("no answer within {LOOKUP_LIMIT:?}"))?
        .map_err(|e| e.to_string())?;
    let addrs: BTreeSet<SocketAddr> = found.collect();
    if addrs.is_empty() {
        return Err("no address".to_owned());
    }
    Ok(addrs.into_iter().collect())
}

/// The addresses a hosts(5) text gives `host` (sorted, without repeats).
fn from_hosts(text: &str, host: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_name_addresses() {
        let text = "# comment\n127.0.0.1 localhost\n10.0.0.7  vllm.test other # x\n::1 vllm.test\nbad line\n";
        let ips: Vec<String> = from_hosts(text, "VLLM.test")
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ips, ["10.0.0.7", "::1"]);
        assert!(from_hosts(text, "nothere").is_empty());
    }
}
