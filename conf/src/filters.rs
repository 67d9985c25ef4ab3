//! Content filters in the config: `[[filters]]` definitions and the
//! `filters` table of a route, with their validation.
//!
//! ```toml
//! [[filters]]
//! name = "words"
//! module = "sensitive-words"          # the bundled module, or a path to a .wasm file
//! words = [{ word = "坏词", category = "abuse" }, { word = "secret" }]
//! words_file = "words.txt"            # optional: one `word` or `word<TAB>category` per line
//! category = "sensitive"              # category of words that name none
//! action = "mask"                     # or "block"
//! mask_char = "*"
//! policy = "fail_closed"              # or "fail_open"
//! memory_limit_mb = 64
//!
//! [[routes]]
//! # ...
//! filters = { request = ["words"], response = ["words"], max_body_bytes = 1048576, non_json = "reject" }
//! ```
//!
//! Files named here (`words_file`, a `.wasm` `module`) are read when the
//! snapshot is built, so a change to them is picked up by the next reload;
//! relative paths are relative to the gateway's working directory.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Problems;

/// The name of the bundled sensitive-word module.
pub const BUNDLED_MODULE: &str = "sensitive-words";
/// Default `max_body_bytes` of a route's filters.
pub const DEFAULT_MAX_BODY: i64 = 1 << 20;
/// Largest `max_body_bytes`.
pub const MAX_BODY_LIMIT: i64 = 64 << 20;
/// Default memory cap of a filter instance, MiB.
pub const DEFAULT_MEMORY_MB: i64 = 64;
/// Largest memory cap of a filter instance, MiB.
pub const MAX_MEMORY_MB: i64 = 1024;

/// `[[filters]]`: one sandboxed Wasm content filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Unique name that routes refer to (metric label `filter`).
    pub name: String,
    /// `"sensitive-words"` (the bundled module) or the path of a `.wasm`
    /// module following `docs/filters-abi.md`.
    #[serde(default = "default_module")]
    pub module: String,
    /// Dictionary entries.
    #[serde(default)]
    pub words: Vec<WordConfig>,
    /// A dictionary file: one `word` or `word<TAB>category` per line; blank
    /// lines and lines starting with `#` are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words_file: Option<String>,
    /// Category of words that name none (default `sensitive`).
    #[serde(default = "default_category")]
    pub category: String,
    /// What a match does: `mask` (default) or `block`.
    #[serde(default)]
    pub action: FilterAction,
    /// The character masked text is replaced with, one per character.
    #[serde(default = "default_mask_char")]
    pub mask_char: String,
    /// What a failing filter does: `fail_closed` (default) or `fail_open`.
    #[serde(default)]
    pub policy: FilterPolicy,
    /// Cap on the filter instance's memory, MiB (default 64).
    #[serde(default = "default_memory_mb")]
    pub memory_limit_mb: i64,
}

/// One dictionary entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordConfig {
    /// The word (matched case-insensitively for Latin letters, full-width
    /// forms folded).
    pub word: String,
    /// Its category (default: the filter's `category`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// `action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Replace each matched character with `mask_char`.
    #[default]
    Mask,
    /// Refuse the request (HTTP 400 naming the category) or end the answer.
    Block,
}

/// `policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterPolicy {
    /// A failing filter refuses the content (503, or the stream ends).
    #[default]
    FailClosed,
    /// A failing filter lets the content pass (the failure is counted).
    FailOpen,
}

/// The `filters` table of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFiltersConfig {
    /// Filters run over request bodies, in order.
    #[serde(default)]
    pub request: Vec<String>,
    /// Filters run over responses (JSON and SSE streams), in order.
    #[serde(default)]
    pub response: Vec<String>,
    /// Largest request or non-streamed response body buffered for
    /// filtering (default 1 MiB); a larger request gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: i64,
    /// Request bodies that are not OpenAI JSON: `reject` (400, default),
    /// `raw` (the whole body scanned as text) or `skip` (passed unfiltered).
    #[serde(default)]
    pub non_json: NonJson,
}

impl Default for RouteFiltersConfig {
    fn default() -> Self {
        Self {
            request: Vec::new(),
            response: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY,
            non_json: NonJson::default(),
        }
    }
}

impl RouteFiltersConfig {
    /// Whether the route filters nothing (the table may then be left out).
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// `non_json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonJson {
    /// 400: the body must be OpenAI JSON.
    #[default]
    Reject,
    /// Scan the whole body as text (it must be UTF-8).
    Raw,
    /// Pass it unfiltered.
    Skip,
}

fn default_module() -> String {
    BUNDLED_MODULE.to_owned()
}
fn default_category() -> String {
    "sensitive".to_owned()
}
fn default_mask_char() -> String {
    "*".to_owned()
}
fn default_memory_mb() -> i64 {
    DEFAULT_MEMORY_MB
}
fn default_max_body() -> i64 {
    DEFAULT_MAX_BODY
}

/// Where a filter's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterModule {
    /// The bundled sensitive-word module.
    Bundled,
    /// A module read from a file (its path and bytes).
    File {
        /// The path, as configured.
        path: PathBuf,
        /// The module's bytes when the snapshot was built.
        wasm: Arc<[u8]>,
    },
}

/// A validated filter definition. Two equal definitions load equal
/// filters, so a gateway can keep a loaded filter across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterDef {
    /// Name.
    pub name: String,
    /// Its module.
    pub module: FilterModule,
    /// `(word, category)` pairs, inline ones first, then the file's.
    pub words: Vec<(String, String)>,
    /// Block, or mask with this character.
    pub action: FilterAction,
    /// The mask character.
    pub mask_char: char,
    /// Failure policy.
    pub policy: FilterPolicy,
    /// Memory cap, bytes.
    pub memory_limit: usize,
}

/// A route's validated filters: indices into [`crate::Snapshot::filters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFilters {
    /// Request filters, in order.
    pub request: Vec<usize>,
    /// Response filters, in order.
    pub response: Vec<usize>,
    /// Buffering limit.
    pub max_body: usize,
    /// What to do with request bodies that are not OpenAI JSON.
    pub non_json: NonJson,
}

/// Validates the `[[filters]]` definitions, reading their files.
pub fn check_filters(filters: &[FilterConfig], problems: &mut Problems) -> Vec<FilterDef> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(filters.len());
    for (i, f) in filters.iter().enumerate() {
        let at = if f.name.is_empty() {
            format!("filters[{i}]")
        } else {
            format!("filters[{}]", f.name)
        };
        crate::snapshot::check_name(&f.name, &format!("{at}.name"), problems);
        if !names.insert(f.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate filter name");
        }
        let module = if f.module == BUNDLED_MODULE {
            FilterModule::Bundled
        } else {
            match std::fs::read(&f.module) {
                Ok(bytes) => FilterModule::File {
                    path: PathBuf::from(&f.module),
                    wasm: bytes.into(),
                },
                Err(e) => {
                    problems.push(
                        format!("{at}.module"),
                        format!(
                            "cannot read {:?} ({e}); use \"{BUNDLED_MODULE}\" or a .wasm file",
                            f.module
                        ),
                    );
                    FilterModule::Bundled
                }
            }
        };
        let mut words: Vec<(String, String)> = f
            .words
            .iter()
            .map(|w| {
                let category = w.category.clone().unwrap_or_else(|| f.category.clone());
                (w.word.clone(), category)
            })
            .collect();
        if let Some(file) = &f.words_file {
            match std::fs::read_to_string(file) {
                Ok(text) => words.extend(parse_words(&text, &f.category)),
                Err(e) => problems.push(
                    format!("{at}.words_file"),
                    format!("cannot read {file:?}: {e}"),
                ),
            }
        }
        if words.is_empty() {
            problems.push(
                format!("{at}.words"),
                "needs at least one word (inline or in words_file)",
            );
        }
        for (j, (word, category)) in words.iter().enumerate() {
            if word.trim().is_empty() {
                problems.push(format!("{at}.words[{j}]"), "a word must not be blank");
            }
            if category.is_empty() {
                problems.push(format!("{at}.words[{j}].category"), "must not be empty");
            }
        }
        let mut chars = f.mask_char.chars();
        let mask_char = match (chars.next(), chars.next()) {
            (Some(c), None) if !c.is_control() => c,
            _ => {
                problems.push(
                    format!("{at}.mask_char"),
                    format!("{:?} must be exactly one printable character", f.mask_char),
                );
                '*'
            }
        };
        if !(1..=MAX_MEMORY_MB).contains(&f.memory_limit_mb) {
            problems.push(
                format!("{at}.memory_limit_mb"),
                format!(
                    "{} must be between 1 and {MAX_MEMORY_MB}",
                    f.memory_limit_mb
                ),
            );
        }
        out.push(FilterDef {
            name: f.name.clone(),
            module,
            words,
            action: f.action,
            mask_char,
            policy: f.policy,
            memory_limit: usize::try_from(f.memory_limit_mb.clamp(1, MAX_MEMORY_MB)).unwrap_or(64)
                << 20,
        });
    }
    out
}

/// `word` or `word<TAB>category` lines.
fn parse_words(text: &str, default: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('\t') {
            Some((word, category)) => (word.to_owned(), category.trim().to_owned()),
            None => (l.to_owned(), default.to_owned()),
        })
        .collect()
}

/// Validates a route's `filters` table against the defined filters.
pub fn check_route_filters(
    f: &RouteFiltersConfig,
    at: &str,
    index: &HashMap<&str, usize>,
    problems: &mut Problems,
) -> RouteFilters {
    let mut resolve = |names: &[String], side: &str| -> Vec<usize> {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let found = index.get(n.as_str()).copied();
                if found.is_none() {
                    problems.push(
                        format!("{at}.filters.{side}[{i}]"),
                        format!("no filter named {n:?}"),
                    );
                }
                found
            })
            .collect()
    };
    let request = resolve(&f.request, "request");
    let response = resolve(&f.response, "response");
    if !(1..=MAX_BODY_LIMIT).contains(&f.max_body_bytes) {
        problems.push(
            format!("{at}.filters.max_body_bytes"),
            format!(
                "{} must be between 1 and {MAX_BODY_LIMIT}",
                f.max_body_bytes
            ),
        );
    }
    RouteFilters {
        request,
        response,
        max_body: usize::try_from(f.max_body_bytes.clamp(1, MAX_BODY_LIMIT)).unwrap_or(1 << 20),
        non_json: f.non_json,
    }
}
