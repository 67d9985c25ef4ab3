#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::sse::parse_count;
use crate::{FilterSpec, Policy};

fn filter(words: &[(&str, &str)], action: Action, policy: Policy) -> Filter {
    let words = words
        .iter()
        .map(|(w, c)| ((*w).to_owned(), (*c).to_owned()))
        .collect();
    Filter::sensitive_words(
        FilterSpec::new("words", words)
            .with_action(action)
            .with_policy(policy),
    )
    .expect("load the sensitive-word filter")
}

const WORDS: &[(&str, &str)] = &[
    ("badword", "abuse"),
    ("坏词", "abuse"),
    ("敏感内容", "politics"),
];

fn chat(content: &str) -> String {
    let data = serde_json::json!({
        "id": "c", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {data}\n\n")
}

const FINISH: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

fn stream_of(contents: &[&str]) -> String {
    let mut s: String = contents.iter().map(|c| chat(c)).collect();
    s.push_str(FINISH);
    s.push_str("data: [DONE]\n\n");
    s
}

/// The inputs of `tests/stream.rs` and a few more: CRLF, comments, other
/// event types, completions with two choices, reasoning, no `[DONE]`, an
/// unterminated last event, unreadable JSON.
fn inputs() -> Vec<String> {
    let completion = |index: u64, text: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": index, "text": text, "finish_reason": null}]})
        )
    };
    let reasoning = |text: &str| {
        format!(
            "data: {}\r\n\r\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"reasoning_content": text}}]})
        )
    };
    vec![
        stream_of(&["this is a bad", "word indeed"]),
        stream_of(&["说敏", "感", "内容了 b", "adwo", "rd"]),
        stream_of(&["x ", "b", "a", "d", "w", "o", "r", "d", " y 坏", "词"]),
        stream_of(&["前面的坏", "词和 BAD", "WORD, 敏感", "内容"]),
        stream_of(&["hello ", "世界，", "nothing to see"]),
        concat!(
            ": keep-alive\r\n\r\nevent: ping\ndata: badword\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"usage\":{\"total_tokens\":5},\"choices\":[]}\n\n",
            "data: not json badword\n\nretry: 100\n\ndata: [DONE]\n\n",
        )
        .to_owned(),
        [
            completion(0, "one bad"),
            completion(1, "two 坏"),
            completion(0, "word!"),
            completion(1, "词!"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat(),
        [
            reasoning("想想坏"),
            chat("答案是坏"),
            reasoning("词"),
            chat("词"),
        ]
        .concat(),
        format!("{}data: [DONE]\n\n", chat("a bad")),
        chat("x 坏"),
        format!(
            "{}data: {{\"choices\":[{{\"delta\":{{\"content\":\"坏\"}}}}]}}",
            chat("y 坏")
        ),
        format!(
            "{}data: {{\"choices\": [1, 2}}\n\n{}",
            chat("ok 坏"),
            chat("词")
        ),
        format!(
            "{}id: 9\r\ndata: {{\"choices\":[{{\"text\":\"bad\\u0077ord\"}}]}}\r\r",
            chat("z")
        ),
        stream_of(&["a bad", "word 坏", "词 b", "坏", "a", "d"]).replace('\n', "\r\n"),
        stream_of(&["坏", "bad", "词word 坏"]).replace("\n\n", "\r\r"),
        // Held text of two fields released at the finish, CRLF.
        [
            reasoning("想坏"),
            chat("x ba").replace('\n', "\r\n"),
            FINISH.replace('\n', "\r\n"),
        ]
        .concat(),
    ]
}

/// The output of the byte path, one piece per push.
fn by_bytes(f: &Filter, max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, StreamReport) {
    let mut stream = StreamFilter::with_max_event_bytes(f, max);
    let mut out: Vec<Vec<u8>> = chunks.iter().map(|c| stream.push(c).to_vec()).collect();
    out.push(stream.finish().to_vec());
    (out, stream.report().clone())
}

/// The output of a chain on the event path, fed by one parser: one piece
/// per push, the last at the end of the stream.
fn by_events(chain: &[&Filter], max: usize, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut parser = SseParser::new(max);
    let mut filters: Vec<StreamFilter> = chain.iter().map(|f| StreamFilter::new(f)).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().chain([&&b""[..]]).enumerate() {
        let mut piece = parser.read(chunk, i == chunks.len());
        for f in &mut filters {
            piece = f.push_events(piece);
        }
        out.push(piece.into_bytes().to_vec());
    }
    out
}

fn filters() -> Vec<Filter> {
    let mut all = Vec::new();
    for policy in [Policy::FailClosed, Policy::FailOpen] {
        all.push(filter(WORDS, Action::Mask('*'), policy));
        all.push(filter(WORDS, Action::Block, policy));
    }
    all
}

#[test]
fn the_event_path_writes_what_the_byte_path_writes() {
    for f in &filters() {
        for input in inputs() {
            let bytes = input.as_bytes();
            for size in [1, 2, 3, 7, 64, bytes.len().max(1)] {
                for max in [DEFAULT_MAX_EVENT_BYTES, 100] {
                    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
                    let (expected, report) = by_bytes(f, max, &chunks);
                    let mut parser = SseParser::new(max);
                    let mut stream = StreamFilter::new(f);
                    let mut got = Vec::new();
                    for (i, chunk) in chunks.iter().chain([&&b""[..]]).enumerate() {
                        let piece = parser.read(chunk, i == chunks.len());
                        got.push(stream.push_events(piece).into_bytes().to_vec());
                    }
                    // The same bytes; pass-through forwards a partial event
                    // when it is complete rather than at once.
                    assert_eq!(got.concat(), expected.concat(), "{input:?} in {size}");
                    assert_eq!(stream.report(), &report, "{input:?} in {size}");
                    if report.error.is_none() {
                        assert_eq!(got, expected, "{input:?} in {size}");
                    }
                }
            }
        }
    }
}

#[test]
fn events_a_filter_writes_carry_the_fields_of_their_bytes() {
    let f = filter(WORDS, Action::Mask('*'), Policy::FailClosed);
    let mut stream = StreamFilter::new(&f);
    let input = stream_of(&["a bad", "word b", "adw", "ord"]);
    let mut piece = SseParser::default().read(input.as_bytes(), true);
    piece = stream.push_events(piece);
    let reparsed = crate::sse::parse_all(&piece.clone().into_bytes(), DEFAULT_MAX_EVENT_BYTES).0;
    assert_eq!(piece.events, reparsed);
}

#[test]
fn a_chain_parses_the_stream_once() {
    let first = filter(
        &[("badword", "abuse")],
        Action::Mask('*'),
        Policy::FailClosed,
    );
    let second = filter(&[("坏词", "abuse")], Action::Mask('#'), Policy::FailClosed);
    for input in inputs() {
        let bytes = input.as_bytes();
        for size in [1, 2, 3, 5, bytes.len().max(1)] {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            // Filter after filter on bytes: each parses the stream anew.
            let (once, _) = by_bytes(&first, DEFAULT_MAX_EVENT_BYTES, &chunks);
            let once: Vec<&[u8]> = once.iter().map(Vec::as_slice).collect();
            let (expected, _) = by_bytes(&second, DEFAULT_MAX_EVENT_BYTES, &once);
            let before = parse_count::get();
            let got = by_events(&[&first, &second], DEFAULT_MAX_EVENT_BYTES, &chunks);
            assert_eq!(parse_count::get() - before, bytes.len(), "parsed once");
            assert_eq!(got.concat(), expected.concat(), "{input:?} in {size}");
        }
    }
}

#[test]
fn an_oversized_event_fails_each_filter_under_its_policy() {
    let open = filter(WORDS, Action::Mask('*'), Policy::FailOpen);
    let closed = filter(WORDS, Action::Mask('*'), Policy::FailClosed);
    let input = format!(
        "{}data: {}\n\n{}",
        chat("坏词 ok"),
        "x".repeat(300),
        chat("坏词")
    );
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(50).collect();
    // Fail open, then fail closed: the first forwards the rest unparsed, the
    // second ends the stream.
    let out = by_events(&[&open, &closed], 200, &chunks).concat();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with(&chat("** ok")), "{text}");
    let events = crate::sse::parse_all(text.as_bytes(), DEFAULT_MAX_EVENT_BYTES).0;
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[1].event.as_deref(), Some("error"));
    assert!(
        events[1]
            .data
            .as_deref()
            .unwrap()
            .contains("filter_unavailable")
    );
    // Fail open twice: the rest of the stream as received.
    let out = by_events(&[&open, &open], 200, &chunks).concat();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with(&format!("{}\n\n{}", "x".repeat(300), chat("坏词"))));
}
