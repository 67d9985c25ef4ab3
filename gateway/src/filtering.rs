//! Content filters on the request path.
//!
//! - [`load`]: a snapshot's filter definitions become loaded
//!   [`weir_filters::Filter`]s while the runtime is built (compiled off the
//!   request path, on a blocking thread); a definition equal to one of the
//!   previous runtime keeps its loaded filter, so a weight change never
//!   recompiles anything. A filter that fails to load fails the build, and
//!   the old chain keeps serving.
//! - [`filter_request`]: a buffered request body through the route's chain.
//! - [`ResponseFilter`]: a non-streamed JSON answer (buffered) or an SSE
//!   stream (chunk by chunk, with the bounded hold-back of
//!   [`weir_filters::StreamFilter`]) through the route's chain. A stream
//!   comes parsed, by the usage tap ([`ResponseFilter::push_events`]): its
//!   events go from filter to filter and become bytes once, at the end.
//!
//! Every call is recorded in `weir_filter_*` metrics, through handles
//! resolved when the filter is loaded (so a call costs atomic adds, not
//! labelled lookups; resolving them also creates every series at 0).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use weir_conf::filters::{FilterAction, FilterDef, FilterModule, FilterPolicy, NonJson};
use weir_filters::sse::{SseChunk, SseParser};
use weir_filters::{
    Action, Filter, FilterSpec, Folds, Outcome, Policy, Separators, StreamFilter, Traditional,
    Verdict, openai,
};

use crate::errors::GatewayError;
use crate::metrics::Metrics;

/// A loaded filter with the definition it was loaded from.
pub struct LoadedFilter {
    /// The definition.
    pub def: FilterDef,
    /// The loaded filter.
    pub filter: Filter,
    metrics: FilterMetrics,
}

/// One filter's metric handles.
struct FilterMetrics {
    /// `weir_filter_duration_seconds{filter,direction}`, by [`Direction`].
    duration: [Histogram; 2],
    /// `weir_filter_matches_total{filter,category,direction}`, by category,
    /// then [`Direction`].
    matches: HashMap<Arc<str>, [IntCounter; 2]>,
    /// `weir_filter_errors_total{filter,kind}`, by kind.
    errors: HashMap<&'static str, IntCounter>,
    /// `weir_filter_holdback_bytes`.
    holdback: Histogram,
    /// The vectors, for a category or kind nobody foresaw.
    matches_vec: IntCounterVec,
    errors_vec: IntCounterVec,
}

impl FilterMetrics {
    fn new(metrics: &Metrics, filter: &Filter) -> Self {
        let name = filter.name();
        let directions = [Direction::Request, Direction::Response];
        Self {
            duration: directions.map(|d| {
                metrics
                    .filter_duration
                    .with_label_values(&[name, d.label()])
            }),
            matches: filter
                .categories()
                .iter()
                .map(|c| {
                    let per = directions.map(|d| {
                        metrics
                            .filter_matches
                            .with_label_values(&[name, c, d.label()])
                    });
                    (Arc::clone(c), per)
                })
                .collect(),
            errors: weir_filters::FilterError::CALL_KINDS
                .iter()
                .map(|&kind| (kind, metrics.filter_errors.with_label_values(&[name, kind])))
                .collect(),
            holdback: metrics.filter_holdback.clone(),
            matches_vec: metrics.filter_matches.clone(),
            errors_vec: metrics.filter_errors.clone(),
        }
    }

    fn matched(&self, filter: &str, category: &str, d: Direction) {
        match self.matches.get(category) {
            Some(per) => per[d as usize].inc(),
            None => self
                .matches_vec
                .with_label_values(&[filter, category, d.label()])
                .inc(),
        }
    }

    fn failed(&self, filter: &str, kind: &'static str) {
        match self.errors.get(kind) {
            Some(c) => c.inc(),
            None => self.errors_vec.with_label_values(&[filter, kind]).inc(),
        }
    }
}

/// Loads `defs`, reusing the filters of `previous` whose definition is
/// unchanged. Compiling happens on a blocking thread.
pub async fn load(
    defs: &[FilterDef],
    previous: &[Arc<LoadedFilter>],
    metrics: &Metrics,
) -> Result<Vec<Arc<LoadedFilter>>, String> {
    let mut out = Vec::with_capacity(defs.len());
    for def in defs {
        if let Some(same) = previous.iter().find(|p| p.def == *def) {
            out.push(Arc::clone(same));
            continue;
        }
        let (owned, metrics) = (def.clone(), metrics.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = load_one(owned, &metrics);
            // The compiler's temporaries, freed on this thread, which goes
            // idle now: given back at once (tens of MiB per module); and
            // its code, paged in by the compile, out of the resident set.
            crate::alloc::give_back_freed_memory();
            if let Err(e) = crate::alloc::release_code_pages() {
                tracing::debug!(error = %e, "code pages kept resident");
            }
            loaded
        })
        .await
        .map_err(|e| format!("filters[{}]: loader failed: {e}", def.name))??;
        out.push(Arc::new(loaded));
    }
    Ok(out)
}

fn load_one(def: FilterDef, metrics: &Metrics) -> Result<LoadedFilter, String> {
    let action = match def.action {
        FilterAction::Mask => Action::Mask(def.mask_char),
        FilterAction::Block => Action::Block,
    };
    let policy = match def.policy {
        FilterPolicy::FailClosed => Policy::FailClosed,
        FilterPolicy::FailOpen => Policy::FailOpen,
    };
    let mut spec = FilterSpec::new(def.name.clone(), def.words.clone())
        .with_action(action)
        .with_policy(policy)
        .with_memory_limit(def.memory_limit);
    if let Some(f) = def.folds {
        spec = spec.with_folds(folds(f));
    }
    let filter = match &def.module {
        FilterModule::Bundled => Filter::sensitive_words(spec),
        FilterModule::File { wasm, .. } => Filter::load(wasm, spec),
    }
    .map_err(|e| format!("filters[{}]: {e}", def.name))?;
    let metrics = FilterMetrics::new(metrics, &filter);
    Ok(LoadedFilter {
        def,
        filter,
        metrics,
    })
}

/// The bundled module's folds, from the config's validated ones.
fn folds(f: weir_conf::filters::Folds) -> Folds {
    Folds {
        ignorables: f.ignorables,
        width: f.width,
        case: f.case,
        confusables: f.confusables,
        traditional: match f.traditional {
            None => Traditional::Auto,
            Some(true) => Traditional::On,
            Some(false) => Traditional::Off,
        },
        separators: match (f.whitespace, f.punctuation) {
            (false, false) => Separators::None,
            (true, false) => Separators::Whitespace,
            (false, true) => Separators::Punctuation,
            (true, true) => Separators::WhitespaceAndPunctuation,
        },
        max_gap: f.max_gap,
    }
}

/// `request` or `response` (the `direction` label).
#[derive(Debug, Clone, Copy)]
enum Direction {
    Request = 0,
    Response = 1,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// Records what one filter call found and returns its verdict.
fn record<T>(
    loaded: &LoadedFilter,
    direction: Direction,
    started: Instant,
    outcome: Outcome<T>,
) -> Verdict<T> {
    let m = &loaded.metrics;
    m.duration[direction as usize].observe(started.elapsed().as_secs_f64());
    report(loaded, direction, &outcome.hits, outcome.error.as_ref());
    outcome.verdict
}

/// Counts the categories a filter found and the error it failed with.
fn report(
    loaded: &LoadedFilter,
    direction: Direction,
    hits: &[Arc<str>],
    error: Option<&weir_filters::FilterError>,
) {
    let name = loaded.filter.name();
    for category in hits {
        loaded.metrics.matched(name, category, direction);
    }
    if let Some(error) = error {
        loaded.metrics.failed(name, error.kind());
        tracing::warn!(filter = name, kind = error.kind(), error = %error, "content filter failed");
    }
}

/// Runs a buffered request body through `chain`. Returns the body to send
/// upstream (masked or unchanged) or the error to answer with.
pub fn filter_request(
    chain: &[Arc<LoadedFilter>],
    mut body: Bytes,
    non_json: NonJson,
) -> Result<Bytes, GatewayError> {
    for loaded in chain {
        let filter = &loaded.filter;
        let started = Instant::now();
        let verdict = match openai::filter_request(filter, &body) {
            Ok(outcome) => {
                record(loaded, Direction::Request, started, outcome).map_masked(Bytes::from)
            }
            Err(e) => match non_json {
                NonJson::Reject => return Err(GatewayError::InvalidBody(e.to_string())),
                NonJson::Skip => return Ok(body),
                NonJson::Raw => {
                    let text = std::str::from_utf8(&body).map_err(|_| {
                        GatewayError::InvalidBody("the body is not UTF-8 text".to_owned())
                    })?;
                    let outcome = filter.check(text);
                    record(loaded, Direction::Request, started, outcome).map_masked(Bytes::from)
                }
            },
        };
        if let Some(err) = refusal(&verdict, filter) {
            return Err(err);
        }
        if let Verdict::Masked(masked) = verdict {
            body = masked;
        }
    }
    Ok(body)
}

/// The error a refusing verdict answers with (`None` for pass and mask).
fn refusal<T>(verdict: &Verdict<T>, filter: &Filter) -> Option<GatewayError> {
    match verdict {
        Verdict::Blocked { category } => Some(GatewayError::ContentBlocked {
            category: category.to_string(),
        }),
        Verdict::Unavailable => Some(GatewayError::FilterUnavailable {
            filter: filter.name().to_owned(),
        }),
        Verdict::Pass | Verdict::Masked(_) => None,
    }
}

/// Maps the replacement content of a verdict.
trait MapMasked<T> {
    fn map_masked<U>(self, f: impl FnOnce(T) -> U) -> Verdict<U>;
}

impl<T> MapMasked<T> for Verdict<T> {
    fn map_masked<U>(self, f: impl FnOnce(T) -> U) -> Verdict<U> {
        match self {
            Verdict::Pass => Verdict::Pass,
            Verdict::Masked(t) => Verdict::Masked(f(t)),
            Verdict::Blocked { category } => Verdict::Blocked { category },
            Verdict::Unavailable => Verdict::Unavailable,
        }
    }
}

/// The response side of one request.
pub enum ResponseFilter {
    /// A non-streamed JSON answer, buffered up to `max` bytes.
    Json {
        /// The chain.
        chain: Vec<Arc<LoadedFilter>>,
        /// What arrived so far.
        buf: BytesMut,
        /// Buffering limit.
        max: usize,
        /// The limit was passed: the answer was replaced by an error.
        overflowed: bool,
    },
    /// An SSE stream: one stream filter per filter of the chain.
    Stream {
        /// The chain.
        chain: Vec<(StreamFilter, Arc<LoadedFilter>)>,
        /// Parses the answer when it comes as bytes
        /// ([`ResponseFilter::push`]); idle when it comes parsed
        /// ([`ResponseFilter::push_events`]).
        parser: SseParser,
    },
}

impl ResponseFilter {
    /// A filter for a response of `content_type`, or `None` when the
    /// response is neither JSON nor SSE (it passes unchanged).
    pub fn for_content_type(
        content_type: &str,
        chain: &[Arc<LoadedFilter>],
        max: usize,
    ) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => Some(Self::Stream {
                chain: chain
                    .iter()
                    .map(|f| (StreamFilter::new(&f.filter), Arc::clone(f)))
                    .collect(),
                parser: SseParser::default(),
            }),
            "application/json" => Some(Self::Json {
                chain: chain.to_vec(),
                buf: BytesMut::new(),
                max,
                overflowed: false,
            }),
            _ => None,
        }
    }

    /// Takes one upstream chunk (`None` at the end without data) and returns
    /// what to send downstream now.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        match self {
            Self::Json {
                chain,
                buf,
                max,
                overflowed,
            } => {
                if *overflowed {
                    return None;
                }
                if let Some(c) = chunk {
                    if buf.len() + c.len() > *max {
                        *overflowed = true;
                        buf.clear();
                        let err = GatewayError::Internal(format!(
                            "the answer exceeds {max} bytes, the most this route filters"
                        ));
                        return Some(Bytes::from(err.body()));
                    }
                    buf.extend_from_slice(&c);
                }
                if !end {
                    return None;
                }
                let body = std::mem::take(buf).freeze();
                Some(filter_response_json(chain, body))
            }
            Self::Stream { parser, .. } => {
                let piece = parser.read(chunk.as_deref().unwrap_or_default(), end);
                self.push_events(piece)
            }
        }
    }

    /// Takes one piece of a parsed SSE answer and returns what to send
    /// downstream now: the events through each filter in turn, written
    /// once. A JSON filter takes the piece's bytes.
    pub fn push_events(&mut self, mut piece: SseChunk) -> Option<Bytes> {
        let end = piece.end;
        let Self::Stream { chain, .. } = self else {
            return self.push(Some(piece.into_bytes()), end);
        };
        for (f, loaded) in chain.iter_mut() {
            let started = Instant::now();
            piece = f.push_events(piece);
            loaded.metrics.duration[Direction::Response as usize]
                .observe(started.elapsed().as_secs_f64());
        }
        let held: usize = chain.iter().map(|(f, _)| f.held_bytes()).sum();
        if let Some((_, loaded)) = chain.first() {
            loaded.metrics.holdback.observe(held as f64);
        }
        if end {
            for (f, loaded) in chain.iter() {
                let r = f.report();
                report(loaded, Direction::Response, &r.hits, r.error.as_ref());
            }
        }
        Some(piece.into_bytes())
    }
}

/// A whole JSON answer through the chain: masked, or replaced by an error
/// body when blocked or failed closed. A body that is not an OpenAI answer
/// (an upstream error, say) passes unchanged.
fn filter_response_json(chain: &[Arc<LoadedFilter>], mut body: Bytes) -> Bytes {
    for loaded in chain {
        let filter = &loaded.filter;
        let started = Instant::now();
        let Ok(outcome) = openai::filter_response(filter, &body) else {
            return body;
        };
        let verdict = record(loaded, Direction::Response, started, outcome);
        if let Some(err) = refusal(&verdict, filter) {
            return Bytes::from(err.body());
        }
        if let Verdict::Masked(masked) = verdict {
            body = Bytes::from(masked);
        }
    }
    body
}
