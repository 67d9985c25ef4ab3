//! Masking and blocking streamed (SSE) answers across chunk boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{chat_event, filter, finish_event, pieces, run_stream, seen};
use std::sync::OnceLock;

use weir_filters::{Action, Filter, StreamFilter};

const WORDS: &[(&str, &str)] = &[
    ("badword", "abuse"),
    ("坏词", "abuse"),
    ("敏感内容", "politics"),
];

fn stream_of(contents: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for c in contents {
        s.push_str(&chat_event(c));
    }
    s.push_str(&finish_event());
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

fn masker() -> &'static Filter {
    static FILTER: OnceLock<Filter> = OnceLock::new();
    FILTER.get_or_init(|| filter(WORDS, Action::Mask('*')))
}

fn masked_text(chunks: &[&[u8]]) -> String {
    let out: Vec<u8> = run_stream(masker(), chunks).concat();
    let seen = seen(&out);
    assert!(seen.done, "[DONE] forwarded");
    assert!(seen.error.is_none());
    seen.text.get(&0).cloned().unwrap_or_default()
}

#[test]
fn word_split_across_two_events() {
    let input = stream_of(&["this is a bad", "word indeed"]);
    assert_eq!(masked_text(&[&input]), "this is a ******* indeed");
}

#[test]
fn word_split_across_three_events() {
    let input = stream_of(&["说敏", "感", "内容了 b", "adwo", "rd"]);
    assert_eq!(masked_text(&[&input]), "说****了 *******");
}

#[test]
fn word_split_across_many_events() {
    let input = stream_of(&["x ", "b", "a", "d", "w", "o", "r", "d", " y 坏", "词"]);
    assert_eq!(masked_text(&[&input]), "x ******* y **");
}

#[test]
fn byte_by_byte_delivery() {
    let input = stream_of(&["前面的坏", "词和 BAD", "WORD, 敏感", "内容"]);
    let expected = "前面的**和 *******, ****";
    assert_eq!(masked_text(&pieces(&input, 1)), expected);
    for size in [2, 3, 5, 7, 64] {
        assert_eq!(masked_text(&pieces(&input, size)), expected, "size {size}");
    }
}

#[test]
fn utf8_char_split_across_chunks_survives() {
    let input = stream_of(&["你好世界", "中文"]);
    // split inside every multi-byte character of the stream
    for split in 1..input.len() {
        let text = masked_text(&[&input[..split], &input[split..]]);
        assert_eq!(text, "你好世界中文", "split at {split}");
    }
}

#[test]
fn no_match_passes_byte_for_byte_without_delay() {
    let f = filter(WORDS, Action::Mask('*'));
    let events = [
        chat_event("hello "),
        chat_event("世界，"),
        chat_event("nothing to see"),
        finish_event(),
        "data: [DONE]\n\n".to_owned(),
    ];
    let mut stream = StreamFilter::new(&f);
    for event in &events {
        // each event comes out whole, in the same push, unchanged
        assert_eq!(&stream.push(event.as_bytes())[..], event.as_bytes());
    }
    assert!(stream.finish().is_empty());
    assert_eq!(stream.report().max_held_bytes, 0);
}

#[test]
fn only_the_possible_word_start_is_held() {
    let f = filter(WORDS, Action::Mask('*'));
    let mut stream = StreamFilter::new(&f);
    let out = stream.push(chat_event("hello ba").as_bytes());
    assert_eq!(seen(&out).text[&0], "hello ");
    assert_eq!(stream.held_bytes(), 2);
    let out = stream.push(chat_event("nana").as_bytes());
    assert_eq!(seen(&out).text[&0], "banana");
    assert_eq!(stream.held_bytes(), 0);
    let out = stream.push(chat_event(" 敏感").as_bytes());
    assert_eq!(seen(&out).text[&0], " ");
    // finish_reason releases the held text in an extra chunk first
    let out = stream.push(finish_event().as_bytes());
    let s = seen(&out);
    assert_eq!(s.text[&0], "敏感");
    assert_eq!(s.events, 2);
    assert_eq!(stream.held_bytes(), 0);
}

#[test]
fn held_text_released_at_done_and_at_end() {
    let f = filter(WORDS, Action::Mask('*'));
    let input = format!("{}data: [DONE]\n\n", chat_event("a bad"));
    let out = run_stream(&f, &[input.as_bytes()]).concat();
    let s = seen(&out);
    assert_eq!(s.text[&0], "a bad");
    assert!(s.done);
    // [DONE] stays last
    assert!(out.ends_with(b"data: [DONE]\n\n"));
    // no [DONE]: released when the upstream ends
    let out = run_stream(&f, &[chat_event("x 坏").as_bytes()]).concat();
    assert_eq!(seen(&out).text[&0], "x 坏");
}

#[test]
fn done_and_non_delta_events_pass_unchanged() {
    let f = filter(WORDS, Action::Mask('*'));
    let others = [
        ": keep-alive\r\n\r\n",
        "event: ping\ndata: badword\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"usage\":{\"total_tokens\":5},\"choices\":[]}\n\n",
        "data: not json badword\n\n",
        "retry: 100\n\n",
        "data: [DONE]\n\n",
    ];
    let mut stream = StreamFilter::new(&f);
    for event in others {
        assert_eq!(
            &stream.push(event.as_bytes())[..],
            event.as_bytes(),
            "{event}"
        );
    }
}

#[test]
fn completions_text_and_several_choices() {
    let f = filter(WORDS, Action::Mask('*'));
    let event = |index: u64, text: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"object": "text_completion", "choices": [{"index": index, "text": text, "finish_reason": null}]})
        )
    };
    let input = [
        event(0, "one bad"),
        event(1, "two 坏"),
        event(0, "word!"),
        event(1, "词!"),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let out = run_stream(&f, &pieces(input.as_bytes(), 5)).concat();
    let s = seen(&out);
    assert_eq!(s.text[&0], "one *******!");
    assert_eq!(s.text[&1], "two **!");
}

#[test]
fn reasoning_and_content_are_separate_texts() {
    let f = masker();
    let event = |field: &str, text: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {field: text}, "finish_reason": null}]})
        )
    };
    let input = [
        event("reasoning_content", "想想坏"),
        event("content", "答案是坏"),
        event("reasoning_content", "词"),
        event("content", "词"),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let out = run_stream(f, &[input.as_bytes()]).concat();
    let mut reasoning = String::new();
    let mut content = String::new();
    let mut parser = weir_filters::sse::SseParser::default();
    let mut events = Vec::new();
    parser.push(&out, &mut events).unwrap();
    for event in events {
        let Ok(value) =
            serde_json::from_str::<serde_json::Value>(event.data.as_deref().unwrap_or(""))
        else {
            continue;
        };
        let delta = &value["choices"][0]["delta"];
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        content.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!(reasoning, "想想**");
    assert_eq!(content, "答案是**");
}

#[test]
fn block_ends_the_stream_with_an_error_event() {
    let f = filter(WORDS, Action::Block);
    let input = stream_of(&["fine so far, ", "then 敏感", "内容 and more"]);
    let mut stream = StreamFilter::new(&f);
    let mut out = Vec::new();
    for chunk in pieces(&input, 9) {
        out.extend_from_slice(&stream.push(chunk));
    }
    out.extend_from_slice(&stream.finish());
    let s = seen(&out);
    assert_eq!(s.text[&0], "fine so far, then ");
    assert!(!s.done, "no [DONE] after a block");
    let error = s.error.expect("error event");
    assert_eq!(error["error"]["code"], "content_blocked");
    assert_eq!(error["error"]["category"], "politics");
    assert!(
        !String::from_utf8_lossy(&out).contains("敏感内容"),
        "never echo the word"
    );
    assert!(stream.is_ended());
    assert_eq!(stream.report().blocked.as_deref(), Some("politics"));
    assert!(stream.push(b"data: [DONE]\n\n").is_empty());
}

#[test]
fn hold_back_is_bounded() {
    let f = filter(&[("aaaaaaaaaaaaaaaab", "x")], Action::Mask('*'));
    let mut stream = StreamFilter::new(&f);
    let mut forwarded = String::new();
    for _ in 0..100 {
        let out = stream.push(chat_event("aaaaaaa").as_bytes());
        forwarded.push_str(seen(&out).text.get(&0).map_or("", String::as_str));
        assert!(stream.held_bytes() <= f.max_holdback());
    }
    assert_eq!(forwarded.len() + stream.held_bytes(), 700);
    let out = stream.finish();
    forwarded.push_str(&seen(&out).text[&0]);
    assert_eq!(forwarded, "a".repeat(700));
}

/// Random texts with words, random chunkings: the client sees exactly the
/// masked whole text.
#[test]
fn random_streams_match_whole_text_masking() {
    let dictionary = common::mixed_dictionary(200, 7);
    let pairs: Vec<(&str, &str)> = dictionary
        .iter()
        .map(|(w, c)| (w.as_str(), c.as_str()))
        .collect();
    let f = filter(&pairs, Action::Mask('*'));
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..30 {
        let text = common::mixed_text(600, &dictionary, 4, round);
        let expected = match f.check(&text).verdict {
            weir_filters::Verdict::Masked(m) => m,
            _ => text.clone(),
        };
        let mut contents = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + rng.usize(1..20)).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            contents.push(&text[at..end]);
            at = end;
        }
        let input = stream_of(&contents);
        let chunk = rng.usize(1..50);
        let out = run_stream(&f, &pieces(&input, chunk)).concat();
        assert_eq!(seen(&out).text[&0], expected, "round {round}");
    }
}
