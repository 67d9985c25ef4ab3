//! `weirctl config import`: the operator config under the prefix replaced
//! by a file's in one transaction.
//!
//! Keys the file does not hold are deleted only when the operator asks for
//! it ([`Prune::Delete`]); otherwise the import is refused with those keys
//! named ([`StoreError::WouldDelete`]), so a live weights override cannot
//! vanish unnoticed.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, TxnOp};
use serde::Serialize;
use serde_json::json;

use super::audited::{HEAD_RETRIES, Missed, Write};
use super::{MAX_TXN_OPS, Store, StoreError};
use crate::etcd::audit::Entry;
use crate::etcd::layout::{self, Docs, KeyKind};
use crate::etcd::snapshot::build;
use crate::model::Config;
use crate::snapshot::Snapshot;

/// One key an import writes or deletes, with its values (raw text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyDiff {
    /// The key, relative to the prefix.
    pub key: String,
    /// Its value in etcd now (`None`: a new key).
    pub before: Option<String>,
    /// Its value after the import (`None`: deleted).
    pub after: Option<String>,
}

/// What an import did (or, with a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Keys written (new or changed).
    pub written: Vec<String>,
    /// Keys left as they were.
    pub unchanged: usize,
    /// Keys deleted (no longer in the config).
    pub deleted: Vec<String>,
    /// The store revision after the import (unchanged when nothing was
    /// written, and with a dry run).
    pub revision: i64,
    /// Every key written or deleted, with its values before and after.
    pub diff: Vec<KeyDiff>,
    /// Nothing was written.
    pub dry_run: bool,
    /// The audit record of the import (none when nothing was written).
    pub audit_seq: Option<u64>,
}

/// What an import does with config keys the file does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Refuse the import, naming them ([`StoreError::WouldDelete`]).
    Refuse,
    /// Delete them.
    Delete,
}

impl Store {
    /// Replaces the operator config under the prefix with `config` in one
    /// transaction: one document per pool, route, filter, tenant (and
    /// `timeouts`, `auth`). Other config keys (a weights override, a key the
    /// file no longer holds, an invalid key) are deleted with
    /// [`Prune::Delete`]; with [`Prune::Refuse`] their presence refuses the
    /// whole import. Registered members and rollback records are kept.
    /// `[server]` and `[source]` are not stored. The import is recorded in
    /// the audit log in the same transaction; with `write.dry_run` the
    /// report (and its `diff`) says what it would do, and nothing is
    /// written.
    pub async fn import(
        &mut self,
        config: &Config,
        prune: Prune,
        write: &Write,
    ) -> Result<ImportReport, StoreError> {
        for _ in 0..HEAD_RETRIES {
            match self.import_once(config, prune, write).await {
                Err(Missed::HeadMoved) => continue,
                Err(Missed::Failed(e)) => return Err(e),
                Err(Missed::Extra) => {
                    return Err(StoreError::Refused(
                        "etcd refused the import for no reason it names; try again".to_owned(),
                    ));
                }
                Ok(report) => return Ok(report),
            }
        }
        Err(StoreError::Refused(
            "the audit log kept moving; try again".to_owned(),
        ))
    }

    async fn import_once(
        &mut self,
        config: &Config,
        prune: Prune,
        write: &Write,
    ) -> Result<ImportReport, Missed> {
        Snapshot::build(config.clone()).map_err(StoreError::Invalid)?;
        let docs = layout::explode(config)
            .map_err(|e| StoreError::Refused(format!("cannot encode the config: {e}")))?;
        let read = self.read().await?;
        let new_keys: BTreeSet<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
        let mut next: Docs = read
            .entries
            .iter()
            .filter(|(k, _)| kept_on_import(k))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        let mut report = ImportReport {
            revision: read.revision,
            ..ImportReport::default()
        };
        let mut ops = Vec::new();
        for (k, v) in &docs {
            next.insert(k.clone(), v.clone().into_bytes());
            let old = read.entries.get(k).map(|e| e.value.as_slice());
            if old == Some(v.as_bytes()) {
                report.unchanged += 1;
            } else {
                ops.push(TxnOp::put(self.key(k), v.clone(), None));
                report.written.push(k.clone());
                report.diff.push(KeyDiff {
                    key: k.clone(),
                    before: old.map(|o| String::from_utf8_lossy(o).into_owned()),
                    after: Some(v.clone()),
                });
            }
        }
        for (k, e) in &read.entries {
            if !kept_on_import(k) && !new_keys.contains(k.as_str()) {
                ops.push(TxnOp::delete(self.key(k), None));
                report.deleted.push(k.clone());
                report.diff.push(KeyDiff {
                    key: k.clone(),
                    before: Some(String::from_utf8_lossy(&e.value).into_owned()),
                    after: None,
                });
            }
        }
        report.diff.sort_by(|a, b| a.key.cmp(&b.key));
        report.dry_run = write.dry_run;
        build(config, &next, &self.settings.prefix).map_err(StoreError::Invalid)?;
        if prune == Prune::Refuse && !report.deleted.is_empty() {
            return Err(StoreError::WouldDelete {
                keys: report.deleted,
            }
            .into());
        }
        if ops.is_empty() || write.dry_run {
            return Ok(report);
        }
        // Two more for the audit record and head.
        if ops.len() + 2 > MAX_TXN_OPS {
            return Err(StoreError::Refused(format!(
                "the import needs {} writes; etcd allows {MAX_TXN_OPS} in one transaction",
                ops.len() + 2
            ))
            .into());
        }
        let entry = Entry {
            actor: write.actor.clone(),
            action: "config.import".to_owned(),
            route: None,
            reason: write.reason.clone(),
            before: json!({ "revision": read.revision }),
            after: json!({ "written": report.written, "deleted": report.deleted }),
        };
        // Nothing may have changed since the read: compare the prefix's newest
        // modification against the read revision.
        let unchanged = Compare::mod_revision(
            self.settings.prefix.clone(),
            CompareOp::Less,
            read.revision + 1,
        )
        .with_prefix();
        match self.write_audited(&[], vec![unchanged], ops, &entry).await {
            Ok(written) => {
                report.revision = written.revision;
                report.audit_seq = Some(written.audit_seq);
                Ok(report)
            }
            Err(Missed::Extra) => Err(StoreError::Conflict {
                key: self.settings.prefix.clone(),
                expected: read.revision,
                actual: None,
            }
            .into()),
            Err(e) => Err(e),
        }
    }
}

/// Registered members and rollback records are gateway and engine state, not
/// the operator's documents: an import keeps them (a rollback is cleared
/// with `weirctl rollback clear`, never by re-importing the config).
fn kept_on_import(key: &str) -> bool {
    matches!(
        KeyKind::parse(key),
        Some(KeyKind::Member { .. } | KeyKind::Rollback { .. })
    )
}
