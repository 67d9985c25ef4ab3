//! Filtering a streamed OpenAI answer (SSE) with a bounded hold-back.
//!
//! [`StreamFilter`] takes the upstream's parsed events
//! ([`StreamFilter::push_events`]: a piece of the stream as
//! [`SseParser::read`] made it, or as the previous filter of a chain passed
//! it on) and returns the events to forward: so a chain parses a stream
//! once and writes its bytes once. [`StreamFilter::push`] and
//! [`StreamFilter::finish`] do the same on bytes, with a parser of their
//! own. The filter scans each choice's
//! text (`choices[i].delta.content`, or `choices[i].text` for completions)
//! as one continuous text, so words split across chunks and events are
//! found. Only the tail that could still be the beginning of a word is held
//! back (at most [`Filter::max_holdback`] bytes per choice); everything
//! before it is forwarded at once. Held text is released when later text
//! shows it cannot match, when the choice's `finish_reason` arrives, at
//! `data: [DONE]`, or at the end of the stream, in an extra chunk cloned
//! from the last chunk's envelope. Events that carry no choice text
//! (`[DONE]`, comments, other event types, role-only deltas) are forwarded
//! byte for byte, as are chunks whose text needed no change.
//!
//! A block, or a filter failure under `fail_closed`, ends the stream with an
//! `event: error` whose data is an OpenAI-style error object (naming the
//! category, never the word) and no `[DONE]`. A failure under `fail_open`
//! releases the held text unfiltered and forwards the rest of the stream
//! unchanged. An event the parser refused (too large) is such a failure;
//! under `fail_open` the failure and the unparsed rest go on to the next
//! filter, which decides for itself.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::abi::Match;
use crate::json::{splice, text_field};
use crate::spec::{Action, Policy};
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, LineEnds, SseChunk, SseEvent, SseParser};
use crate::verdict::mask;
use crate::{Filter, FilterError, Session};

mod written;

use written::forward;

/// What a stream filter saw, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// The category of every match released (masked) or blocked.
    pub hits: Vec<Arc<str>>,
    /// The first failure (either policy).
    pub error: Option<FilterError>,
    /// The category that ended the stream, under `block`.
    pub blocked: Option<Arc<str>>,
    /// Whether a failure ended the stream (`fail_closed`).
    pub unavailable: bool,
    /// The most text held back at once, in bytes, over all choices.
    pub max_held_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Filtering,
    /// Failed open: forward everything unchanged.
    PassThrough,
    /// Blocked or failed closed: forward nothing more.
    Ended,
}

/// Which field a choice's text travels in; each is its own text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    /// `choices[i].delta.content` (chat completions).
    Content,
    /// `choices[i].delta.reasoning_content` (reasoning models' thoughts,
    /// shown by many clients).
    Reasoning,
    /// `choices[i].text` (completions).
    Text,
}

/// The stream ended (blocked or failed closed); the error event is written.
struct Stop;

/// One stream's filter; see the module docs.
pub struct StreamFilter {
    filter: Filter,
    session: Session,
    parser: SseParser,
    /// Held text per choice index and field.
    held: BTreeMap<(u64, Field), String>,
    /// Data and event name of the last chunk, the envelope of flush chunks.
    last_chunk: Option<(String, Option<String>)>,
    mode: Mode,
    report: StreamReport,
    line_ends: LineEnds,
}

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceView<'a>>>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: Option<IndexView>,
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IndexView {
    Number(u64),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
}

impl StreamFilter {
    /// A filter for one stream, with the default bound on event size.
    pub fn new(filter: &Filter) -> Self {
        Self::with_max_event_bytes(filter, DEFAULT_MAX_EVENT_BYTES)
    }

    /// A filter for one stream refusing events above `max_event_bytes`
    /// (treated as a failure, under the filter's policy).
    pub fn with_max_event_bytes(filter: &Filter, max_event_bytes: usize) -> Self {
        Self {
            filter: filter.clone(),
            session: filter.session(),
            parser: SseParser::new(max_event_bytes),
            held: BTreeMap::new(),
            last_chunk: None,
            mode: Mode::Filtering,
            report: StreamReport::default(),
            line_ends: LineEnds::default(),
        }
    }

    /// Takes the next upstream chunk; returns the bytes to forward now
    /// (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        match self.mode {
            Mode::Ended => return Bytes::new(),
            Mode::PassThrough => return Bytes::copy_from_slice(chunk),
            Mode::Filtering => {}
        }
        let piece = self.parser.read(chunk, false);
        let mut out = self.push_events(piece);
        if self.mode == Mode::PassThrough {
            out.unparsed.extend_from_slice(&self.parser.take_pending());
        }
        out.into_bytes()
    }

    /// Ends the stream (the upstream finished): returns the last bytes to
    /// forward, with any held text released.
    pub fn finish(&mut self) -> Bytes {
        match self.mode {
            Mode::Ended => Bytes::new(),
            Mode::PassThrough => Bytes::from(self.parser.take_pending()),
            Mode::Filtering => {
                let piece = self.parser.read(&[], true);
                self.push_events(piece).into_bytes()
            }
        }
    }

    /// Takes the next piece of the parsed stream; returns the piece to
    /// forward (to the client, or to the next filter of a chain). Its
    /// events are the input's, moved, where they pass unchanged. A parser
    /// failure (`input.failed`) is a failure of this filter: under
    /// `fail_closed` the stream ends here, under `fail_open` the failure and
    /// the unparsed bytes are forwarded. At `input.end`, the held text is
    /// released.
    pub fn push_events(&mut self, input: SseChunk) -> SseChunk {
        let mut out = SseChunk::empty(input.end);
        if self.mode == Mode::Ended {
            return out;
        }
        out.events.reserve(input.events.len());
        for event in input.events {
            self.process(event, false, &mut out.events);
        }
        if let Some(error) = input.failed {
            match self.mode {
                Mode::Filtering => match self.fail(FilterError::Sse(error.to_string())) {
                    Ok(()) => out.failed = Some(error),
                    Err(Stop) => self.write_stop(&mut out.events),
                },
                Mode::PassThrough => out.failed = Some(error),
                Mode::Ended => {}
            }
        }
        if self.mode == Mode::PassThrough {
            out.unparsed = input.unparsed;
        }
        if input.end {
            match self.mode {
                Mode::Filtering => {
                    if let Some(last) = input.last {
                        self.process(last, true, &mut out.events);
                    }
                    if self.mode != Mode::Ended {
                        let _ = self.flush_all(&mut out.events);
                    }
                }
                Mode::PassThrough => out.last = input.last,
                Mode::Ended => {}
            }
        }
        self.line_ends.align(&mut out);
        out
    }

    /// The name of the filter this stream runs.
    pub fn filter_name(&self) -> &str {
        self.filter.name()
    }

    /// Bytes of text held back right now (all choices).
    pub fn held_bytes(&self) -> usize {
        self.held.values().map(String::len).sum()
    }

    /// Whether the stream was ended by a block or a `fail_closed` failure.
    pub fn is_ended(&self) -> bool {
        self.mode == Mode::Ended
    }

    /// What the filter saw so far.
    pub fn report(&self) -> &StreamReport {
        &self.report
    }

    fn process(&mut self, event: SseEvent, last: bool, out: &mut Vec<SseEvent>) {
        match self.mode {
            Mode::Ended => return,
            Mode::PassThrough => return forward(event, last, out),
            Mode::Filtering => {}
        }
        let is_message = event.event.as_deref().is_none_or(|name| name == "message");
        let Some(data) = event.data.as_deref().filter(|_| is_message) else {
            forward(event, last, out);
            return;
        };
        if data.trim() == "[DONE]" {
            if self.flush_all(out).is_ok() {
                forward(event, last, out);
            }
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChunkView<'_>>(data) else {
            if data.trim_start().starts_with(['{', '[']) {
                // Unreadable JSON (duplicate keys, wrong shapes) could show
                // clients text that was never scanned.
                if self
                    .fail(FilterError::Sse("unreadable chunk JSON".to_owned()))
                    .is_err()
                {
                    self.write_stop(out);
                } else {
                    forward(event, last, out);
                }
            } else {
                forward(event, last, out);
            }
            return;
        };
        let mut before = Vec::new();
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        for (position, choice) in chunk.choices.iter().flatten().enumerate() {
            let index = match choice.index {
                Some(IndexView::Number(index)) => index,
                _ => position as u64,
            };
            let finished = choice.finish_reason.is_some();
            let delta = choice.delta.as_ref();
            let fields = [
                (Field::Content, delta.and_then(|d| d.content)),
                (Field::Reasoning, delta.and_then(|d| d.reasoning_content)),
                (Field::Text, choice.text),
            ];
            for (field, raw) in fields {
                let step = match raw.and_then(|raw| text_field(data, raw)) {
                    Some(text) => self
                        .advance((index, field), &text.text, finished)
                        .map(|emit| {
                            if emit != text.text {
                                edits.push((text.range, emit));
                            }
                        }),
                    None if finished => self.release((index, field), &mut before),
                    None => Ok(()),
                };
                if step.is_err() {
                    out.append(&mut before);
                    self.write_stop(out);
                    return;
                }
            }
        }
        self.last_chunk = Some((data.to_owned(), event.event.clone()));
        out.append(&mut before);
        if edits.is_empty() && !event.lossy {
            forward(event, last, out);
        } else {
            let data = splice(data, &mut edits);
            let mut written = SseEvent::written(event.event.as_deref(), event.id.as_deref(), &data);
            if event.raw.first() == Some(&b'\n') {
                // The LF of the previous block's CRLF.
                written.raw.insert(0, b'\n');
            }
            out.push(written);
        }
        if self.mode == Mode::PassThrough {
            let _ = self.flush_all(out);
        }
    }

    /// Adds `text` to the held text of `key` (choice index, field) and
    /// scans the whole; returns what to forward now (masked) and keeps the
    /// rest held.
    fn advance(&mut self, key: (u64, Field), text: &str, finished: bool) -> Result<String, Stop> {
        let mut combined = self.held.remove(&key).unwrap_or_default();
        combined.push_str(text);
        if self.mode == Mode::PassThrough {
            return Ok(combined);
        }
        let result = match self.session.scan(&combined) {
            Ok(result) => result,
            Err(error) => {
                self.fail(error)?;
                return Ok(combined);
            }
        };
        if let (Action::Block, Some(first)) = (self.filter.action(), result.matches.first()) {
            let category = self.category(first);
            self.report.hits.push(category.clone());
            self.report.blocked = Some(category);
            self.mode = Mode::Ended;
            return Err(Stop);
        }
        let cut = if finished {
            combined.len()
        } else {
            self.cut(&combined, result.holdback_start, &result.matches)
        };
        let released: Vec<Match> = result
            .matches
            .iter()
            .filter(|m| m.end <= cut)
            .copied()
            .collect();
        for m in &released {
            let category = self.category(m);
            self.report.hits.push(category);
        }
        let emit = match self.filter.action() {
            Action::Mask(c) if !released.is_empty() => mask(&combined[..cut], &released, c),
            _ => combined[..cut].to_owned(),
        };
        if cut < combined.len() {
            combined.drain(..cut);
            self.held.insert(key, combined);
        }
        self.report.max_held_bytes = self.report.max_held_bytes.max(self.held_bytes());
        Ok(emit)
    }

    /// Where to split `text` into released and held parts: at the guest's
    /// hold-back start, moved before a match it would split, and bounded by
    /// [`Filter::max_holdback`] (a guest cannot make a stream hold more).
    fn cut(&self, text: &str, holdback_start: usize, matches: &[Match]) -> usize {
        let straddling = |at: usize| matches.iter().find(|m| m.start < at && at < m.end).copied();
        let mut cut = holdback_start;
        if let Some(m) = straddling(cut) {
            cut = m.start;
        }
        let mut floor = text.len().saturating_sub(self.filter.max_holdback());
        while !text.is_char_boundary(floor) {
            floor += 1;
        }
        if cut < floor {
            cut = straddling(floor).map_or(floor, |m| m.end);
        }
        cut
    }

    /// Releases the held text of `key` in a chunk of its own.
    fn release(&mut self, key: (u64, Field), out: &mut Vec<SseEvent>) -> Result<(), Stop> {
        if !self.held.contains_key(&key) {
            return Ok(());
        }
        let text = self.advance(key, "", true)?;
        if !text.is_empty() {
            self.write_flush_chunk(key, &text, out);
        }
        Ok(())
    }

    fn flush_all(&mut self, out: &mut Vec<SseEvent>) -> Result<(), Stop> {
        let keys: Vec<(u64, Field)> = self.held.keys().copied().collect();
        for key in keys {
            if let Err(stop) = self.release(key, out) {
                self.write_stop(out);
                return Err(stop);
            }
        }
        Ok(())
    }

    /// Applies the policy to a failure. `Err` when the stream ends (the
    /// receiver of the `Stop` writes the error event).
    fn fail(&mut self, error: FilterError) -> Result<(), Stop> {
        if self.report.error.is_none() {
            self.report.error = Some(error);
        }
        match self.filter.policy() {
            Policy::FailOpen => {
                self.mode = Mode::PassThrough;
                Ok(())
            }
            Policy::FailClosed => {
                self.report.unavailable = true;
                self.mode = Mode::Ended;
                Err(Stop)
            }
        }
    }

    fn category(&self, m: &Match) -> Arc<str> {
        self.filter
            .category(m.category)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

#[cfg(test)]
mod tests;
