//! Weir's sandboxed content filters.
//!
//! A filter is a WebAssembly module following a small ABI
//! (`docs/filters-abi.md`, [`abi`]); the bundled one
//! ([`SENSITIVE_WORDS_WASM`], source in `filters/guest/sensitive-words`,
//! built by `build.rs`) finds dictionary words with Aho-Corasick, folding
//! case and full-width forms, in English and Chinese alike.
//!
//! This crate owns the host side, without any HTTP:
//! - [`Filter`]: load a module with a [`FilterSpec`] (off the request path:
//!   it compiles, runs `weir_init` and bakes the initialised memory into the
//!   module), then scan, mask or block text. Every call runs in a fresh
//!   instance out of one process-wide pooling engine ([`EngineOptions`]),
//!   bounded by fuel, a memory cap and a stack limit; failures follow the
//!   spec's [`Policy`].
//! - [`openai`]: the text fields of OpenAI request and response bodies,
//!   replaced in place.
//! - [`sse`] and [`stream`]: incremental SSE parsing and masking of streamed
//!   answers with a bounded hold-back.
//!
//! What a gateway calls, per phase (each returns what to record:
//! [`Outcome::hits`] for `weir_filter_matches_total{filter,category,direction}`,
//! [`Outcome::error`] and [`FilterError::kind`] for
//! `weir_filter_errors_total{filter,kind}`):
//! - config snapshot build: [`Filter::load`] / [`Filter::sensitive_words`]
//!   per configured filter; publish the new chain only if all load.
//! - request body (buffered): [`openai::filter_request`] per filter in
//!   order, feeding each [`Verdict::Masked`] body to the next;
//!   [`Verdict::Blocked`] → 400 naming the category, [`Verdict::Unavailable`]
//!   → 503, [`openai::BodyError`] → 400 (or skip, per route).
//! - non-streamed response body: [`openai::filter_response`], alike.
//! - streamed response: one [`StreamFilter`] per filter and response, and
//!   one parse: [`sse::SseParser::read`] each upstream chunk (the last with
//!   `end`), pass the piece through the filters in order
//!   ([`StreamFilter::push_events`], each taking the previous one's
//!   output) and forward [`sse::SseChunk::into_bytes`]. A single filter on
//!   bytes: [`StreamFilter::push`] each chunk, [`StreamFilter::finish`] at
//!   the end. [`StreamFilter::held_bytes`] feeds the hold-back histogram,
//!   [`StreamFilter::report`] the counters.
//!
//! ```no_run
//! use weir_filters::{Action, Filter, FilterSpec, Verdict};
//!
//! let words = vec![("坏词".to_owned(), "abuse".to_owned())];
//! let filter = Filter::sensitive_words(
//!     FilterSpec::new("words", words).with_action(Action::Mask('*')),
//! )?;
//! assert_eq!(filter.check("这是坏词").verdict, Verdict::Masked("这是**".to_owned()));
//! # Ok::<(), weir_filters::FilterError>(())
//! ```

pub mod abi;
mod bake;
mod engine;
mod error;
mod filter;
mod json;
pub mod openai;
mod spec;
pub mod sse;
pub mod stream;
mod verdict;

pub use abi::{Match, ScanResult};
pub use engine::{EngineOptions, MAX_MEMORY_LIMIT, MAX_WASM_STACK, configure_engine};
pub use error::FilterError;
pub use filter::{Filter, SENSITIVE_WORDS_WASM, Session};
pub use spec::{
    Action, DEFAULT_MEMORY_LIMIT, FilterSpec, Folds, FuelBudget, HOLDBACK_HIDDEN_PER_GAP, MAX_GAP,
    Policy, Separators, Traditional,
};
pub use stream::{StreamFilter, StreamReport};
pub use verdict::{Outcome, Verdict, mask};
