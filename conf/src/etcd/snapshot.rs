//! The gateway's view of the documents under the prefix: assembled with
//! registered members merged into their pools, and validated, every problem
//! named by the full key of the document it is about.

use std::collections::BTreeMap;

use super::keys::{AUTH, TIMEOUTS, filter_key, pool_key, route_key, tenant_key};
use super::layout::{Docs, Members, gather};
use crate::error::{ConfigError, Problem, Problems};
use crate::model::Config;
use crate::snapshot::Snapshot;

/// Builds a validated snapshot from documents read under `prefix`, with
/// registered members merged into their pools (the gateway's view).
///
/// Every problem is reported: those of documents that cannot be read on
/// their own, and those of the config the readable ones make. Each is named
/// by the full key of its document (`/weir/routes/chat: arms[v2].pool: no
/// pool named "engine-v3"`), so the keys that problems name are the invalid
/// keys ([`invalid_keys`]).
pub fn build(base: &Config, docs: &Docs, prefix: &str) -> Result<Snapshot, ConfigError> {
    let (config, mut problems) = gather(base, docs, prefix, Members::Merge);
    let built = Snapshot::build(config);
    let snapshot = match built {
        Ok(s) => Some(s),
        Err(ConfigError::Invalid { problems: more }) => {
            for p in more.0 {
                problems.0.push(at_key(p, docs, prefix));
            }
            None
        }
        Err(e) => return Err(e),
    };
    match snapshot {
        Some(s) if problems.is_empty() => Ok(s),
        _ => Err(ConfigError::Invalid { problems }),
    }
}

/// The keys that `problems` name, each with its problems' messages.
pub fn invalid_keys(problems: &Problems) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &problems.0 {
        out.entry(p.path.as_str())
            .or_default()
            .push(p.message.as_str());
    }
    out
}

/// One line on the invalid keys, at most `limit` bytes: how many, then each
/// key with its first problem.
pub fn summary(problems: &Problems, limit: usize) -> String {
    let keys = invalid_keys(problems);
    let listed: Vec<String> = keys
        .iter()
        .map(|(key, messages)| format!("{key}: {}", messages.first().copied().unwrap_or("")))
        .collect();
    let mut text = format!("{} invalid key(s): {}", keys.len(), listed.join("; "));
    if text.len() > limit {
        text.truncate(text.floor_char_boundary(limit.saturating_sub(3)));
        text.push_str("...");
    }
    text
}

/// A problem of the assembled config (`routes[chat].arms[v2].pool`), named
/// by its document's full key instead (`/weir/routes/chat`, with
/// `arms[v2].pool: ` before the message). Problems of the parts that come
/// from the file (`server`, `limits`) keep their path.
fn at_key(p: Problem, docs: &Docs, prefix: &str) -> Problem {
    // `table[name]` (names hold no brackets, but may hold dots), or a
    // top-level table such as `timeouts`.
    let (key, rest) = match p.path.split_once('[') {
        Some((table, tail)) if !table.contains('.') => {
            let (name, rest) = tail.split_once(']').unwrap_or((tail, ""));
            let key = match table {
                "routes" => Some(route_key(name)),
                "pools" => Some(pool_key(name)),
                "filters" => Some(filter_key(name)),
                "tenants" => Some(tenant_key(name)),
                _ => None,
            };
            (key, rest.strip_prefix('.').unwrap_or(rest))
        }
        _ => {
            let (head, rest) = p.path.split_once('.').unwrap_or((p.path.as_str(), ""));
            let key = [TIMEOUTS, AUTH].contains(&head).then(|| head.to_owned());
            (key, rest)
        }
    };
    match key.filter(|k| docs.contains_key(k)) {
        Some(key) => Problem {
            path: format!("{prefix}{key}"),
            message: if rest.is_empty() {
                p.message
            } else {
                format!("{rest}: {}", p.message)
            },
        },
        None => p,
    }
}
