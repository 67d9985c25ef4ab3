//! Validation of the content filters into [`FilterDef`]s and each route's
//! [`RouteFilters`], reading the files they name.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::types::{
    BUNDLED_MODULE, FilterAction, FilterConfig, FilterPolicy, FoldsConfig, MAX_BODY_LIMIT,
    MAX_MEMORY_MB, NonJson, RouteFiltersConfig,
};
use crate::error::Problems;
use crate::names::{check_name, entry_path};

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
    /// The bundled module's folds; `None` for a module of one's own.
    pub folds: Option<Folds>,
}

/// Validated `folds` of the bundled module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Folds {
    /// Drop default-ignorable characters.
    pub ignorables: bool,
    /// NFKC compatibility and width folding.
    pub width: bool,
    /// Case folding.
    pub case: bool,
    /// Confusable skeletons.
    pub confusables: bool,
    /// Traditional to simplified Chinese: `None` = when a word has Han.
    pub traditional: Option<bool>,
    /// Skip whitespace between a word's characters.
    pub whitespace: bool,
    /// Skip punctuation between a word's characters.
    pub punctuation: bool,
    /// Most separators in a row.
    pub max_gap: u16,
}

/// Largest `folds.max_gap`.
pub const MAX_FOLD_GAP: i64 = 16;

fn check_folds(f: &FoldsConfig, at: &str, problems: &mut Problems) -> Folds {
    let traditional = match f.traditional.as_str() {
        "auto" => None,
        "on" => Some(true),
        "off" => Some(false),
        other => {
            problems.push(
                format!("{at}.traditional"),
                format!("{other:?} is not auto, on or off"),
            );
            None
        }
    };
    let (whitespace, punctuation) = match f.separators.as_str() {
        "none" => (false, false),
        "whitespace" => (true, false),
        "punctuation" => (false, true),
        "whitespace+punctuation" => (true, true),
        other => {
            problems.push(
                format!("{at}.separators"),
                format!("{other:?} is not none, whitespace, punctuation or whitespace+punctuation"),
            );
            (false, false)
        }
    };
    if !(0..=MAX_FOLD_GAP).contains(&f.max_gap) {
        problems.push(
            format!("{at}.max_gap"),
            format!("{} must be between 0 and {MAX_FOLD_GAP}", f.max_gap),
        );
    }
    Folds {
        ignorables: f.ignorables,
        width: f.width,
        case: f.case,
        confusables: f.confusables,
        traditional,
        whitespace,
        punctuation,
        max_gap: u16::try_from(f.max_gap.clamp(0, MAX_FOLD_GAP)).unwrap_or(2),
    }
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
        let at = entry_path("filters", i, &f.name);
        check_name(&f.name, &format!("{at}.name"), problems);
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
        let folds = if f.module == BUNDLED_MODULE {
            Some(check_folds(
                &f.folds.clone().unwrap_or_default(),
                &format!("{at}.folds"),
                problems,
            ))
        } else {
            if f.folds.is_some() {
                problems.push(
                    format!("{at}.folds"),
                    "only the bundled sensitive-words module folds",
                );
            }
            None
        };
        out.push(FilterDef {
            name: f.name.clone(),
            module,
            words,
            action: f.action,
            mask_char,
            policy: f.policy,
            memory_limit: usize::try_from(f.memory_limit_mb.clamp(1, MAX_MEMORY_MB)).unwrap_or(64)
                << 20,
            folds,
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
