//! Validated reads and writes of the config in etcd, for operators
//! (`weirctl`): arm weights with a compare-and-swap, whole-config import and
//! export, and a check of what the gateways would build.
//!
//! Every write is validated the way the gateway validates: the documents
//! after the write are assembled and built into a snapshot first, and a write
//! that would add a problem is refused with the problem list instead.
//!
//! An invalid key under the prefix (a bad raw `etcdctl put`) does not lock
//! operators out: reads leave it out and return it with the result
//! ([`Weights::problems`], [`Exported::problems`]), and writes that add no
//! problem of their own go ahead. Gateways apply the result once the invalid
//! key is fixed or deleted.

pub mod audited;
pub mod history;
pub mod import;

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, TxnOp};
use serde::Serialize;

use self::audited::Missed;
pub use self::audited::{AuditLog, Write, Written};
use super::audit;
use super::error::EtcdError;
use super::layout::{self, Docs, KeyKind, Members};
use super::settings::EtcdSettings;
use super::snapshot::{build, summary};
use crate::error::{ConfigError, Problems};
use crate::model::{Config, PoolConfig, RouteConfig, TimeoutsConfig};
use crate::resilience::types::RollbackRecord;
use crate::snapshot::Snapshot;

/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Why an operator request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The request was refused before anything was written.
    #[error("refused: {0}")]
    Refused(String),
    /// The write would make the config invalid, or the config in etcd already is.
    #[error("refused, the config would be invalid: {0}")]
    Invalid(ConfigError),
    /// An import would delete keys the config does not hold, and deleting
    /// was not asked for ([`import::Prune::Refuse`]).
    #[error(
        "refused: the import would delete {} key(s) that the config does not hold: {}",
        keys.len(),
        keys.join(", ")
    )]
    WouldDelete {
        /// The relative keys it would delete.
        keys: Vec<String>,
    },
    /// Someone else changed a key between our read and our write.
    #[error("{}", conflict_message(key, *expected, *actual))]
    Conflict {
        /// The full key (or the prefix, for an import).
        key: String,
        /// The modification revision the write expected.
        expected: i64,
        /// Its modification revision now (0 = deleted), when known.
        actual: Option<i64>,
    },
}

fn conflict_message(key: &str, expected: i64, actual: Option<i64>) -> String {
    let now = match actual {
        Some(0) => " (now deleted)".to_owned(),
        Some(a) => format!(" (now at revision {a})"),
        None => String::new(),
    };
    format!("conflict: {key} changed since revision {expected}{now}; read it again and retry")
}

/// One key's value and modification revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The raw value.
    pub value: Vec<u8>,
    /// The revision of its last modification.
    pub mod_revision: i64,
}

/// Everything under the prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The store revision of the read.
    pub revision: i64,
    /// Relative key → entry.
    pub entries: BTreeMap<String, Entry>,
}

impl Read {
    /// The documents without revisions.
    pub fn docs(&self) -> Docs {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// Modification revision of `key` (0 when absent).
    pub fn mod_revision(&self, key: &str) -> i64 {
        self.entries.get(key).map(|e| e.mod_revision).unwrap_or(0)
    }
}

/// A route's effective arm weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Weights {
    /// The route.
    pub route: String,
    /// Arm name → effective weight, in the route's arm order.
    pub arms: Vec<(String, i64)>,
    /// Whether a `routes/<route>/weights` key overrides the route document.
    pub overridden: bool,
    /// Modification revision of the weights key (0 = no such key): pass it
    /// as the expected revision of the next write.
    pub mod_revision: i64,
    /// The store revision these weights were read at.
    pub revision: i64,
    /// Problems of the config in etcd at that revision, each named by its
    /// key (the invalid keys); gateways apply nothing newer until they are
    /// fixed.
    #[serde(skip)]
    pub problems: Problems,
}

/// What a weights write did (or, with a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct WeightsChange {
    /// The weights before.
    pub before: Weights,
    /// The weights after (with a dry run: what they would be).
    pub after: Weights,
    /// Nothing was written.
    pub dry_run: bool,
    /// The write's revision and audit record (none with a dry run).
    pub written: Option<Written>,
}

/// A route's effective weights as the audit log records them.
fn weights_json(w: &Weights) -> serde_json::Value {
    serde_json::Value::Object(
        w.arms
            .iter()
            .map(|(a, n)| (a.clone(), serde_json::Value::from(*n)))
            .collect(),
    )
}

/// The operator's config in etcd, as export reads it.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The readable documents, weights applied, members left out.
    pub config: Config,
    /// The store revision of the read.
    pub revision: i64,
    /// Problems of the config at that revision, each named by its key; the
    /// documents of invalid keys are not in `config`.
    pub problems: Problems,
}

/// The operator's part of a config, as export writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Portable<'a> {
    /// Default timeouts.
    pub timeouts: &'a TimeoutsConfig,
    /// Pools (static backends only).
    pub pools: &'a [PoolConfig],
    /// Routes, weights overrides applied.
    pub routes: &'a [RouteConfig],
    /// Content filters.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub filters: &'a [crate::filters::types::FilterConfig],
    /// Tenants (API key digests and limits).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tenants: &'a [crate::access::types::TenantConfig],
    /// JWT issuers.
    #[serde(skip_serializing_if = "crate::access::types::AuthConfig::is_empty")]
    pub auth: &'a crate::access::types::AuthConfig,
}

impl<'a> Portable<'a> {
    /// The exportable part of `config`.
    pub fn of(config: &'a Config) -> Self {
        Self {
            timeouts: &config.timeouts,
            pools: &config.pools,
            routes: &config.routes,
            filters: &config.filters,
            tenants: &config.tenants,
            auth: &config.auth,
        }
    }
}

/// A connection to the config in etcd.
pub struct Store {
    settings: EtcdSettings,
    client: Client,
}

impl Store {
    /// Connects (lazily: the first request shows whether etcd is reachable).
    pub async fn connect(settings: EtcdSettings) -> Result<Self, StoreError> {
        let client = settings.connect().await?;
        Ok(Self { settings, client })
    }

    /// The settings in use.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    /// The full key of a relative key.
    pub fn key(&self, relative: &str) -> String {
        self.settings.key(relative)
    }

    /// Reads everything under the prefix.
    pub async fn read(&mut self) -> Result<Read, StoreError> {
        let resp = self.settings.get_prefix(&mut self.client).await?;
        let entries = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let entry = Entry {
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                };
                Some((self.settings.relative(kv.key())?, entry))
            })
            .collect();
        Ok(Read {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            entries,
        })
    }

    /// The config that the readable documents of `docs` make (invalid
    /// documents left out; [`Store::problems`] names them).
    fn readable(&self, docs: &Docs, members: Members) -> Config {
        layout::gather(&Config::default(), docs, &self.settings.prefix, members).0
    }

    /// Every problem a gateway would report for `docs` (none when valid).
    fn problems(&self, docs: &Docs) -> Problems {
        match build(&Config::default(), docs, &self.settings.prefix) {
            Ok(_) => Problems::default(),
            Err(ConfigError::Invalid { problems }) => problems,
            Err(e) => {
                let mut problems = Problems::default();
                problems.push(self.settings.prefix.clone(), e.to_string());
                problems
            }
        }
    }

    /// Builds what a gateway would build from etcd now.
    pub async fn check(&mut self) -> Result<(Snapshot, i64), StoreError> {
        let read = self.read().await?;
        let snapshot = build(&Config::default(), &read.docs(), &self.settings.prefix)
            .map_err(StoreError::Invalid)?;
        Ok((snapshot, read.revision))
    }

    /// The operator's config in etcd (weights applied, members left out);
    /// the documents of invalid keys are left out and named.
    pub async fn export(&mut self) -> Result<Exported, StoreError> {
        let read = self.read().await?;
        let docs = read.docs();
        Ok(Exported {
            config: self.readable(&docs, Members::Ignore),
            revision: read.revision,
            problems: self.problems(&docs),
        })
    }

    /// The effective weights of `route`.
    pub async fn weights(&mut self, route: &str) -> Result<Weights, StoreError> {
        let read = self.read().await?;
        self.weights_in(&read, route)
    }

    fn weights_in(&self, read: &Read, route: &str) -> Result<Weights, StoreError> {
        let docs = read.docs();
        let problems = self.problems(&docs);
        let config = self.readable(&docs, Members::Merge);
        let r = find_route(&config, route, &problems)?;
        let key = layout::weights_key(route);
        Ok(Weights {
            route: route.to_owned(),
            arms: r.arms.iter().map(|a| (a.name.clone(), a.weight)).collect(),
            overridden: read.entries.contains_key(&key),
            mod_revision: read.mod_revision(&key),
            revision: read.revision,
            problems,
        })
    }

    /// Sets arm weights of `route` (arms not named keep their weight), and
    /// records the change in the audit log in the same transaction.
    ///
    /// Refused, with nothing written, when the route or an arm is unknown, a
    /// weight is negative, or the write would add a problem to the config
    /// (problems it already has, such as an invalid key elsewhere, do not
    /// refuse it). The write is a compare-and-swap on the weights key's
    /// modification revision (`write.expect`, or the one just read) and on
    /// the route document's: if either changed meanwhile the result is
    /// [`StoreError::Conflict`]. With `write.dry_run` everything is checked
    /// and the result says what the weights would be; nothing is written.
    pub async fn set_weights(
        &mut self,
        route: &str,
        changes: &[(String, i64)],
        write: &Write,
    ) -> Result<WeightsChange, StoreError> {
        self.put_weights(route, write, "weights.set", |current, docs| {
            let r = find_route(current, route, &Problems::default())?;
            let arms: BTreeSet<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
            let mut refusals = Vec::new();
            if changes.is_empty() {
                refusals.push("name at least one ARM=WEIGHT".to_owned());
            }
            for (arm, w) in changes {
                if !arms.contains(arm.as_str()) {
                    refusals.push(format!(
                        "route {route:?} has no arm {arm:?} (arms: {})",
                        arms.iter().copied().collect::<Vec<_>>().join(", ")
                    ));
                }
                if *w < 0 {
                    refusals.push(format!("weight of {arm:?} must be >= 0, got {w}"));
                }
            }
            if !refusals.is_empty() {
                return Err(StoreError::Refused(refusals.join("; ")));
            }
            let mut weights: BTreeMap<String, i64> = match docs.get(&layout::weights_key(route)) {
                Some(raw) => layout::parse_weights(raw)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(a, _)| arms.contains(a.as_str()))
                    .collect(),
                None => BTreeMap::new(),
            };
            for (arm, w) in changes {
                weights.insert(arm.clone(), *w);
            }
            Ok(Some(weights))
        })
        .await
    }

    /// Writes `route`'s weights override as `next` computes it from the
    /// readable config and the documents (`None`: delete the override),
    /// validated, compare-and-swapped and audited as [`Store::set_weights`]
    /// says. Read again and retried when only the audit head moved.
    pub(crate) async fn put_weights(
        &mut self,
        route: &str,
        write: &Write,
        action: &str,
        next: impl Fn(&Config, &Docs) -> Result<Option<BTreeMap<String, i64>>, StoreError>,
    ) -> Result<WeightsChange, StoreError> {
        let key = layout::weights_key(route);
        let route_key = layout::route_key(route);
        let mut tries = 0;
        loop {
            tries += 1;
            let read = self.read().await?;
            let docs = read.docs();
            let problems = self.problems(&docs);
            let current = self.readable(&docs, Members::Merge);
            find_route(&current, route, &problems)?;
            let before = self.weights_in(&read, route)?;
            let value = next(&current, &docs)?
                .map(|w| serde_json::to_string(&w))
                .transpose()
                .map_err(|e| StoreError::Refused(format!("cannot encode weights: {e}")))?;
            let mut after_read = read.clone();
            match &value {
                Some(v) => {
                    after_read.entries.insert(
                        key.clone(),
                        Entry {
                            value: v.clone().into_bytes(),
                            mod_revision: read.revision + 1,
                        },
                    );
                }
                None => {
                    after_read.entries.remove(&key);
                }
            }
            let added = Problems(
                self.problems(&after_read.docs())
                    .0
                    .into_iter()
                    .filter(|p| !problems.0.contains(p))
                    .collect(),
            );
            if !added.is_empty() {
                return Err(StoreError::Invalid(ConfigError::Invalid {
                    problems: added,
                }));
            }
            let expected = write.expect.unwrap_or_else(|| read.mod_revision(&key));
            if write.dry_run {
                if expected != read.mod_revision(&key) {
                    return Err(StoreError::Conflict {
                        key: self.key(&key),
                        expected,
                        actual: Some(read.mod_revision(&key)),
                    });
                }
                let mut after = self.weights_in(&after_read, route)?;
                after.mod_revision = before.mod_revision;
                after.revision = read.revision;
                return Ok(WeightsChange {
                    before,
                    after,
                    dry_run: true,
                    written: None,
                });
            }
            let full = self.key(&key);
            let ops = vec![match value {
                Some(v) => TxnOp::put(full.clone(), v, None),
                None => TxnOp::delete(full.clone(), None),
            }];
            let guards = [
                (full, expected),
                (self.key(&route_key), read.mod_revision(&route_key)),
            ];
            let entry = audit::Entry {
                actor: write.actor.clone(),
                action: action.to_owned(),
                route: Some(route.to_owned()),
                reason: write.reason.clone(),
                before: weights_json(&before),
                after: weights_json(&self.weights_in(&after_read, route)?),
            };
            match self.write_audited(&guards, Vec::new(), ops, &entry).await {
                Ok(written) => {
                    let after = self.weights(route).await?;
                    return Ok(WeightsChange {
                        before,
                        after,
                        dry_run: false,
                        written: Some(written),
                    });
                }
                Err(Missed::HeadMoved) if tries < audited::HEAD_RETRIES => continue,
                Err(Missed::HeadMoved) => {
                    return Err(StoreError::Refused(
                        "the audit log kept moving; try again".to_owned(),
                    ));
                }
                Err(Missed::Failed(e)) => return Err(e),
                Err(Missed::Extra) => unreachable_extra()?,
            }
        }
    }

    /// The rollback records under the prefix.
    pub async fn rollbacks(&mut self) -> Result<Vec<RollbackRecord>, StoreError> {
        let read = self.read().await?;
        let mut out = Vec::new();
        for (key, entry) in &read.entries {
            if let Some(KeyKind::Rollback { .. }) = KeyKind::parse(key) {
                let rec = layout::parse_doc(&entry.value)
                    .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
                    .map_err(|e| StoreError::Refused(format!("{}: {e}", self.key(key))))?;
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Writes a rollback record (a gateway's canary check does this).
    pub async fn put_rollback(&mut self, rec: &RollbackRecord) -> Result<(), StoreError> {
        let value = serde_json::to_string(rec)
            .map_err(|e| StoreError::Refused(format!("cannot encode the record: {e}")))?;
        let key = self.key(&layout::rollback_key(&rec.route, &rec.arm));
        self.settings
            .timed("put", self.client.put(key, value, None))
            .await?;
        Ok(())
    }

    /// Deletes the rollback record of `route`'s `arm`, audited; false when
    /// there was none.
    pub async fn clear_rollback(
        &mut self,
        route: &str,
        arm: &str,
        write: &Write,
    ) -> Result<bool, StoreError> {
        let key = self.key(&layout::rollback_key(route, arm));
        for _ in 0..audited::HEAD_RETRIES {
            let resp = self
                .settings
                .timed("get", self.client.get(key.clone(), None))
                .await?;
            let Some(kv) = resp.kvs().first() else {
                return Ok(false);
            };
            let before = layout::parse_doc(kv.value())
                .unwrap_or_else(|_| String::from_utf8_lossy(kv.value()).into());
            let entry = audit::Entry {
                actor: write.actor.clone(),
                action: "rollback.clear".to_owned(),
                route: Some(route.to_owned()),
                reason: write.reason.clone(),
                before,
                after: serde_json::Value::Null,
            };
            if write.dry_run {
                return Ok(true);
            }
            let guards = [(key.clone(), kv.mod_revision())];
            let ops = vec![TxnOp::delete(key.clone(), None)];
            match self.write_audited(&guards, Vec::new(), ops, &entry).await {
                Ok(_) => return Ok(true),
                Err(Missed::HeadMoved) => continue,
                Err(Missed::Failed(StoreError::Conflict {
                    actual: Some(0), ..
                })) => {
                    return Ok(false);
                }
                Err(Missed::Failed(e)) => return Err(e),
                Err(Missed::Extra) => unreachable_extra()?,
            }
        }
        Err(StoreError::Refused(
            "the audit log kept moving; try again".to_owned(),
        ))
    }
}

/// A write with no extra compares cannot fail one; reported as a refusal
/// rather than a panic all the same.
fn unreachable_extra() -> Result<(), StoreError> {
    Err(StoreError::Refused(
        "the write was refused by etcd for no reason it names; try again".to_owned(),
    ))
}

/// The route called `route`; when there is none, the refusal names the
/// routes there are and, when the config has problems, its invalid keys
/// (the route's document may be one of them).
fn find_route<'a>(
    config: &'a Config,
    route: &str,
    problems: &Problems,
) -> Result<&'a RouteConfig, StoreError> {
    config
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| {
            let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
            let mut message = format!("no route named {route:?} (routes: {})", names.join(", "));
            if !problems.is_empty() {
                message.push_str(&format!(
                    "; the config in etcd has {}",
                    summary(problems, 500)
                ));
            }
            StoreError::Refused(message)
        })
}
