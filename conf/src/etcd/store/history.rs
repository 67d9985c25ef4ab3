//! The history of the weights overrides, audited or not, and `undo`.
//!
//! etcd keeps every revision of a key until it is compacted; a watch that
//! starts at an old revision replays them. [`Store::history`] replays the
//! `routes/*/weights` keys and pairs each change with the audit record
//! written in its transaction (same revision). A change with no record was
//! made around the tools (a raw `etcdctl put`) and is reported as
//! unaudited.

use std::collections::{BTreeMap, HashMap};

use etcd_client::{EventType, WatchOptions};
use serde::Serialize;

use super::audited::{WeightsChange, Write};

use super::{Store, StoreError};
use crate::etcd::EtcdError;
use crate::etcd::audit::Recorded;
use crate::etcd::layout::{self, KeyKind};

/// How long the history replay waits for etcd before asking for progress.
const QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// One change of a route's weights override.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The route.
    pub route: String,
    /// The etcd revision of the change.
    pub revision: i64,
    /// The override after the change (`None`: deleted, the route
    /// document's weights apply; unreadable values are kept raw).
    pub weights: Option<serde_json::Value>,
    /// The audit record written with it; `None`: unaudited.
    pub audit: Option<Recorded>,
}

/// The weights history.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    /// Changes of the weights overrides, oldest first.
    pub changes: Vec<Change>,
    /// Audit records that are not weights changes (imports, cleared
    /// rollbacks), oldest first.
    pub other: Vec<Recorded>,
    /// etcd no longer holds revisions before this one (compacted): changes
    /// older than it are known only from their audit records. 0: none lost.
    pub compacted: i64,
    /// The store revision the history reaches.
    pub revision: i64,
}

impl History {
    /// Changes made around the tools.
    pub fn unaudited(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.audit.is_none())
    }
}

fn value_of(raw: &[u8]) -> serde_json::Value {
    match layout::parse_weights(raw) {
        Ok(w) => serde_json::to_value(w).unwrap_or_default(),
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(raw).into_owned()),
    }
}

impl Store {
    /// Every change of the weights overrides after revision `since` (0:
    /// all that etcd still holds), of `route` or of every route, with the
    /// audit record of each.
    pub async fn history(
        &mut self,
        route: Option<&str>,
        since: i64,
    ) -> Result<History, StoreError> {
        let log = self.audit().await?;
        let now = log.revision;
        // The newest change the replay must reach: etcd 3.4 answers a
        // progress request at once, even while the watch is still replaying
        // the past, so a progress answer alone does not mean the replay is
        // done. The overrides that exist now and every audited change give
        // revisions that the replay must have passed.
        let read = self.read().await?;
        let must_reach = read
            .entries
            .iter()
            .filter(|(k, _)| matches!(KeyKind::parse(k), Some(KeyKind::Weights(_))))
            .map(|(_, e)| e.mod_revision)
            .chain(
                log.records
                    .iter()
                    .filter(|r| r.record.action.starts_with("weights."))
                    .map(|r| r.revision),
            )
            .filter(|r| *r > since)
            .max()
            .unwrap_or(0);
        let mut by_revision: HashMap<i64, Recorded> =
            log.records.into_iter().map(|r| (r.revision, r)).collect();
        let mut start = since + 1;
        let mut compacted = 0;
        let mut changes = Vec::new();
        'replay: loop {
            changes.clear();
            let mut reached_event = 0;
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(start.max(1))
                .with_progress_notify();
            let watch_key = self.key("routes/");
            let mut stream = self
                .settings
                .timed("watch", self.client.watch(watch_key, Some(options)))
                .await?;
            // etcd answers a progress request only once the watch has
            // replayed the past and caught up; until then it ignores it, so
            // it is asked again whenever the stream goes quiet.
            let mut quiet_since = std::time::Instant::now();
            loop {
                let msg = match tokio::time::timeout(QUIET, stream.message()).await {
                    Err(_) => {
                        if quiet_since.elapsed() > self.settings.request_timeout {
                            return Err(StoreError::Etcd(EtcdError::Timeout("watch")));
                        }
                        stream.request_progress().await.map_err(|e| {
                            EtcdError::request("watch", &self.settings.endpoints, e)
                        })?;
                        continue;
                    }
                    Ok(m) => {
                        m.map_err(|e| EtcdError::request("watch", &self.settings.endpoints, e))?
                    }
                };
                quiet_since = std::time::Instant::now();
                let Some(msg) = msg else {
                    return Err(StoreError::Etcd(EtcdError::Closed));
                };
                if msg.compact_revision() > 0 {
                    compacted = msg.compact_revision();
                    start = compacted;
                    continue 'replay;
                }
                if msg.canceled() {
                    return Err(StoreError::Refused(format!(
                        "etcd cancelled the history watch: {}",
                        msg.cancel_reason()
                    )));
                }
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    reached_event = reached_event.max(kv.mod_revision());
                    let Some(rel) = self.settings.relative(kv.key()) else {
                        continue;
                    };
                    let Some(KeyKind::Weights(r)) = KeyKind::parse(&rel) else {
                        continue;
                    };
                    if route.is_some_and(|want| want != r) {
                        continue;
                    }
                    changes.push(Change {
                        route: r.to_owned(),
                        revision: kv.mod_revision(),
                        weights: match ev.event_type() {
                            EventType::Put => Some(value_of(kv.value())),
                            EventType::Delete => None,
                        },
                        audit: None,
                    });
                }
                let reached = msg.header().map_or(0, |h| h.revision());
                if msg.events().is_empty()
                    && !msg.created()
                    && reached >= now
                    && (must_reach < start || reached_event >= must_reach)
                {
                    break 'replay;
                }
            }
        }
        for c in &mut changes {
            c.audit = by_revision.remove(&c.revision);
        }
        let mut other: Vec<Recorded> = by_revision
            .into_values()
            .filter(|r| r.revision > since)
            .filter(|r| {
                route.is_none() || r.record.route.as_deref() == route || r.record.route.is_none()
            })
            .filter(|r| !r.record.action.starts_with("weights.") || r.revision < compacted)
            .collect();
        other.sort_by_key(|r| r.record.seq);
        Ok(History {
            changes,
            other,
            compacted,
            revision: now,
        })
    }

    /// Restores the weights override `route` had before its last change
    /// (deleting the override when there was none), through the same
    /// compare-and-swap and audit as [`Store::set_weights`]. Refused when
    /// etcd no longer holds the previous state (compacted) or the route's
    /// weights were never changed.
    pub async fn undo(&mut self, route: &str, write: &Write) -> Result<WeightsChange, StoreError> {
        let history = self.history(Some(route), 0).await?;
        let n = history.changes.len();
        let Some(last) = history.changes.last() else {
            return Err(StoreError::Refused(format!(
                "route {route:?} has no weights change to undo{}",
                if history.compacted > 0 {
                    format!(" (etcd holds revisions from {} on)", history.compacted)
                } else {
                    String::new()
                }
            )));
        };
        let previous: Option<BTreeMap<String, i64>> = match n {
            1 if history.compacted > 0 => {
                return Err(StoreError::Refused(format!(
                    "the weights of {route:?} before revision {} are compacted away; set them with `weights set`",
                    last.revision
                )));
            }
            1 => None,
            _ => match &history.changes[n - 2].weights {
                None => None,
                Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
                    StoreError::Refused(format!(
                        "the weights of {route:?} before revision {} were not valid: {v}",
                        last.revision
                    ))
                })?),
            },
        };
        let expected = match last.weights {
            Some(_) => last.revision,
            None => 0,
        };
        let write =
            Write {
                expect: Some(write.expect.unwrap_or(expected)),
                reason: Some(write.reason.clone().unwrap_or_else(|| {
                    format!("undo of the change at revision {}", last.revision)
                })),
                ..write.clone()
            };
        self.put_weights(route, &write, "weights.undo", |_, _| Ok(previous.clone()))
            .await
    }
}
