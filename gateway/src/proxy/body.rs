//! Bodies on their way through: request bodies buffered for the route's
//! request filters (or to ask a stream for its usage) and sent filtered or
//! refused (400 blocked, 503 filter unavailable, 413 too large); answers
//! read for their token usage, filtered (JSON buffered, SSE chunk by chunk
//! with a bounded hold-back, parsed once for both) and timed (time to first
//! token).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_error::{Error, ErrorType, Result};
use weir_conf::model::Protocol;

use super::ctx::{BodyState, GatewayCtx};
use super::head::AnswerHead;
use crate::access::TenantRt;
use crate::errors::GatewayError;
use crate::filtering::ResponseFilter;
use crate::rename::AnswerRename;
use crate::request_head::RequestHead;
use crate::route_match::{content_length, has_body};
use crate::runtime::RouteRt;
use crate::usage::{StreamClock, UsageTap};

impl BodyState {
    /// Decides, once the arm is chosen, whether the request body is
    /// buffered: for the route's request filters (refusing a declared
    /// length over their limit), to add `include_usage` for a tenant whose
    /// tokens are limited, or to `rename` the model for the arm.
    pub(super) fn plan(
        &mut self,
        route: &RouteRt,
        req: &dyn RequestHead,
        tenant: Option<&TenantRt>,
        rename: bool,
    ) -> Result<(), GatewayError> {
        if !has_body(req) {
            return Ok(());
        }
        if !route.request_filters.is_empty() {
            let limit = route.config.filters.max_body;
            if content_length(req).is_some_and(|n| n > limit) {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            self.req = Some(BytesMut::new());
        }
        if tenant.is_some_and(TenantRt::counts_tokens) {
            self.inject_usage = true;
            self.req.get_or_insert_with(BytesMut::new);
        }
        if rename {
            self.rename = true;
            self.req.get_or_insert_with(BytesMut::new);
        }
        self.buffered = self.req.is_some();
        Ok(())
    }
}

/// Before each attempt sends the body: its count starts again, and a body
/// the plan buffers is buffered again. A retry replays the body as the
/// client sent it, which must go through the filters (and the arm's
/// rename) again, not upstream as it came.
pub(super) fn new_attempt(ctx: &mut GatewayCtx) {
    let state = &mut ctx.body;
    state.seen = 0;
    if state.buffered {
        state.req.get_or_insert_with(BytesMut::new);
    }
}

/// The filtered body's length is known only after the headers have gone:
/// a buffered request body goes upstream chunked (HTTP/2 needs no length).
pub(super) fn upstream_headers(ctx: &GatewayCtx, edits: &mut super::fields::FieldEdits) {
    if ctx.body.req.is_none() {
        return;
    }
    edits.remove(&http::header::CONTENT_LENGTH);
    if ctx
        .arm()
        .is_some_and(|a| a.pool.config.protocol != Protocol::Http1)
    {
        edits.remove(&http::header::TRANSFER_ENCODING);
    } else {
        edits.set(
            &http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
}

/// One piece of the request body: counted against the route's limit, and
/// when buffered, held until the end and then sent through the filters.
pub(super) fn request_body(
    ctx: &mut GatewayCtx,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> Result<(), GatewayError> {
    let state = &mut ctx.body;
    if let Some(chunk) = body.as_ref() {
        state.seen += chunk.len();
        if state.seen > state.max {
            return Err(GatewayError::BodyTooLarge { limit: state.max });
        }
    }
    let Some(routed) = ctx.routed.as_ref() else {
        return Ok(());
    };
    let (Some(buf), Some(route)) = (state.req.as_mut(), routed.route()) else {
        return Ok(());
    };
    let limit = if route.request_filters.is_empty() {
        state.max
    } else {
        route.config.filters.max_body
    };
    if let Some(chunk) = body.take() {
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    if !end_of_stream {
        // Empty, not None: Pingora reads None as the end of the body.
        *body = Some(Bytes::new());
        return Ok(());
    }
    let mut whole = std::mem::take(buf).freeze();
    state.req = None;
    if whole.is_empty() {
        // No body after all: nothing to filter.
        return Ok(());
    }
    // The arm of this attempt (after a fallback, the fallback arm).
    if state.rename
        && let Some(model) = routed.arm().and_then(|a| a.model.as_deref())
    {
        let (renamed, asked) = crate::rename::request(whole, model)?;
        whole = renamed;
        state.client_model = asked.filter(|a| a != model);
    }
    if state.inject_usage {
        let (with_usage, added) = crate::usage::request_usage(whole);
        whole = with_usage;
        state.strip_usage = added;
    }
    *body = Some(crate::filtering::filter_request(
        &route.request_filters,
        whole,
        route.config.filters.non_json,
    )?);
    Ok(())
}

/// The answer's header: sets up the response filters, the usage tap and
/// the stream clock; a body they may rewrite loses its `Content-Length`.
pub(super) fn response_header(
    ctx: &mut GatewayCtx,
    resp: &mut impl AnswerHead,
    h1: bool,
) -> Result<()> {
    if let Some(route) = ctx.routed.as_ref().and_then(|r| r.route())
        && resp.status().is_success()
    {
        let state = &mut ctx.body;
        let content_type = resp
            .field("content-type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        if !route.response_filters.is_empty() {
            state.resp_filter = ResponseFilter::for_content_type(
                content_type,
                &route.response_filters,
                route.config.filters.max_body,
            )
            .map(Box::new);
        }
        // A task's id leaves with its backend's tag.
        let task = ctx
            .upstream
            .backend
            .as_ref()
            .filter(|_| state.task)
            .map(|b| crate::rename::task_suffix(crate::pool::address_tag(&b.addr)));
        state.resp_rename =
            AnswerRename::for_content_type(content_type, state.client_model.clone(), task)
                .map(Box::new);
        let sse = crate::usage::is_event_stream(content_type);
        if sse {
            state.stream = Some(StreamClock::new(Instant::now()));
        }
        if sse || ctx.openai || ctx.tenant.as_ref().is_some_and(|t| t.counts_tokens()) {
            state.usage = UsageTap::for_content_type(content_type, state.strip_usage).map(Box::new);
        }
    }
    let state = &ctx.body;
    if state.resp_filter.is_some()
        || state.resp_rename.is_some()
        || state.usage.as_ref().is_some_and(|u| u.rewrites())
    {
        resp.remove(&http::header::CONTENT_LENGTH);
        if h1 && !resp.has("transfer-encoding") {
            resp.set(
                &http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            )?;
        }
    }
    Ok(())
}

/// One piece of the answer: the route's deadline checked, usage read (and
/// the tenant's tokens counted at the end), filters applied, the first
/// streamed chunk timed.
pub(super) fn response_body(
    ctx: &mut GatewayCtx,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> Result<()> {
    if let Some(deadline) = ctx.upstream.deadline
        && !end_of_stream
        && Instant::now() >= deadline
    {
        return Err(Error::explain(
            ErrorType::ReadTimedout,
            "the route's total timeout passed",
        ));
    }
    let state = &mut ctx.body;
    *body = pass_answer(state, body.take(), end_of_stream);
    if end_of_stream
        && let Some(tap) = &state.usage
        && let (Some(tokens), Some(tenant)) = (tap.tokens(), &ctx.tenant)
    {
        let redis = ctx
            .routed
            .as_ref()
            .and_then(|r| r.runtime.access.redis.as_ref());
        tenant.record_tokens(tokens, redis);
    }
    if let Some(clock) = state.stream.as_mut()
        && body.as_ref().is_some_and(|b| !b.is_empty())
        && clock.chunk(Instant::now())
        && let Some(arm) = ctx.routed.as_ref().and_then(|r| r.arm())
    {
        arm.ttft
            .observe(clock.last().duration_since(ctx.start).as_secs_f64());
    }
    Ok(())
}

/// One piece of the answer through the usage tap, then the response
/// filters. An SSE answer is parsed once, by the tap; the events it leaves
/// go through the stream filters and become bytes after them.
fn pass_answer(state: &mut BodyState, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
    let events = state
        .usage
        .as_mut()
        .and_then(|tap| tap.read_events(chunk.as_deref(), end));
    if let Some(mut piece) = events {
        if let Some(rename) = &state.resp_rename {
            rename.events(&mut piece);
        }
        return match state.resp_filter.as_mut() {
            Some(filter) => filter.push_events(piece),
            None => crate::usage::sse_body(piece),
        };
    }
    let mut body = chunk;
    if let Some(tap) = state.usage.as_mut() {
        body = tap.push(body, end);
    }
    if let Some(rename) = state.resp_rename.as_mut() {
        body = rename.push(body, end);
    }
    if let Some(filter) = state.resp_filter.as_mut() {
        body = filter.push(body, end);
    }
    body
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use weir_conf::filters::{FilterAction, FilterDef, FilterModule, FilterPolicy};
    use weir_filters::StreamFilter;

    use super::*;
    use crate::filtering::LoadedFilter;

    async fn chain() -> Vec<Arc<LoadedFilter>> {
        let def = |name: &str, word: &str, mask_char| FilterDef {
            name: name.to_owned(),
            module: FilterModule::Bundled,
            words: vec![(word.to_owned(), "abuse".to_owned())],
            action: FilterAction::Mask,
            mask_char,
            policy: FilterPolicy::FailClosed,
            memory_limit: 16 << 20,
            folds: None,
        };
        let defs = [def("en", "badword", '*'), def("zh", "坏词", '#')];
        let metrics = crate::metrics::Metrics::new().unwrap();
        crate::filtering::load(&defs, &[], &metrics).await.unwrap()
    }

    fn chat(content: &str) -> String {
        let data = serde_json::json!({"choices": [{"index": 0, "delta": {"content": content}}]});
        format!("data: {data}\n\n")
    }

    fn answer(eol: &str) -> String {
        [
            chat("a bad"),
            chat("word, 坏"),
            chat("词 and bad"),
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
                .to_owned(),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n"
                .to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
        .replace('\n', eol)
    }

    /// The answer as the tap and the filters passed it before they shared
    /// one parse: bytes from the tap, then through each filter's own parser.
    fn on_bytes(chain: &[Arc<LoadedFilter>], strip: bool, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut tap = UsageTap::for_content_type("text/event-stream", strip).unwrap();
        let mut filters: Vec<StreamFilter> =
            chain.iter().map(|f| StreamFilter::new(&f.filter)).collect();
        feed(chunks, |chunk, end| {
            let mut out = tap.push(chunk, end).unwrap_or_default();
            for f in &mut filters {
                if !out.is_empty() {
                    out = f.push(&out);
                }
                if end {
                    out = [&out[..], &f.finish()].concat().into();
                }
            }
            Some(out)
        })
    }

    /// Passes `chunks`, then the end of the answer, through `step`; returns
    /// what each call sent.
    fn feed(
        chunks: &[&[u8]],
        mut step: impl FnMut(Option<Bytes>, bool) -> Option<Bytes>,
    ) -> Vec<Vec<u8>> {
        let chunks = chunks.iter().map(|c| Some(Bytes::copy_from_slice(c)));
        let count = chunks.len();
        chunks
            .chain([None])
            .enumerate()
            .map(|(i, chunk)| step(chunk, i == count).unwrap_or_default().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn an_sse_answer_passes_the_tap_and_the_filters_as_before() {
        let chain = chain().await;
        for eol in ["\n", "\r\n", "\r"] {
            let input = answer(eol);
            let bytes = input.as_bytes();
            for strip in [false, true] {
                for size in [1, 2, 5, 64, bytes.len()] {
                    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
                    let mut state = BodyState {
                        usage: UsageTap::for_content_type("text/event-stream", strip).map(Box::new),
                        resp_filter: ResponseFilter::for_content_type(
                            "text/event-stream",
                            &chain,
                            1 << 20,
                        )
                        .map(Box::new),
                        ..BodyState::default()
                    };
                    let pieces = feed(&chunks, |chunk, end| pass_answer(&mut state, chunk, end));
                    assert_eq!(
                        pieces,
                        on_bytes(&chain, strip, &chunks),
                        "{input:?} in {size}"
                    );
                    let text = String::from_utf8(pieces.concat()).unwrap();
                    assert!(text.contains("*******") && text.contains("##"), "{text}");
                    assert_eq!(text.contains("usage"), !strip);
                    let tap = state.usage.as_ref().unwrap();
                    assert_eq!((tap.tokens(), tap.output_tokens()), (Some(7), Some(4)));
                }
            }
        }
    }

    /// The filters read the events the tap parsed, not bytes: an event
    /// whose fields say other than its bytes is filtered by its fields.
    #[tokio::test]
    async fn the_filters_take_the_parsed_events() {
        let chain = chain().await;
        let mut filter =
            ResponseFilter::for_content_type("text/event-stream", &chain, 1 << 20).unwrap();
        let mut piece = weir_filters::sse::SseParser::default().read(chat("fine").as_bytes(), true);
        let said = chat("a badword");
        piece.events[0].data = Some(said["data: ".len()..].trim_end().to_owned());
        let out = filter.push_events(piece).unwrap();
        assert_eq!(&out[..], chat("a *******").as_bytes());
    }
}
