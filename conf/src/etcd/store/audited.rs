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

use super::{Store, StoreError};
use crate::etcd::audit::{self, Actor, Entry, Head, Recorded, StoredKey, Verdict};
use crate::etcd::fleet::{self, ReplicaStatus};

/// How many times a write is tried when only the audit head moved.
pub(super) const HEAD_RETRIES: usize = 8;

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

    /// Every key of the audit log.
    async fn audit_keys(&mut self) -> Result<(Vec<StoredKey>, i64), StoreError> {
        let prefix = self.audit_prefix();
        let resp = self
            .settings
            .timed(
                "get",
                self.client
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
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
        let resp = self
            .settings
            .timed(
                "get",
                self.client
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
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
}
