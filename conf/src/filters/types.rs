//! The file types of the content filters: `[[filters]]` entries and a
//! route's `filters` table.

use serde::{Deserialize, Serialize};

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
    /// How the bundled module folds disguised words before matching
    /// (absent: every default). Only for `module = "sensitive-words"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<FoldsConfig>,
}

/// `folds`: the bundled module's folding of text and words before
/// matching (docs/filters.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldsConfig {
    /// Drop invisible (default-ignorable) characters such as zero-width
    /// spaces and soft hyphens (default true).
    #[serde(default = "yes")]
    pub ignorables: bool,
    /// NFKC compatibility and width folding (default true).
    #[serde(default = "yes")]
    pub width: bool,
    /// Case folding (default true).
    #[serde(default = "yes")]
    pub case: bool,
    /// Look-alike letters to their Unicode confusable skeleton (default
    /// true).
    #[serde(default = "yes")]
    pub confusables: bool,
    /// Traditional Chinese to simplified: `auto` (default: when some word
    /// has a Han character), `on` or `off`.
    #[serde(default = "default_traditional")]
    pub traditional: String,
    /// Characters skipped between two characters of a word: `none`
    /// (default), `whitespace`, `punctuation` or `whitespace+punctuation`.
    #[serde(default = "default_separators")]
    pub separators: String,
    /// Most separators in a row between two characters of a word
    /// (default 2, at most 16).
    #[serde(default = "default_max_gap")]
    pub max_gap: i64,
}

impl Default for FoldsConfig {
    fn default() -> Self {
        Self {
            ignorables: true,
            width: true,
            case: true,
            confusables: true,
            traditional: default_traditional(),
            separators: default_separators(),
            max_gap: default_max_gap(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_traditional() -> String {
    "auto".to_owned()
}

fn default_separators() -> String {
    "none".to_owned()
}

fn default_max_gap() -> i64 {
    2
}

/// One dictionary entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordConfig {
    /// The word (folded as the filter's `folds` say, like the text).
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
