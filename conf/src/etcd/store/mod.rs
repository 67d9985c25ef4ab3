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

use std::collections::BTreeMap;

use etcd_client::Client;
use serde::Serialize;

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
