//! The audit log of operator changes: append-only, hash-chained records in
//! etcd, beside (not under) the config prefix.
//!
//! Every change made through `weirctl` or the gateway's write API appends
//! one [`AuditRecord`] in the same transaction as the change itself, so a
//! change is never written without its record nor a record without its
//! change. Records live under `<prefix>-audit/` (for the default prefix
//! `/weir/`: `/weir-audit/records/00000000000000000001`, …), and
//! `<prefix>-audit/head` names the last one. Keeping them out of the config
//! prefix means gateways watching the config never rebuild because a
//! record was written, and an etcd role can grant the audit prefix apart.
//!
//! **The chain.** Each record holds the SHA-256 of the previous record's
//! stored bytes (`prev`; 64 zeros for the first), and the head holds the
//! last record's sequence number and digest. [`verify`] recomputes it and
//! names the first record that is missing, altered or out of place. etcd
//! adds a check no client can forge: every key carries the revision that
//! created it and the one that last modified it. A record is written once,
//! so a record whose two revisions differ was rewritten, even if whoever
//! rewrote it recomputed every digest after it; and the head is written in
//! the record's transaction, so a head modified at another revision was
//! rewritten too. What the chain cannot show is a log deleted as a whole;
//! then every change of the weights shows up as unaudited in `history`
//! (see [`super::store::history`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The digest `prev` holds in the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The audit prefix that goes with a config prefix: `/weir/` → `/weir-audit/`.
pub fn audit_prefix(config_prefix: &str) -> String {
    format!("{}-audit/", config_prefix.trim_end_matches('/'))
}

/// The key of record `seq` under `audit_prefix`.
pub fn record_key(audit_prefix: &str, seq: u64) -> String {
    format!("{audit_prefix}records/{seq:020}")
}

/// The key of the head under `audit_prefix`.
pub fn head_key(audit_prefix: &str) -> String {
    format!("{audit_prefix}head")
}

/// Who made a change, as the audit names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The admin token's name, `--actor`, or `$USER`.
    pub name: String,
    /// How they came: `token` (the write API with a named admin token),
    /// `local` (the write API from the gateway's own host, no token
    /// configured) or `cli` (`weirctl`).
    pub kind: String,
}

impl Actor {
    /// A `weirctl` user.
    pub fn cli(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: "cli".to_owned(),
        }
    }
}

/// One change, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was written (Unix seconds).
    pub at: u64,
    /// Who made it.
    pub actor: Actor,
    /// What was done: `weights.set`, `weights.undo`, `config.import`,
    /// `rollback.clear`.
    pub action: String,
    /// The route it concerns, when it concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The state before (for weights: the override, `null` when none).
    pub before: Value,
    /// The state after.
    pub after: Value,
    /// Hex SHA-256 of the previous record's stored bytes ([`GENESIS`] for
    /// the first).
    pub prev: String,
}

/// The last record's sequence number and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The last record's `seq`.
    pub seq: u64,
    /// Hex SHA-256 of its stored bytes.
    pub sha256: String,
}

/// Hex SHA-256 of stored bytes.
pub fn digest(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// A change about to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Who.
    pub actor: Actor,
    /// What (see [`AuditRecord::action`]).
    pub action: String,
    /// Which route.
    pub route: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Before.
    pub before: Value,
    /// After.
    pub after: Value,
}

/// The bytes of the record that follows `head` (none: the first) and of
/// the new head.
pub fn next(head: Option<&Head>, entry: &Entry, at: u64) -> (u64, Vec<u8>, Vec<u8>) {
    let seq = head.map_or(1, |h| h.seq + 1);
    let record = AuditRecord {
        seq,
        at,
        actor: entry.actor.clone(),
        action: entry.action.clone(),
        route: entry.route.clone(),
        reason: entry.reason.clone(),
        before: entry.before.clone(),
        after: entry.after.clone(),
        prev: head.map_or_else(|| GENESIS.to_owned(), |h| h.sha256.clone()),
    };
    // Serialising plain data to JSON does not fail.
    let raw = serde_json::to_vec(&record).unwrap_or_default();
    let head = Head {
        seq,
        sha256: digest(&raw),
    };
    (seq, raw, serde_json::to_vec(&head).unwrap_or_default())
}

/// One stored key of the log, as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key, relative to the audit prefix (`records/…` or `head`).
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: i64,
    /// The revision that last modified it.
    pub mod_revision: i64,
}

/// A record read back, with the revision of its change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The etcd revision of the change (the record's creation).
    pub revision: i64,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Records read.
    pub records: usize,
    /// The last sequence number the head names (0: no head).
    pub head_seq: u64,
    /// The first problem, naming the record; `None` when the chain holds.
    pub broken: Option<String>,
}

impl Verdict {
    /// Whether the chain holds.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Reads the records of a log (keys relative to the audit prefix), in
/// order, skipping what does not parse (which [`verify`] reports).
pub fn records(keys: &[StoredKey]) -> Vec<Recorded> {
    let mut out: Vec<Recorded> = keys
        .iter()
        .filter(|k| k.key.starts_with("records/"))
        .filter_map(|k| {
            let record: AuditRecord = serde_json::from_slice(&k.value).ok()?;
            Some(Recorded {
                record,
                revision: k.create_revision,
            })
        })
        .collect();
    out.sort_by_key(|r| r.record.seq);
    out
}

/// Recomputes the chain of a log (keys relative to the audit prefix) and
/// names the first record that breaks it.
pub fn verify(keys: &[StoredKey]) -> Verdict {
    let mut recs: Vec<&StoredKey> = keys
        .iter()
        .filter(|k| k.key.starts_with("records/"))
        .collect();
    recs.sort_by(|a, b| a.key.cmp(&b.key));
    let head = keys.iter().find(|k| k.key == "head");
    let mut verdict = Verdict {
        records: recs.len(),
        head_seq: 0,
        broken: None,
    };
    let fail = |mut v: Verdict, why: String| {
        v.broken = Some(why);
        v
    };
    let mut prev_digest = GENESIS.to_owned();
    let mut prev_revision = 0;
    for (i, k) in recs.iter().enumerate() {
        let want = i as u64 + 1;
        let seq: Option<u64> = k.key.strip_prefix("records/").and_then(|s| s.parse().ok());
        if seq != Some(want) {
            return fail(
                verdict,
                match seq {
                    Some(s) if s > want => {
                        format!("record {want} is missing (the next one found is {s})")
                    }
                    _ => format!("unexpected key {:?} in the log", k.key),
                },
            );
        }
        let Ok(record) = serde_json::from_slice::<AuditRecord>(&k.value) else {
            return fail(verdict, format!("record {want} does not parse: altered"));
        };
        if record.seq != want {
            return fail(
                verdict,
                format!("record {want} says it is record {}: altered", record.seq),
            );
        }
        if k.mod_revision != k.create_revision {
            return fail(
                verdict,
                format!(
                    "record {want} was rewritten at revision {} (written at {})",
                    k.mod_revision, k.create_revision
                ),
            );
        }
        if record.prev != prev_digest {
            return fail(
                verdict,
                if want == 1 {
                    "record 1 does not start the chain: altered, or records before it deleted"
                        .to_owned()
                } else {
                    format!(
                        "record {want} does not follow record {}: one of them was altered",
                        want - 1
                    )
                },
            );
        }
        if k.create_revision <= prev_revision {
            return fail(
                verdict,
                format!("record {want} was written before record {}", want - 1),
            );
        }
        prev_digest = digest(&k.value);
        prev_revision = k.create_revision;
    }
    let Some(head) = head else {
        return if recs.is_empty() {
            verdict
        } else {
            fail(verdict, "the head is missing: deleted".to_owned())
        };
    };
    let Ok(h) = serde_json::from_slice::<Head>(&head.value) else {
        return fail(verdict, "the head does not parse: altered".to_owned());
    };
    verdict.head_seq = h.seq;
    let last = recs.len() as u64;
    if h.seq > last {
        return fail(
            verdict,
            format!(
                "record {} is missing: the head names record {}",
                last + 1,
                h.seq
            ),
        );
    }
    if h.seq < last {
        return fail(
            verdict,
            format!(
                "the head names record {} but record {last} exists: rewritten",
                h.seq
            ),
        );
    }
    if h.sha256 != prev_digest {
        return fail(
            verdict,
            format!("record {last} does not match the head's digest: altered"),
        );
    }
    if head.mod_revision != prev_revision {
        return fail(
            verdict,
            format!(
                "the head was rewritten at revision {} (record {last} was written at {prev_revision})",
                head.mod_revision
            ),
        );
    }
    verdict
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(n: i64) -> Entry {
        Entry {
            actor: Actor::cli("ops"),
            action: "weights.set".to_owned(),
            route: Some("chat".to_owned()),
            reason: Some(format!("step {n}")),
            before: serde_json::json!({ "v2": n - 1 }),
            after: serde_json::json!({ "v2": n }),
        }
    }

    /// A log of `n` records written at revisions 10, 20, …
    fn log(n: u64) -> Vec<StoredKey> {
        let mut keys = Vec::new();
        let mut head: Option<Head> = None;
        let mut head_raw = Vec::new();
        for i in 1..=n {
            let (seq, raw, h) = next(head.as_ref(), &entry(i as i64), 1_700_000_000 + i);
            let rev = 10 * i as i64;
            keys.push(StoredKey {
                key: format!("records/{seq:020}"),
                value: raw,
                create_revision: rev,
                mod_revision: rev,
            });
            head = serde_json::from_slice(&h).ok();
            head_raw = h;
        }
        if n > 0 {
            keys.push(StoredKey {
                key: "head".to_owned(),
                value: head_raw,
                create_revision: 10,
                mod_revision: 10 * n as i64,
            });
        }
        keys
    }

    #[test]
    fn a_clean_chain_verifies() {
        for n in [0, 1, 5] {
            let v = verify(&log(n));
            assert!(v.ok(), "{n}: {v:?}");
            assert_eq!(v.records, n as usize);
            assert_eq!(v.head_seq, n);
        }
        let recs = records(&log(3));
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].revision, 30);
        assert_eq!(recs[1].record.prev, digest(&log(3)[0].value));
    }

    #[test]
    fn an_altered_record_is_named_even_with_its_digests_recomputed() {
        let mut keys = log(5);
        // Altered in place: the next record no longer follows it.
        let mut rec: AuditRecord = serde_json::from_slice(&keys[2].value).unwrap();
        rec.reason = Some("nothing to see".to_owned());
        keys[2].value = serde_json::to_vec(&rec).unwrap();
        keys[2].mod_revision = 99;
        let v = verify(&keys);
        assert_eq!(
            v.broken.as_deref(),
            Some("record 3 was rewritten at revision 99 (written at 30)")
        );
        // Same bytes but the revisions left as they were (as if etcd's
        // metadata could be forged): the chain still names it.
        keys[2].mod_revision = 30;
        let v = verify(&keys);
        assert_eq!(
            v.broken.as_deref(),
            Some("record 4 does not follow record 3: one of them was altered")
        );
    }

    #[test]
    fn deleted_records_and_heads_are_named() {
        let mut keys = log(5);
        keys.remove(1);
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("record 2 is missing (the next one found is 3)")
        );

        // The last record deleted: the head still names it.
        let mut keys = log(5);
        keys.remove(4);
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("record 5 is missing: the head names record 5")
        );

        // ...and the head rewritten to match: etcd's revision shows it.
        let mut keys = log(5);
        let fourth = keys[3].value.clone();
        keys.remove(4);
        let head = keys.last_mut().unwrap();
        head.value = serde_json::to_vec(&Head {
            seq: 4,
            sha256: digest(&fourth),
        })
        .unwrap();
        head.mod_revision = 77;
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("the head was rewritten at revision 77 (record 4 was written at 40)")
        );

        let mut keys = log(2);
        keys.pop();
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("the head is missing: deleted")
        );

        // The first record deleted and the rest renumbered is caught too.
        let mut keys = log(3);
        keys.remove(0);
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("record 1 is missing (the next one found is 2)")
        );
    }

    #[test]
    fn garbage_in_the_log_is_named() {
        let mut keys = log(2);
        keys[0].value = b"not json".to_vec();
        assert_eq!(
            verify(&keys).broken.as_deref(),
            Some("record 1 does not parse: altered")
        );
        let mut keys = log(1);
        keys.push(StoredKey {
            key: "records/zzz".to_owned(),
            value: Vec::new(),
            create_revision: 1,
            mod_revision: 1,
        });
        assert!(verify(&keys).broken.unwrap().contains("unexpected key"));
    }
}
