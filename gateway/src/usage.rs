//! Token usage of an answer, read from the engine's OpenAI `usage` object:
//! the JSON body of a plain answer, or the final usage chunk of an SSE
//! stream. Token limits count it (see [`crate::access`]).
//!
//! A streamed request whose client did not ask for usage gets
//! `stream_options.include_usage = true` added on the way up
//! ([`request_usage`]), and the usage-only chunk it produces is taken out of
//! the stream again before the client sees it.
//!
//! The tap of an SSE answer is where the answer is parsed, once
//! ([`UsageTap::read_events`]): the events it leaves go on to the route's
//! stream filters, and become bytes only after them.
//!
//! A streamed answer's chunks are timed by a [`StreamClock`] (time to first
//! token, time per output token); [`record_tokens`] counts an answer's
//! tokens on its arm.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use weir_filters::sse::{LineEnds, SseChunk, SseEvent, SseParser};

use crate::runtime::ArmRt;

/// Largest JSON answer read for its usage; a larger one is not counted.
const MAX_JSON: usize = 4 << 20;

/// Most finish reasons kept of one answer (one per choice).
const MAX_FINISH_REASONS: usize = 16;

/// The token counts of one OpenAI `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens`.
    pub prompt: Option<u64>,
    /// `completion_tokens`.
    pub completion: Option<u64>,
    /// `total_tokens`.
    pub total: Option<u64>,
}

impl Usage {
    /// The counts of a `usage` object, if it has any.
    fn of(usage: &Value) -> Option<Self> {
        let field = |name| usage.get(name).and_then(Value::as_u64);
        let u = Usage {
            prompt: field("prompt_tokens"),
            completion: field("completion_tokens"),
            total: field("total_tokens"),
        };
        u.tokens().map(|_| u)
    }

    /// All tokens: `total_tokens`, else prompt + completion.
    pub fn tokens(&self) -> Option<u64> {
        self.total.or_else(|| Some(self.prompt? + self.completion?))
    }
}

/// What the gateway reads of an answer or a streamed chunk: its `usage`,
/// whether it has `choices` and their finish reasons. Every other field is
/// skipped by the parser, never built into a document.
#[derive(Deserialize)]
struct UsageView {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    choices: Option<Choices>,
}

/// `choices`: a list or anything else.
#[derive(Deserialize)]
#[serde(untagged)]
enum Choices {
    List(Vec<ChoiceView>),
    Other(IgnoredAny),
}

/// One choice: its `finish_reason`, and whether it carries text.
#[derive(Deserialize)]
struct ChoiceView {
    #[serde(default)]
    finish_reason: Option<Value>,
    #[serde(default)]
    delta: Option<DeltaView>,
    #[serde(default)]
    text: Option<Value>,
}

/// A streamed choice's `delta`: only whether it has content.
#[derive(Deserialize)]
struct DeltaView {
    #[serde(default)]
    content: Option<Value>,
}

/// Whether a JSON value is a non-empty string.
fn has_text(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if !s.is_empty())
}

impl UsageView {
    fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().and_then(Usage::of)
    }

    /// Whether some choice carries text (a content chunk; a chunk that
    /// only ends the answer carries none).
    fn has_content(&self) -> bool {
        match &self.choices {
            Some(Choices::List(choices)) => choices.iter().any(|c| {
                has_text(c.text.as_ref())
                    || has_text(c.delta.as_ref().and_then(|d| d.content.as_ref()))
            }),
            _ => false,
        }
    }

    /// Adds the choices' finish reasons (strings only) to `out`.
    fn finish_reasons(&self, out: &mut Vec<Box<str>>) {
        if let Some(Choices::List(choices)) = &self.choices {
            for c in choices {
                if let Some(Value::String(r)) = &c.finish_reason
                    && out.len() < MAX_FINISH_REASONS
                {
                    out.push(r.as_str().into());
                }
            }
        }
    }
}

/// Whether a streamed event's data may name a finish reason (a quoted
/// value, not `null`): only those events and usage events are parsed.
fn names_a_finish_reason(data: &str) -> bool {
    data.contains("\"finish_reason\":\"") || data.contains("\"finish_reason\": \"")
}

/// Makes a streamed OpenAI request report its usage. Returns the body to
/// send and whether `include_usage` was added (so its chunk must be
/// stripped); a body that is not a JSON object, or not streamed, is left as
/// it is.
pub fn request_usage(body: Bytes) -> (Bytes, bool) {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&body) else {
        return (body, false);
    };
    if doc.get("stream") != Some(&Value::Bool(true)) {
        return (body, false);
    }
    let options = doc
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(options) = options else {
        return (body, false);
    };
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return (body, false);
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    match serde_json::to_vec(&doc) {
        Ok(v) => (Bytes::from(v), true),
        Err(_) => (body, false),
    }
}

/// Reads the usage of one answer as it passes through.
pub enum UsageTap {
    /// A JSON answer, copied (up to a bound) and parsed at its end.
    Json {
        /// The bytes so far; `None` once over the bound.
        buf: Option<BytesMut>,
        /// Usage found.
        usage: Option<Usage>,
        /// The choices' finish reasons.
        finish_reasons: Vec<Box<str>>,
    },
    /// An SSE stream, parsed event by event.
    Sse {
        /// The parser.
        parser: Box<SseParser>,
        /// Take usage-only chunks out of the stream.
        strip: bool,
        /// The last usage seen.
        usage: Option<Usage>,
        /// Data events with choices (content chunks) seen.
        chunks: u64,
        /// Where a stripped chunk leaves a split CRLF's LF.
        line_ends: LineEnds,
        /// The finish reasons of the chunks, in order.
        finish_reasons: Vec<Box<str>>,
    },
}

/// Whether a `content-type` is a server-sent event stream.
pub fn is_event_stream(content_type: &str) -> bool {
    content_type
        .get(..17)
        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
}

impl UsageTap {
    /// A tap for an answer of `content_type`; `None` for other types.
    pub fn for_content_type(content_type: &str, strip: bool) -> Option<Self> {
        let ct = content_type.to_ascii_lowercase();
        if is_event_stream(&ct) {
            Some(UsageTap::Sse {
                parser: Box::default(),
                strip,
                usage: None,
                chunks: 0,
                line_ends: LineEnds::default(),
                finish_reasons: Vec::new(),
            })
        } else if ct.starts_with("application/json") {
            Some(UsageTap::Json {
                buf: Some(BytesMut::new()),
                usage: None,
                finish_reasons: Vec::new(),
            })
        } else {
            None
        }
    }

    /// Whether the tap may change the bytes (so `Content-Length` must go).
    pub fn rewrites(&self) -> bool {
        matches!(self, UsageTap::Sse { strip: true, .. })
    }

    /// Passes one chunk through; what comes out goes to the client.
    pub fn push(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        if let Some(piece) = self.read_events(chunk.as_deref(), end) {
            return sse_body(piece);
        }
        if let UsageTap::Json {
            buf,
            usage,
            finish_reasons,
        } = self
        {
            if let (Some(b), Some(c)) = (buf.as_mut(), chunk.as_ref()) {
                if b.len() + c.len() > MAX_JSON {
                    *buf = None;
                } else {
                    b.extend_from_slice(c);
                }
            }
            if end
                && let Some(b) = buf.take()
                && let Some(view) = UsageView::parse(&b)
            {
                *usage = view.usage();
                view.finish_reasons(finish_reasons);
            }
        }
        chunk
    }

    /// Reads one chunk of an SSE answer, the answer's one parse: takes the
    /// usage from its events, counts content chunks and drops the
    /// usage-only chunk when asked to. Returns the events left for the
    /// client (or the stream filters); `None` for a JSON answer.
    pub fn read_events(&mut self, chunk: Option<&[u8]>, end: bool) -> Option<SseChunk> {
        let UsageTap::Sse {
            parser,
            strip,
            usage,
            chunks,
            line_ends,
            finish_reasons,
        } = self
        else {
            return None;
        };
        let mut piece = parser.read(chunk.unwrap_or_default(), end);
        if piece.failed.is_some() {
            // An oversized event: stop reading, pass the rest as is.
            *strip = false;
            return Some(piece);
        }
        let mut keep = |e: &SseEvent| {
            let Some(data) = e.data.as_deref() else {
                return true;
            };
            let view = (data.contains("\"usage\"") || names_a_finish_reason(data))
                .then(|| UsageView::parse(data.as_bytes()))
                .flatten();
            let mut keep = true;
            let mut content = data != "[DONE]";
            if let Some(doc) = &view {
                doc.finish_reasons(finish_reasons);
                // A parsed chunk counts only when it carries text.
                content = content && doc.has_content();
            }
            if let Some(doc) = view
                && let Some(u) = doc.usage()
            {
                *usage = Some(u);
                let usage_only = matches!(&doc.choices, Some(Choices::List(c)) if c.is_empty());
                content = content && !usage_only;
                keep = !(*strip && usage_only);
            }
            if content {
                *chunks += 1;
            }
            keep
        };
        piece.events.retain(&mut keep);
        piece.last = piece.last.take().filter(keep);
        if *strip {
            line_ends.align(&mut piece);
        }
        Some(piece)
    }

    /// Tokens the answer reported, once it has ended.
    pub fn tokens(&self) -> Option<u64> {
        self.usage().and_then(|u| u.tokens())
    }

    /// The usage the answer reported, once it has ended.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            UsageTap::Json { usage, .. } | UsageTap::Sse { usage, .. } => *usage,
        }
    }

    /// The finish reasons the answer's choices reported, in order.
    pub fn finish_reasons(&self) -> &[Box<str>] {
        match self {
            UsageTap::Json { finish_reasons, .. } | UsageTap::Sse { finish_reasons, .. } => {
                finish_reasons
            }
        }
    }

    /// Output tokens: the reported `completion_tokens`, else (for a stream
    /// without usage) one per content chunk.
    pub fn output_tokens(&self) -> Option<u64> {
        let reported = self.usage().and_then(|u| u.completion);
        match self {
            UsageTap::Sse { chunks, .. } => reported.or(Some(*chunks)),
            UsageTap::Json { .. } => reported,
        }
    }
}

/// What a piece of an SSE answer sends the client: its bytes; nothing for
/// an empty piece in mid-stream.
pub fn sse_body(piece: SseChunk) -> Option<Bytes> {
    (!piece.is_empty() || piece.end || piece.failed.is_some()).then(|| piece.into_bytes())
}

/// When the chunks of a streamed answer left for the client.
pub struct StreamClock {
    first: Option<Instant>,
    last: Instant,
}

impl StreamClock {
    /// A clock for an answer whose header arrived at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            first: None,
            last: now,
        }
    }

    /// When the first chunk left, if one did.
    pub fn first(&self) -> Option<Instant> {
        self.first
    }

    /// Records a chunk sent at `now`; `true` for the first one.
    pub fn chunk(&mut self, now: Instant) -> bool {
        self.last = now;
        let first = self.first.is_none();
        if first {
            self.first = Some(now);
        }
        first
    }

    /// When the last chunk left.
    pub fn last(&self) -> Instant {
        self.last
    }
}

/// Counts an answer's tokens on its arm and, for a stream, its time per
/// output token.
pub fn record_tokens(arm: &ArmRt, tap: &UsageTap, stream: Option<&StreamClock>) {
    let output = tap.output_tokens();
    if let Some(n) = tap.usage().and_then(|u| u.prompt) {
        arm.tokens[0].inc_by(n);
    }
    if let Some(n) = output {
        arm.tokens[1].inc_by(n);
    }
    if let (Some(clock), Some(n)) = (stream, output)
        && let Some(first) = clock.first
        && n >= 2
    {
        let per = clock.last.duration_since(first).as_secs_f64() / (n - 1) as f64;
        arm.tpot.observe(per);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn include_usage_is_added_only_to_streams_that_lack_it() {
        let (body, added) = request_usage(Bytes::from_static(br#"{"stream":true,"model":"m"}"#));
        assert!(added);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        for same in [
            &br#"{"stream":false}"#[..],
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            br#"{"stream":true,"stream_options":3}"#,
            b"not json",
            b"[1,2]",
        ] {
            let (body, added) = request_usage(Bytes::copy_from_slice(same));
            assert!(!added);
            assert_eq!(&body[..], same);
        }
    }

    #[test]
    fn json_usage_is_read_at_the_end() {
        let mut tap = UsageTap::for_content_type("application/json; charset=utf-8", false).unwrap();
        let body = br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;
        for (i, part) in body.chunks(9).enumerate() {
            let end = (i + 1) * 9 >= body.len();
            let out = tap.push(Some(Bytes::copy_from_slice(part)), end);
            assert_eq!(out.as_deref(), Some(part));
        }
        assert_eq!(tap.tokens(), Some(12));
    }

    #[test]
    fn finish_reasons_are_read_from_answers_and_stream_chunks() {
        let mut tap = UsageTap::for_content_type("application/json", false).unwrap();
        let body = br#"{"choices":[{"index":0,"message":{"content":"x"},"finish_reason":"stop"},{"index":1,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        tap.push(Some(Bytes::copy_from_slice(body)), true);
        let reasons: Vec<&str> = tap.finish_reasons().iter().map(|r| &**r).collect();
        assert_eq!(reasons, ["stop", "length"]);

        // A stream: content chunks name none (null), the last chunk names
        // one; a content text that quotes the marker is not a reason.
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"finish_reason\\\":\\\"x\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = UsageTap::for_content_type("text/event-stream", false).unwrap();
        for part in stream.as_bytes().chunks(7) {
            tap.push(Some(Bytes::copy_from_slice(part)), false);
        }
        tap.push(None, true);
        let reasons: Vec<&str> = tap.finish_reasons().iter().map(|r| &**r).collect();
        assert_eq!(reasons, ["stop"]);
        assert!(
            !names_a_finish_reason(r#"{"choices":[{"finish_reason":null}]}"#),
            "a null reason needs no parse"
        );
        // The chunk that only ends the answer is no output token.
        assert_eq!(tap.output_tokens(), Some(1));
    }

    #[test]
    fn sse_usage_chunk_is_counted_and_stripped_when_asked() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        for strip in [false, true] {
            let mut tap = UsageTap::for_content_type("text/event-stream", strip).unwrap();
            let mut out = Vec::new();
            let bytes = stream.as_bytes();
            for (i, part) in bytes.chunks(5).enumerate() {
                let end = (i + 1) * 5 >= bytes.len();
                if let Some(b) = tap.push(Some(Bytes::copy_from_slice(part)), end) {
                    out.extend_from_slice(&b);
                }
            }
            assert_eq!(tap.tokens(), Some(5));
            assert_eq!(tap.output_tokens(), Some(2));
            assert_eq!(tap.usage().unwrap().prompt, Some(3));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.contains("usage"), !strip, "{text}");
            assert!(text.contains("\"hi\"") && text.ends_with("data: [DONE]\n\n"));
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn only_the_first_chunk_is_first_and_the_last_is_remembered() {
        let t0 = Instant::now();
        let mut clock = StreamClock::new(t0);
        assert_eq!(clock.last(), t0);
        let t1 = t0 + std::time::Duration::from_millis(5);
        let t2 = t1 + std::time::Duration::from_millis(5);
        assert!(clock.chunk(t1));
        assert!(!clock.chunk(t2));
        assert_eq!(clock.first, Some(t1));
        assert_eq!(clock.last(), t2);
    }
}

#[cfg(test)]
mod chunk_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_stream_without_usage_counts_one_token_per_content_chunk() {
        let stream = concat!(
            ": comment\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = UsageTap::for_content_type("text/event-stream", false).unwrap();
        let out = tap
            .push(Some(Bytes::from_static(stream.as_bytes())), true)
            .unwrap();
        assert_eq!(&out[..], stream.as_bytes());
        assert_eq!(tap.usage(), None);
        assert_eq!(tap.output_tokens(), Some(3));
    }
}
