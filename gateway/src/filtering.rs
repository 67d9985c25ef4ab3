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
//!   [`weir_filters::StreamFilter`]) through the route's chain.
//!
//! Every call is recorded in `weir_filter_*` metrics.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use weir_conf::filters::{FilterAction, FilterDef, FilterModule, FilterPolicy, NonJson};
use weir_filters::{Action, Filter, FilterSpec, Outcome, Policy, StreamFilter, Verdict, openai};

use crate::errors::GatewayError;
use crate::metrics::Metrics;

/// A loaded filter with the definition it was loaded from.
pub struct LoadedFilter {
    /// The definition.
    pub def: FilterDef,
    /// The loaded filter.
    pub filter: Filter,
}

/// Loads `defs`, reusing the filters of `previous` whose definition is
/// unchanged. Compiling happens on a blocking thread.
pub async fn load(
    defs: &[FilterDef],
    previous: &[Arc<LoadedFilter>],
) -> Result<Vec<Arc<LoadedFilter>>, String> {
    let mut out = Vec::with_capacity(defs.len());
    for def in defs {
        if let Some(same) = previous.iter().find(|p| p.def == *def) {
            out.push(Arc::clone(same));
            continue;
        }
        let owned = def.clone();
        let loaded = tokio::task::spawn_blocking(move || load_one(owned))
            .await
            .map_err(|e| format!("filters[{}]: loader failed: {e}", def.name))??;
        out.push(Arc::new(loaded));
    }
    Ok(out)
}

fn load_one(def: FilterDef) -> Result<LoadedFilter, String> {
    let action = match def.action {
        FilterAction::Mask => Action::Mask(def.mask_char),
        FilterAction::Block => Action::Block,
    };
    let policy = match def.policy {
        FilterPolicy::FailClosed => Policy::FailClosed,
        FilterPolicy::FailOpen => Policy::FailOpen,
    };
    let spec = FilterSpec::new(def.name.clone(), def.words.clone())
        .with_action(action)
        .with_policy(policy)
        .with_memory_limit(def.memory_limit);
    let filter = match &def.module {
        FilterModule::Bundled => Filter::sensitive_words(spec),
        FilterModule::File { wasm, .. } => Filter::load(wasm, spec),
    }
    .map_err(|e| format!("filters[{}]: {e}", def.name))?;
    Ok(LoadedFilter { def, filter })
}

/// Creates the zero series of a loaded filter (every category in both
/// directions, every call failure kind), so dashboards see a rate of 0
/// rather than no data.
pub fn register_series(metrics: &Metrics, filter: &Filter) {
    for category in filter.categories() {
        for d in [Direction::Request, Direction::Response] {
            metrics
                .filter_matches
                .with_label_values(&[filter.name(), category, d.label()]);
        }
    }
    for kind in weir_filters::FilterError::CALL_KINDS {
        metrics
            .filter_errors
            .with_label_values(&[filter.name(), kind]);
    }
}

/// `request` or `response` (the `direction` label).
#[derive(Debug, Clone, Copy)]
enum Direction {
    Request,
    Response,
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
    metrics: &Metrics,
    filter: &Filter,
    direction: Direction,
    started: Instant,
    outcome: Outcome<T>,
) -> Verdict<T> {
    let name = filter.name();
    metrics
        .filter_duration
        .with_label_values(&[name, direction.label()])
        .observe(started.elapsed().as_secs_f64());
    for category in &outcome.hits {
        metrics
            .filter_matches
            .with_label_values(&[name, category, direction.label()])
            .inc();
    }
    if let Some(error) = &outcome.error {
        metrics
            .filter_errors
            .with_label_values(&[name, error.kind()])
            .inc();
        tracing::warn!(filter = name, kind = error.kind(), error = %error, "content filter failed");
    }
    outcome.verdict
}

/// Runs a buffered request body through `chain`. Returns the body to send
/// upstream (masked or unchanged) or the error to answer with.
pub fn filter_request(
    chain: &[Arc<LoadedFilter>],
    mut body: Bytes,
    non_json: NonJson,
    metrics: &Metrics,
) -> Result<Bytes, GatewayError> {
    for loaded in chain {
        let filter = &loaded.filter;
        let started = Instant::now();
        let verdict = match openai::filter_request(filter, &body) {
            Ok(outcome) => record(metrics, filter, Direction::Request, started, outcome)
                .map_masked(Bytes::from),
            Err(e) => match non_json {
                NonJson::Reject => return Err(GatewayError::InvalidBody(e.to_string())),
                NonJson::Skip => return Ok(body),
                NonJson::Raw => {
                    let text = std::str::from_utf8(&body).map_err(|_| {
                        GatewayError::InvalidBody("the body is not UTF-8 text".to_owned())
                    })?;
                    let outcome = filter.check(text);
                    record(metrics, filter, Direction::Request, started, outcome)
                        .map_masked(Bytes::from)
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
    Stream(Vec<StreamFilter>),
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
            "text/event-stream" => Some(Self::Stream(
                chain.iter().map(|f| StreamFilter::new(&f.filter)).collect(),
            )),
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
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool, metrics: &Metrics) -> Option<Bytes> {
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
                Some(filter_response_json(chain, body, metrics))
            }
            Self::Stream(filters) => {
                let mut out = chunk.unwrap_or_default();
                for f in filters.iter_mut() {
                    let started = Instant::now();
                    if !out.is_empty() {
                        out = f.push(&out);
                    }
                    if end {
                        let mut tail = out.to_vec();
                        tail.extend_from_slice(&f.finish());
                        out = Bytes::from(tail);
                    }
                    metrics
                        .filter_duration
                        .with_label_values(&[f.filter_name(), Direction::Response.label()])
                        .observe(started.elapsed().as_secs_f64());
                }
                let held: usize = filters.iter().map(StreamFilter::held_bytes).sum();
                metrics.filter_holdback.observe(held as f64);
                if end {
                    for f in filters.iter() {
                        record_stream(metrics, f);
                    }
                }
                Some(out)
            }
        }
    }
}

fn record_stream(metrics: &Metrics, f: &StreamFilter) {
    let report = f.report();
    let name = f.filter_name();
    for category in &report.hits {
        metrics
            .filter_matches
            .with_label_values(&[name, category, Direction::Response.label()])
            .inc();
    }
    if let Some(error) = &report.error {
        metrics
            .filter_errors
            .with_label_values(&[name, error.kind()])
            .inc();
        tracing::warn!(filter = name, kind = error.kind(), error = %error, "stream filter failed");
    }
}

/// A whole JSON answer through the chain: masked, or replaced by an error
/// body when blocked or failed closed. A body that is not an OpenAI answer
/// (an upstream error, say) passes unchanged.
fn filter_response_json(chain: &[Arc<LoadedFilter>], mut body: Bytes, metrics: &Metrics) -> Bytes {
    for loaded in chain {
        let filter = &loaded.filter;
        let started = Instant::now();
        let Ok(outcome) = openai::filter_response(filter, &body) else {
            return body;
        };
        let verdict = record(metrics, filter, Direction::Response, started, outcome);
        if let Some(err) = refusal(&verdict, filter) {
            return Bytes::from(err.body());
        }
        if let Verdict::Masked(masked) = verdict {
            body = Bytes::from(masked);
        }
    }
    body
}
