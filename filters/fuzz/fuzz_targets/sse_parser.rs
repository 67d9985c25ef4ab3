//! The SSE parser on arbitrary bytes split at arbitrary points: no panic,
//! the same fields as a one-shot parse, every byte kept in some `raw`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_filters::sse::{SseEvent, SseParser, parse_all};

const MAX_EVENT: usize = 256;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (bytes, splits) = input;
    let (whole, whole_result) = parse_all(&bytes, MAX_EVENT);

    let mut parser = SseParser::new(MAX_EVENT);
    let mut events = Vec::new();
    let mut result = Ok(());
    let mut at = 0;
    for &step in &splits {
        let end = (at + usize::from(step % 16) + 1).min(bytes.len());
        if result.is_ok() {
            result = parser.push(&bytes[at..end], &mut events);
        } else {
            let _ = parser.push(&bytes[at..end], &mut events);
        }
        at = end;
    }
    let _ = parser
        .push(&bytes[at..], &mut events)
        .map_err(|e| result = Err(e));
    events.extend(parser.finish());

    let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.iter().copied()).collect();
    assert_eq!(raw, bytes, "bytes lost or invented");
    assert_eq!(result.is_ok(), whole_result.is_ok());
    if whole_result.is_ok() {
        let fields = |events: &[SseEvent]| {
            events
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| (e.event.clone(), e.data.clone(), e.id.clone(), e.retry))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&events), fields(&whole));
    }
});
