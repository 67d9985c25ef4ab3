#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut events).unwrap();
    }
    events.extend(parser.finish());
    events
}

fn data(events: &[SseEvent]) -> Vec<Option<&str>> {
    events.iter().map(|e| e.data.as_deref()).collect()
}

#[test]
fn line_ends_and_fields() {
    let input =
        b"data: a\r\ndata:b\rdata:  c\n\nevent: ping\r\n: comment\r\nid: 7\nretry: 10\n\r\n";
    let events = parse_chunks(&[input]);
    assert_eq!(data(&events), [Some("a\nb\n c"), None]);
    assert_eq!(events[1].event.as_deref(), Some("ping"));
    assert_eq!(events[1].id.as_deref(), Some("7"));
    assert_eq!(events[1].retry, Some(10));
    assert!(events[1].raw.ends_with(b"retry: 10\n\r\n"));
    let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
    assert_eq!(raw, input);
}

#[test]
fn field_without_colon_and_bom() {
    let events = parse_chunks(&[b"\xEF\xBB\xBFdata\n\ndata: x\n\n"]);
    assert_eq!(data(&events), [Some(""), Some("x")]);
}

#[test]
fn utf8_split_across_chunks() {
    let input = "data: 你好\n\n".as_bytes();
    for split in 0..input.len() {
        let events = parse_chunks(&[&input[..split], &input[split..]]);
        assert_eq!(data(&events), [Some("你好")], "split at {split}");
        assert!(!events[0].lossy);
    }
}

#[test]
fn crlf_split_between_chunks() {
    let events = parse_chunks(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
    // a CRLF split between chunks: the LF starts the next block
    assert_eq!(events[0].raw, b"data: a\r\n\r");
    assert_eq!(events[1].raw, b"\ndata: b\r\n\r\n");
    assert_eq!(data(&events), [Some("a"), Some("b")]);
}

#[test]
fn unterminated_last_event() {
    let events = parse_chunks(&[b"data: a\n\ndata: b"]);
    assert_eq!(data(&events), [Some("a"), Some("b")]);
    assert_eq!(events[1].raw, b"data: b");
}

#[test]
fn oversized_event_is_refused_and_kept() {
    let mut parser = SseParser::new(16);
    let mut events = Vec::new();
    parser.push(b"data: ok\n\n", &mut events).unwrap();
    let err = parser.push(b"data: 0123456789abcdef\n\ndata: more\n\n", &mut events);
    assert_eq!(err, Err(SseError::EventTooLarge(16)));
    assert_eq!(events.len(), 1);
    assert_eq!(
        parser.take_pending(),
        b"data: 0123456789abcdef\n\ndata: more\n\n"
    );
}

#[test]
fn writer_round_trip() {
    let mut out = Vec::new();
    write_event(&mut out, Some("message"), Some("1"), "a\n b\r\nc\rd");
    assert_eq!(
        out,
        b"event: message\nid: 1\ndata: a\ndata:  b\ndata: c\ndata: d\n\n"
    );
    let events = parse_chunks(&[&out]);
    assert_eq!(events[0].data.as_deref(), Some("a\n b\nc\nd"));
}

/// Bits of SSE that random tests put together.
const PIECES: &[&[u8]] = &[
    b"data:",
    b"data: ",
    b"event: x",
    b"id: 1",
    b"retry: 5",
    b": c",
    b"\n",
    b"\r",
    b"\r\n",
    b"a",
    b" ",
    b":",
    "你".as_bytes(),
    b"\xE4\xBD",
    b"\xFF",
    b"[DONE]",
    b"{\"k\":1}",
    b"\xEF\xBB\xBF",
];

/// The fuzz target's property over random inputs with a fixed seed:
/// chunked parsing yields the same fields as whole parsing (where a split
/// CRLF's LF lands may differ), and the raw bytes add up to the input.
#[test]
fn random_chunking_matches_whole_parse() {
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    for _ in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..rng.usize(0..40) {
            input.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
        }
        check_chunking(&input, &mut rng);
    }
}

pub(crate) fn check_chunking(input: &[u8], rng: &mut fastrand::Rng) {
    let max = 64;
    let (whole, whole_result) = parse_all(input, max);
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    let mut result = Ok(());
    let mut at = 0;
    while at < input.len() && result.is_ok() {
        let end = (at + rng.usize(1..8)).min(input.len());
        result = parser.push(&input[at..end], &mut events);
        at = end;
    }
    if result.is_err() {
        parser.push(&input[at..], &mut events).ok();
    }
    events.extend(parser.finish());
    assert_eq!(result.is_ok(), whole_result.is_ok(), "{input:?}");
    if whole_result.is_ok() {
        let fields = |events: &[SseEvent]| {
            events
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| SseEvent {
                    raw: Vec::new(),
                    ..e.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&events), fields(&whole), "{input:?}");
    }
    let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
    assert_eq!(raw, input, "raw bytes lost");
}

/// A stage that drops and adds events as the stages of a chain do, then
/// aligns them: the next stage
/// gets exactly the events a parser reads from the stage's bytes, piece by
/// piece, CRLFs split between pieces included.
#[test]
fn aligned_events_are_what_a_parser_reads_from_their_bytes() {
    // Text without line ends (nor a BOM); each stream has one kind of
    // line end, as upstreams write them.
    let pieces: Vec<&[u8]> = PIECES
        .iter()
        .copied()
        .filter(|p| !p.starts_with(b"\xEF") && !p.contains(&b'\n') && !p.contains(&b'\r'))
        .collect();
    let mut rng = fastrand::Rng::with_seed(0xA11E);
    for _ in 0..3000 {
        let eol: &[u8] = [&b"\n"[..], b"\r\n", b"\r"][rng.usize(..3)];
        let mut input = Vec::new();
        for _ in 0..rng.usize(0..40) {
            match rng.u8(..3) {
                0 => input.extend_from_slice(eol),
                _ => input.extend_from_slice(pieces[rng.usize(..pieces.len())]),
            }
        }
        let mut parser = SseParser::default();
        let mut again = SseParser::default();
        let mut line_ends = LineEnds::default();
        let mut at = 0;
        loop {
            let end = (at + rng.usize(1..8)).min(input.len());
            let mut piece = parser.read(&input[at..end], end == input.len());
            // Stages drop data events (the usage chunk) and add their own.
            piece
                .events
                .retain(|e| e.data.is_none() || rng.u8(..4) != 0);
            if rng.u8(..4) == 0 {
                let at = rng.usize(..=piece.events.len());
                piece.events.insert(at, SseEvent::written(None, None, "x"));
            }
            line_ends.align(&mut piece);
            let reread = again.read(&piece.clone().into_bytes(), piece.end);
            assert_eq!(reread.events, piece.events, "{input:?}");
            assert_eq!(reread.last, piece.last, "{input:?}");
            if piece.end {
                break;
            }
            at = end;
        }
    }
}

#[test]
fn written_events_carry_the_fields_a_parser_reads() {
    for (event, id, data) in [
        (None, None, "{\"a\":1}"),
        (Some("error"), Some("7"), "a\n b\r\nc\rd"),
        (Some("two\nlines"), Some("with\0nul"), ""),
    ] {
        let written = SseEvent::written(event, id, data);
        let parsed = parse_all(&written.raw, DEFAULT_MAX_EVENT_BYTES).0;
        assert_eq!(parsed, [written]);
    }
}
