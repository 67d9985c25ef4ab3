//! What `weirctl` prints: a command's result for people or as JSON, its
//! warnings (the invalid keys under the prefix), its errors, and the exit
//! status that goes with each.
//!
//! Output goes through [`emit`], which treats a reader that went away
//! (`weirctl config export | head`) as the end of the output, not an error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};
use weir_conf::etcd::AuditLog;
use weir_conf::etcd::fleet::ReplicaStatus;
use weir_conf::etcd::store::Weights;
use weir_conf::etcd::store::history::History;
use weir_conf::etcd::{ImportReport, StoreError, WeightsChange};
use weir_conf::{ConfigError, Problems};

/// Exit status of a compare-and-swap conflict.
const CONFLICT: u8 = 3;

/// A command's result, with the problems of the config it read (the
/// invalid keys under the prefix; empty when it is valid).
pub(super) struct Done {
    pub output: Output,
    pub problems: Problems,
}

/// A command's result, shown for people or as JSON.
pub(super) enum Output {
    Weights(Weights, Option<&'static str>),
    Change(WeightsChange, &'static str),
    Imported(PathBuf, ImportReport),
    Diff(PathBuf, ImportReport),
    Exported(String, Value),
    Checked(String, Value),
    Rollbacks(Vec<weir_conf::resilience::RollbackRecord>),
    Cleared(String, String, bool, bool),
    History(History),
    Status(Vec<ReplicaStatus>, i64),
    Audit(AuditLog),
}

/// Prints a result (and its warnings) or an error; returns the exit status.
pub(super) fn finish(result: Result<Done, StoreError>, json: bool) -> ExitCode {
    match result {
        Ok(done) => {
            if json {
                let mut v = done.output.json();
                if !done.problems.is_empty() {
                    v["invalid_keys"] = invalid_keys_json(&done.problems);
                }
                emit(&mut std::io::stdout(), &v.to_string());
            } else {
                if !done.problems.is_empty() {
                    emit(&mut std::io::stderr(), &warning(&done.problems));
                }
                emit(&mut std::io::stdout(), &done.output.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match &e {
                StoreError::Conflict { .. } => CONFLICT,
                _ => 1,
            };
            if json {
                emit(&mut std::io::stdout(), &error_json(&e).to_string());
            } else {
                emit(&mut std::io::stderr(), &format!("weirctl: {}", message(&e)));
            }
            ExitCode::from(code)
        }
    }
}

/// Writes `text` and a newline. A closed reader (broken pipe) ends the
/// output quietly; other write errors cannot be reported anywhere better.
fn emit(out: &mut dyn Write, text: &str) {
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// An error for people: one line, plus the problem list of an invalid
/// config.
fn message(e: &StoreError) -> String {
    match e {
        StoreError::WouldDelete { .. } => {
            format!("{e}; run again with --prune to delete them")
        }
        other => other.to_string(),
    }
}

/// The warning printed before a result read from a config with problems.
fn warning(problems: &Problems) -> String {
    let keys = weir_conf::etcd::invalid_keys(problems);
    let mut text = format!(
        "weirctl: warning: {} invalid key(s) under the prefix; gateways keep serving \
         their last good config until they are fixed or deleted:",
        keys.len()
    );
    for (key, messages) in keys {
        for m in messages {
            text.push_str(&format!("\n  {key}: {m}"));
        }
    }
    text
}

impl Output {
    fn text(&self) -> String {
        match self {
            Output::Weights(w, verb) => {
                let total: i64 = w.arms.iter().map(|(_, w)| *w).sum::<i64>().max(1);
                let mut s = format!(
                    "route {}{} (store revision {}; weights {})",
                    w.route,
                    verb.map(|v| format!(" {v}")).unwrap_or_default(),
                    w.revision,
                    if w.overridden {
                        format!("key at revision {}", w.mod_revision)
                    } else {
                        "from the route document; no weights key".to_owned()
                    }
                );
                for (arm, weight) in &w.arms {
                    let share = *weight as f64 * 100.0 / total as f64;
                    s.push_str(&format!("\n  {arm:<16} {weight:>8}  {share:5.1} %"));
                }
                s
            }
            Output::Change(c, verb) => {
                let head = if c.dry_run {
                    format!(
                        "dry run, nothing written: route {} would be {verb}",
                        c.after.route
                    )
                } else {
                    format!(
                        "route {} {verb} at revision {} (audit record {})",
                        c.after.route,
                        c.written.map_or(0, |w| w.revision),
                        c.written.map_or(0, |w| w.audit_seq)
                    )
                };
                let before: std::collections::BTreeMap<&str, i64> = c
                    .before
                    .arms
                    .iter()
                    .map(|(a, w)| (a.as_str(), *w))
                    .collect();
                let total: i64 = c.after.arms.iter().map(|(_, w)| *w).sum::<i64>().max(1);
                let mut s = head;
                for (arm, weight) in &c.after.arms {
                    let was = before.get(arm.as_str()).copied().unwrap_or(0);
                    let share = *weight as f64 * 100.0 / total as f64;
                    let change = if was == *weight {
                        String::new()
                    } else {
                        format!("  (was {was})")
                    };
                    s.push_str(&format!("\n  {arm:<16} {weight:>8}  {share:5.1} %{change}"));
                }
                if !c.dry_run {
                    s.push_str(&format!(
                        "\n  next --expect-revision {}",
                        c.after.mod_revision
                    ));
                }
                s
            }
            Output::Diff(file, r) => {
                if r.diff.is_empty() {
                    return format!(
                        "{}: no difference with etcd (revision {})",
                        file.display(),
                        r.revision
                    );
                }
                let mut s = format!(
                    "{} against etcd (revision {}): {} to write, {} to delete with --prune, {} unchanged",
                    file.display(),
                    r.revision,
                    r.written.len(),
                    r.deleted.len(),
                    r.unchanged
                );
                for d in &r.diff {
                    match (&d.before, &d.after) {
                        (None, Some(after)) => s.push_str(&format!("\n+ {}  {after}", d.key)),
                        (Some(before), Some(after)) => {
                            s.push_str(&format!("\n~ {}\n    - {before}\n    + {after}", d.key))
                        }
                        (Some(before), None) => s.push_str(&format!(
                            "\n- {}  {before}  (deleted only with --prune)",
                            d.key
                        )),
                        (None, None) => {}
                    }
                }
                s
            }
            Output::History(h) => {
                let mut lines = Vec::new();
                if h.compacted > 0 {
                    lines.push(format!(
                        "etcd holds revisions from {} on; older changes are known only from the audit log",
                        h.compacted
                    ));
                }
                for c in &h.changes {
                    let weights = c
                        .weights
                        .as_ref()
                        .map_or_else(|| "(override deleted)".to_owned(), |w| w.to_string());
                    let who = match &c.audit {
                        Some(a) => format!(
                            "#{} {} {} by {} ({}){}",
                            a.record.seq,
                            a.record.at,
                            a.record.action,
                            a.record.actor.name,
                            a.record.actor.kind,
                            a.record
                                .reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                        None => "UNAUDITED (written around weirctl and the admin API)".to_owned(),
                    };
                    lines.push(format!(
                        "{:>8}  {:<16} {weights}  {who}",
                        c.revision, c.route
                    ));
                }
                for r in &h.other {
                    lines.push(format!(
                        "{:>8}  {:<16} #{} {} {} by {} ({})",
                        r.revision,
                        r.record.route.as_deref().unwrap_or("-"),
                        r.record.seq,
                        r.record.at,
                        r.record.action,
                        r.record.actor.name,
                        r.record.actor.kind
                    ));
                }
                if lines.is_empty() {
                    "no change".to_owned()
                } else {
                    lines.join("\n")
                }
            }
            Output::Status(replicas, latest) => {
                if replicas.is_empty() {
                    return "no gateway replica reports to this etcd".to_owned();
                }
                let mut s = format!(
                    "{:<28} {:<10} {:>9} {:>5} {:<6} {}",
                    "REPLICA", "SOURCE", "REVISION", "GEN", "READY", "CURRENT"
                );
                for r in replicas {
                    let current = r.revision.is_some_and(|rev| rev >= *latest);
                    s.push_str(&format!(
                        "\n{:<28} {:<10} {:>9} {:>5} {:<6} {}{}",
                        r.replica,
                        r.source,
                        r.revision.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                        r.generation,
                        if r.ready { "yes" } else { "no" },
                        if current { "yes" } else { "no" },
                        r.detail
                            .as_ref()
                            .map(|d| format!("  ({d})"))
                            .unwrap_or_default()
                    ));
                }
                s.push_str(&format!(
                    "\nthe config in etcd was last changed at revision {latest}"
                ));
                s
            }
            Output::Audit(log) => format!(
                "ok: the audit chain holds: {} record(s), head at record {}",
                log.records.len(),
                log.verdict.head_seq
            ),
            Output::Imported(file, r) => {
                if r.dry_run {
                    return format!(
                        "dry run, nothing written: importing {} would write {} and delete {} key(s); {} unchanged",
                        file.display(),
                        r.written.len(),
                        r.deleted.len(),
                        r.unchanged
                    );
                }
                let mut s = format!(
                    "imported {}: {} written, {} unchanged, {} deleted (revision {})",
                    file.display(),
                    r.written.len(),
                    r.unchanged,
                    r.deleted.len(),
                    r.revision
                );
                for key in &r.deleted {
                    s.push_str(&format!("\n  deleted {key}"));
                }
                s
            }
            Output::Exported(toml, _) => toml.trim_end().to_owned(),
            Output::Checked(text, _) => text.clone(),
            Output::Rollbacks(list) => {
                if list.is_empty() {
                    return "no arm is rolled back".to_owned();
                }
                list.iter()
                    .map(|r| {
                        format!(
                            "{}/{}: rolled back at {} by {}: {}",
                            r.route, r.arm, r.at, r.by, r.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Output::Cleared(route, arm, cleared, dry) => {
                if *dry {
                    format!(
                        "dry run, nothing written: {route}/{arm} {}",
                        if *cleared {
                            "would be cleared"
                        } else {
                            "is not rolled back"
                        }
                    )
                } else if *cleared {
                    format!("{route}/{arm}: rollback cleared; the arm has its weight again")
                } else {
                    format!("{route}/{arm}: was not rolled back")
                }
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            Output::Weights(w, verb) => {
                let mut v = weights_json(w);
                if let Some(verb) = verb {
                    v["result"] = json!(verb);
                }
                v
            }
            Output::Change(c, verb) => {
                let mut v = weights_json(&c.after);
                v["result"] = json!(verb);
                v["dry_run"] = json!(c.dry_run);
                v["before"] = weights_json(&c.before)["weights"].clone();
                v["written"] = json!(c.written);
                v
            }
            Output::Imported(file, r) => {
                json!({ "file": file.display().to_string(), "import": r })
            }
            Output::Diff(file, r) => {
                json!({ "file": file.display().to_string(), "revision": r.revision, "diff": r.diff })
            }
            Output::History(h) => json!(h),
            Output::Status(replicas, latest) => {
                json!({ "replicas": replicas, "config_revision": latest })
            }
            Output::Audit(log) => json!({
                "ok": log.verdict.ok(),
                "records": log.records.len(),
                "head_seq": log.verdict.head_seq,
                "revision": log.revision,
            }),
            Output::Exported(_, v) | Output::Checked(_, v) => v.clone(),
            Output::Rollbacks(list) => json!({ "rollbacks": list }),
            Output::Cleared(route, arm, cleared, dry) => {
                json!({ "route": route, "arm": arm, "cleared": cleared, "dry_run": dry })
            }
        }
    }
}

fn weights_json(w: &Weights) -> Value {
    let weights: serde_json::Map<String, Value> =
        w.arms.iter().map(|(a, v)| (a.clone(), json!(v))).collect();
    json!({
        "route": w.route,
        "weights": weights,
        "overridden": w.overridden,
        "mod_revision": w.mod_revision,
        "revision": w.revision,
    })
}

fn problems_json(problems: &Problems) -> Value {
    json!(
        problems
            .0
            .iter()
            .map(|p| json!({ "path": p.path, "message": p.message }))
            .collect::<Vec<_>>()
    )
}

/// `[{"key": "/weir/...", "problems": ["..."]}]`.
fn invalid_keys_json(problems: &Problems) -> Value {
    json!(
        weir_conf::etcd::invalid_keys(problems)
            .into_iter()
            .map(|(key, messages)| json!({ "key": key, "problems": messages }))
            .collect::<Vec<_>>()
    )
}

fn error_json(e: &StoreError) -> Value {
    let kind = match e {
        StoreError::Etcd(_) => "etcd",
        StoreError::Refused(_) | StoreError::WouldDelete { .. } => "refused",
        StoreError::Invalid(_) => "invalid",
        StoreError::Conflict { .. } => "conflict",
    };
    let mut v = json!({ "error": { "kind": kind, "message": message(e) } });
    match e {
        StoreError::Invalid(ConfigError::Invalid { problems }) => {
            v["error"]["problems"] = problems_json(problems);
        }
        StoreError::WouldDelete { keys } => v["error"]["deletes"] = json!(keys),
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => {
            v["error"]["key"] = json!(key);
            v["error"]["expected"] = json!(expected);
            v["error"]["actual"] = json!(actual);
        }
        _ => {}
    }
    v
}
