//! Writes that append their audit record in the same transaction, and
//! reading the log back (`weirctl audit verify`).
//!
//! A write names the keys it read and their modification revisions (its
//! compare-and-swap); the audit head is compared too. When only the head
//! moved (another audited write landed in between), the caller reads again
//! and retries; when one of its own keys moved, the result is a
//! [`StoreError::Conflict`] naming it.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;

use std::collections::{BTreeMap, BTreeSet};

use super::{Entry as DocEntry, Store, StoreError, Weights, find_route};
use crate::error::{ConfigError, Problems};
use crate::etcd::audit::{self, Actor, Entry, Head, Recorded, StoredKey, Verdict};
use crate::etcd::fleet::{self, ReplicaStatus};
use crate::etcd::layout::{self, Docs, Members};
use crate::model::Config;

/// How many times a write is tried when only the audit head moved.
pub(super) const HEAD_RETRIES: usize = 8;

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

/// How an operator's write is carried out and recorded.
#[derive(Debug, Clone)]
pub struct Write {
    /// The revision the operator read and expects (weights: the weights
    /// key's modification revision); `None`: the one just read.
    pub expect: Option<i64>,
    /// Validate and report, write nothing.
    pub dry_run: bool,
    /// Who, for the audit record.
    pub actor: Actor,
    /// Why, for the audit record.
    pub reason: Option<String>,
}

impl Write {
    /// A write by `actor` with no expectation, reason or dry run.
    pub fn by(actor: Actor) -> Self {
        Self {
            expect: None,
            dry_run: false,
            actor,
            reason: None,
        }
    }
}

/// What an audited write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Written {
    /// The store revision of the write.
    pub revision: i64,
    /// The audit record's sequence number.
    pub audit_seq: u64,
}

/// Why an audited write did not happen.
pub(super) enum Missed {
    /// Only the audit head moved: read again and retry.
    HeadMoved,
    /// The guards and the head held: one of the extra compares failed.
    Extra,
    /// Failed for good.
    Failed(StoreError),
}

impl From<StoreError> for Missed {
    fn from(e: StoreError) -> Self {
        Self::Failed(e)
    }
}

/// The audit log as read, with its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct AuditLog {
    /// The records in order.
    pub records: Vec<Recorded>,
    /// What the chain check found.
    pub verdict: Verdict,
    /// The store revision of the read.
    pub revision: i64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// The audit prefix beside the config prefix (`/weir/` → `/weir-audit/`).
    pub fn audit_prefix(&self) -> String {
        audit::audit_prefix(&self.settings.prefix)
    }

    /// The head of the audit log and its modification revision (0: none).
    async fn audit_head(&mut self) -> Result<(Option<Head>, i64), StoreError> {
        let key = audit::head_key(&self.audit_prefix());
        let resp = self
            .settings
            .timed("get", self.client.get(key.clone(), None))
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok((None, 0));
        };
        let head = serde_json::from_slice::<Head>(kv.value()).map_err(|e| {
            StoreError::Refused(format!(
                "the audit head {key} is not readable ({e}); run `weirctl audit verify`"
            ))
        })?;
        Ok((Some(head), kv.mod_revision()))
    }

    /// Runs `ops` if every `(full key, modification revision)` in `guards`
    /// is unchanged, every `extra` compare holds and the audit head is
    /// unchanged, appending `entry`'s record in the same transaction.
    pub(super) async fn write_audited(
        &mut self,
        guards: &[(String, i64)],
        extra: Vec<Compare>,
        mut ops: Vec<TxnOp>,
        entry: &Entry,
    ) -> Result<Written, Missed> {
        let (head, head_rev) = self.audit_head().await?;
        let prefix = self.audit_prefix();
        let (seq, record, head_raw) = audit::next(head.as_ref(), entry, now());
        let head_key = audit::head_key(&prefix);
        let mut compares: Vec<Compare> = guards
            .iter()
            .map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev))
            .collect();
        compares.extend(extra);
        compares.push(Compare::mod_revision(
            head_key.clone(),
            CompareOp::Equal,
            head_rev,
        ));
        let mut checks: Vec<TxnOp> = guards
            .iter()
            .map(|(k, _)| TxnOp::get(k.clone(), None))
            .collect();
        checks.push(TxnOp::get(head_key.clone(), None));
        ops.push(TxnOp::put(audit::record_key(&prefix, seq), record, None));
        ops.push(TxnOp::put(head_key, head_raw, None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(checks);
        let resp = self
            .settings
            .timed("txn", self.client.txn(txn))
            .await
            .map_err(StoreError::from)?;
        if resp.succeeded() {
            return Ok(Written {
                revision: resp.header().map_or(0, |h| h.revision()),
                audit_seq: seq,
            });
        }
        let actual: Vec<i64> = resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
                _ => None,
            })
            .collect();
        for ((key, expected), actual) in guards.iter().zip(&actual) {
            if actual != expected {
                return Err(Missed::Failed(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: Some(*actual),
                }));
            }
        }
        if actual.last() != Some(&head_rev) {
            return Err(Missed::HeadMoved);
        }
        Err(Missed::Extra)
    }

    /// Every key under a prefix beside the config's (the audit log, the
    /// replicas' status).
    async fn get_under(&mut self, prefix: &str) -> Result<etcd_client::GetResponse, StoreError> {
        let options = GetOptions::new().with_prefix();
        Ok(self
            .settings
            .timed("get", self.client.get(prefix, Some(options)))
            .await?)
    }

    /// Every key of the audit log.
    async fn audit_keys(&mut self) -> Result<(Vec<StoredKey>, i64), StoreError> {
        let prefix = self.audit_prefix();
        let resp = self.get_under(&prefix).await?;
        let keys = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key().strip_prefix(prefix.as_bytes())?;
                Some(StoredKey {
                    key: String::from_utf8(key.to_vec()).ok()?,
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect();
        Ok((keys, resp.header().map_or(0, |h| h.revision())))
    }

    /// The gateway replicas that report their status, by replica name.
    pub async fn replicas(&mut self) -> Result<Vec<ReplicaStatus>, StoreError> {
        let prefix = fleet::status_prefix(&self.settings.prefix);
        let resp = self.get_under(&prefix).await?;
        let mut out: Vec<ReplicaStatus> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        out.sort_by(|a: &ReplicaStatus, b| a.replica.cmp(&b.replica));
        Ok(out)
    }

    /// The audit log, its chain checked.
    pub async fn audit(&mut self) -> Result<AuditLog, StoreError> {
        let (keys, revision) = self.audit_keys().await?;
        Ok(AuditLog {
            records: audit::records(&keys),
            verdict: audit::verify(&keys),
            revision,
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
                        DocEntry {
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
                    // Read back, at the write's revision: gateways that
                    // report their status move the store revision on.
                    let mut after = self.weights(route).await?;
                    after.revision = written.revision;
                    return Ok(WeightsChange {
                        before,
                        after,
                        dry_run: false,
                        written: Some(written),
                    });
                }
                Err(Missed::HeadMoved) if tries < HEAD_RETRIES => continue,
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

    /// Deletes the rollback record of `route`'s `arm`, audited; false when
    /// there was none.
    pub async fn clear_rollback(
        &mut self,
        route: &str,
        arm: &str,
        write: &Write,
    ) -> Result<bool, StoreError> {
        let key = self.key(&layout::rollback_key(route, arm));
        for _ in 0..HEAD_RETRIES {
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

/// A route's effective weights as the audit log records them.
fn weights_json(w: &Weights) -> serde_json::Value {
    serde_json::Value::Object(
        w.arms
            .iter()
            .map(|(a, n)| (a.clone(), serde_json::Value::from(*n)))
            .collect(),
    )
}
