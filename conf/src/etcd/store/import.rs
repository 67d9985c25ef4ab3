//! `weirctl config import`: the operator config under the prefix replaced
//! by a file's in one transaction.
//!
//! Keys the file does not hold are deleted only when the operator asks for
//! it ([`Prune::Delete`]); otherwise the import is refused with those keys
//! named ([`StoreError::WouldDelete`]), so a live weights override cannot
//! vanish unnoticed.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;

use super::{MAX_TXN_OPS, Store, StoreError};
use crate::etcd::layout::{self, Docs, KeyKind};
use crate::etcd::snapshot::build;
use crate::model::Config;
use crate::snapshot::Snapshot;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Keys written (new or changed).
    pub written: Vec<String>,
    /// Keys left as they were.
    pub unchanged: usize,
    /// Keys deleted (no longer in the config).
    pub deleted: Vec<String>,
    /// The store revision after the import (unchanged when nothing was written).
    pub revision: i64,
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
    /// `[server]` and `[source]` are not stored.
    pub async fn import(
        &mut self,
        config: &Config,
        prune: Prune,
    ) -> Result<ImportReport, StoreError> {
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
            if read.entries.get(k).map(|e| e.value.as_slice()) == Some(v.as_bytes()) {
                report.unchanged += 1;
            } else {
                ops.push(TxnOp::put(self.key(k), v.clone(), None));
                report.written.push(k.clone());
            }
        }
        for k in read.entries.keys() {
            if !kept_on_import(k) && !new_keys.contains(k.as_str()) {
                ops.push(TxnOp::delete(self.key(k), None));
                report.deleted.push(k.clone());
            }
        }
        build(config, &next, &self.settings.prefix).map_err(StoreError::Invalid)?;
        if prune == Prune::Refuse && !report.deleted.is_empty() {
            return Err(StoreError::WouldDelete {
                keys: report.deleted,
            });
        }
        if ops.is_empty() {
            return Ok(report);
        }
        if ops.len() > MAX_TXN_OPS {
            return Err(StoreError::Refused(format!(
                "the import needs {} writes; etcd allows {MAX_TXN_OPS} in one transaction",
                ops.len()
            )));
        }
        // Nothing may have changed since the read: compare the prefix's newest
        // modification against the read revision.
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.settings.prefix.clone(),
                CompareOp::Less,
                read.revision + 1,
            )
            .with_prefix()])
            .and_then(ops);
        let resp = self.settings.timed("txn", self.client.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict {
                key: self.settings.prefix.clone(),
                expected: read.revision,
                actual: None,
            });
        }
        report.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(report)
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
