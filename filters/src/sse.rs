//! Incremental Server-Sent Events parsing and writing.
//!
//! [`SseParser`] takes arbitrary byte chunks (split anywhere: inside a
//! field, a line end or a UTF-8 character) and yields one [`SseEvent`] per
//! blank-line-terminated block. Line ends may be CR, LF or CRLF; one space
//! after `field:` is dropped; `data` lines accumulate; `:` lines are
//! comments; a leading byte-order mark is skipped. Each event keeps its
//! exact bytes (`raw`), so a block can be forwarded unchanged: the `raw` of
//! all events plus [`SseParser::finish`]'s remainder is the input.
//!
//! A stream is parsed once: [`SseParser::read`] turns each upstream chunk
//! into an [`SseChunk`], which the stages of a chain (the gateway's usage
//! reader, then each [`crate::StreamFilter`]) pass on as events; bytes are
//! made once, at the end ([`SseChunk::into_bytes`]). An event a stage writes
//! itself is built with [`SseEvent::written`], so it carries the fields a
//! parser would read from its bytes.

/// Default bound on one event's bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

mod line_ends;

pub use line_ends::LineEnds;

/// One block of an event stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The block's bytes exactly as received, terminating blank line
    /// included. When a CRLF is split between two chunks, the LF begins
    /// the next block's `raw`.
    pub raw: Vec<u8>,
    /// The `event` field.
    pub event: Option<String>,
    /// The `data` lines joined with `\n`; `None` when there was none.
    pub data: Option<String>,
    /// The `id` field.
    pub id: Option<String>,
    /// The `retry` field, when it is all digits.
    pub retry: Option<u64>,
    /// Whether a field was not valid UTF-8 (replaced with U+FFFD).
    pub lossy: bool,
}

impl SseEvent {
    /// Whether the block has no field at all (blank lines, comments).
    pub fn is_empty(&self) -> bool {
        self.event.is_none() && self.data.is_none() && self.id.is_none() && self.retry.is_none()
    }

    /// The event [`write_event`] writes, with the fields a parser reads
    /// back from its bytes.
    pub fn written(event: Option<&str>, id: Option<&str>, data: &str) -> Self {
        let mut raw = Vec::with_capacity(data.len() + 16);
        write_event(&mut raw, event, id, data);
        let data = if data.contains(['\r', '\n']) {
            data_lines(data).collect::<Vec<_>>().join("\n")
        } else {
            data.to_owned()
        };
        Self {
            raw,
            event: event.map(|e| first_line(e).to_owned()),
            // A parser ignores an `id` holding NUL.
            id: id
                .map(first_line)
                .filter(|id| !id.contains('\0'))
                .map(str::to_owned),
            data: Some(data),
            retry: None,
            lossy: false,
        }
    }
}

/// One piece of a parsed stream: what [`SseParser::read`] made of an
/// upstream chunk, and what each stage of a chain hands the next. Its bytes
/// ([`SseChunk::into_bytes`]) are the `raw` of `events`, then `unparsed`,
/// then the `raw` of `last`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseChunk {
    /// Complete events, in order.
    pub events: Vec<SseEvent>,
    /// The parser gave up after `events` (for good: it fails every later
    /// chunk too).
    pub failed: Option<SseError>,
    /// The bytes after the failure, unparsed.
    pub unparsed: Vec<u8>,
    /// At the end of the stream, its unterminated last block (see
    /// [`SseParser::finish`]).
    pub last: Option<SseEvent>,
    /// Whether the stream ends with this piece.
    pub end: bool,
}

impl SseChunk {
    /// An empty piece, the last of the stream when `end`.
    pub fn empty(end: bool) -> Self {
        Self {
            end,
            ..Self::default()
        }
    }

    /// Whether the piece has no bytes.
    pub fn is_empty(&self) -> bool {
        self.events.iter().all(|e| e.raw.is_empty())
            && self.unparsed.is_empty()
            && self.last.as_ref().is_none_or(|e| e.raw.is_empty())
    }

    /// The piece's bytes, written once.
    pub fn into_bytes(self) -> bytes::Bytes {
        let len = self.events.iter().map(|e| e.raw.len()).sum::<usize>()
            + self.unparsed.len()
            + self.last.as_ref().map_or(0, |e| e.raw.len());
        let mut out = Vec::with_capacity(len);
        for event in &self.events {
            out.extend_from_slice(&event.raw);
        }
        out.extend_from_slice(&self.unparsed);
        if let Some(last) = &self.last {
            out.extend_from_slice(&last.raw);
        }
        bytes::Bytes::from(out)
    }
}

/// Why the parser gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A block grew past the parser's bound; the parser keeps the bytes
    /// (see [`SseParser::take_pending`]) but parses no more.
    #[error("SSE event larger than {0} bytes")]
    EventTooLarge(usize),
}

/// The incremental parser; see the module docs.
#[derive(Debug)]
pub struct SseParser {
    max_event: usize,
    line: Vec<u8>,
    current: SseEvent,
    after_cr: bool,
    first_line: bool,
    broken: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser refusing blocks larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event: max_event_bytes,
            line: Vec::new(),
            current: SseEvent::default(),
            after_cr: false,
            first_line: true,
            broken: false,
        }
    }

    /// Parses `chunk` into a piece of the stream; at `end`, with the
    /// unterminated last block. After an error the pending bytes are
    /// handed back unparsed, in this piece and every later one.
    pub fn read(&mut self, chunk: &[u8], end: bool) -> SseChunk {
        let mut out = SseChunk::empty(end);
        match self.push(chunk, &mut out.events) {
            Ok(()) if end => out.last = self.finish(),
            Ok(()) => {}
            Err(error) => {
                out.failed = Some(error);
                out.unparsed = self.take_pending();
            }
        }
        out
    }

    /// Parses `chunk`, appending every completed block to `out`. After an
    /// error the rest of the chunk is kept unparsed, and so is everything
    /// pushed afterwards.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        #[cfg(test)]
        parse_count::add(chunk.len());
        let mut rest = chunk;
        let mut dispatched = false;
        while !rest.is_empty() {
            if self.broken {
                self.current.raw.extend_from_slice(rest);
                return Err(SseError::EventTooLarge(self.max_event));
            }
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    // The LF of a CRLF: it belongs with the block the CR
                    // ended when that block is still in hand.
                    match out
                        .last_mut()
                        .filter(|_| self.current.raw.is_empty() && dispatched)
                    {
                        Some(previous) => previous.raw.push(b'\n'),
                        None => self.current.raw.push(b'\n'),
                    }
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(rest);
                    self.current.raw.extend_from_slice(rest);
                    rest = &[];
                }
                Some(end) => {
                    self.line.extend_from_slice(&rest[..end]);
                    self.current.raw.extend_from_slice(&rest[..=end]);
                    self.after_cr = rest[end] == b'\r';
                    rest = &rest[end + 1..];
                    if let Some(event) = self.end_line() {
                        out.push(event);
                        dispatched = true;
                    }
                }
            }
            if self.current.raw.len() > self.max_event {
                self.broken = true;
            }
        }
        if self.broken {
            return Err(SseError::EventTooLarge(self.max_event));
        }
        Ok(())
    }

    /// Ends the stream: the unterminated last block, if any bytes are
    /// pending, parsed as if it had been terminated (its `raw` is what was
    /// received). After an error, the pending bytes unparsed.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.broken {
            let raw = self.take_pending();
            return (!raw.is_empty()).then(|| SseEvent {
                raw,
                ..SseEvent::default()
            });
        }
        if !self.line.is_empty() {
            // The raw bytes are already recorded; only parse the line (it
            // has no line end, so it cannot be the blank line).
            self.parse_line();
        }
        self.after_cr = false;
        if self.current.raw.is_empty() {
            return None;
        }
        self.line.clear();
        Some(self.dispatch())
    }

    /// Takes the bytes received but not yet returned in an event.
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.line.clear();
        std::mem::take(&mut self.current).raw
    }

    /// Bytes received but not yet returned in an event.
    pub fn pending_len(&self) -> usize {
        self.current.raw.len()
    }

    fn end_line(&mut self) -> Option<SseEvent> {
        self.parse_line().then(|| self.dispatch())
    }

    /// Applies the pending line's field; returns whether it was blank.
    fn parse_line(&mut self) -> bool {
        let mut line = self.line.as_slice();
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            self.line.clear();
            return true;
        }
        if line[0] != b':' {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &[][..]),
            };
            apply_field(&mut self.current, name, value);
        }
        self.line.clear();
        false
    }

    fn dispatch(&mut self) -> SseEvent {
        let mut event = std::mem::take(&mut self.current);
        if let Some(data) = event.data.as_mut() {
            data.pop();
        }
        event
    }
}

fn apply_field(event: &mut SseEvent, name: &[u8], value: &[u8]) {
    let text = |event: &mut SseEvent| {
        let text = String::from_utf8_lossy(value);
        if matches!(text, std::borrow::Cow::Owned(_)) {
            event.lossy = true;
        }
        text.into_owned()
    };
    match name {
        b"data" => {
            let value = text(event);
            let data = event.data.get_or_insert_with(String::new);
            data.push_str(&value);
            data.push('\n');
        }
        b"event" => event.event = Some(text(event)),
        b"id" if !value.contains(&0) => event.id = Some(text(event)),
        b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
            event.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
        _ => {}
    }
}

/// Writes one event: `event:` and `id:` lines when given, one `data:` line
/// per line of `data`, then the blank line. Line breaks in `event`/`id`
/// end the value.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, id: Option<&str>, data: &str) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(first_line(event).as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(first_line(id).as_bytes());
        out.push(b'\n');
    }
    for part in data_lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// A field value up to its first line break.
fn first_line(value: &str) -> &str {
    value.split(['\r', '\n']).next().unwrap_or_default()
}

/// The `data:` lines that carry `data` (any line break splits it).
fn data_lines(data: &str) -> impl Iterator<Item = &str> {
    data.split('\n')
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

/// Parses a complete stream at once (tests and fuzzing use it as the
/// reference for chunked parsing).
pub fn parse_all(input: &[u8], max_event_bytes: usize) -> (Vec<SseEvent>, Result<(), SseError>) {
    let mut parser = SseParser::new(max_event_bytes);
    let mut events = Vec::new();
    let result = parser.push(input, &mut events);
    events.extend(parser.finish());
    (events, result)
}

/// Bytes parsed on this thread, for tests that count parses.
#[cfg(test)]
pub(crate) mod parse_count {
    use std::cell::Cell;

    thread_local! {
        static PARSED: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn add(n: usize) {
        PARSED.with(|p| p.set(p.get() + n));
    }

    /// Bytes parsed on this thread so far.
    pub(crate) fn get() -> usize {
        PARSED.with(Cell::get)
    }
}

#[cfg(test)]
mod tests;
