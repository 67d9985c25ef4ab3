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
//! # disguised words (the bundled module; these are the defaults)
//! folds = { ignorables = true, width = true, case = true, confusables = true,
//!           traditional = "auto", separators = "none", max_gap = 2 }
//!
//! [[routes]]
//! # ...
//! filters = { request = ["words"], response = ["words"], max_body_bytes = 1048576, non_json = "reject" }
//! ```
//!
//! Files named here (`words_file`, a `.wasm` `module`) are read when the
//! snapshot is built, so a change to them is picked up by the next reload;
//! relative paths are relative to the gateway's working directory.
//!
//! - `types`: the file types (serde, unknown fields rejected).
//! - `check`: their validation into [`FilterDef`] and [`RouteFilters`]
//!   (feature `validate`).

pub(crate) mod types;

#[cfg(feature = "validate")]
pub(crate) mod check;

#[cfg(feature = "validate")]
pub use check::{
    FilterDef, FilterModule, Folds, MAX_FOLD_GAP, RouteFilters, check_filters, check_route_filters,
};
pub use types::{
    BUNDLED_MODULE, DEFAULT_MAX_BODY, DEFAULT_MEMORY_MB, FilterAction, FilterConfig, FilterPolicy,
    FoldsConfig, MAX_BODY_LIMIT, MAX_MEMORY_MB, NonJson, RouteFiltersConfig, WordConfig,
};
