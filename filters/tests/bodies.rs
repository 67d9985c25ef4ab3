//! Block and mask on OpenAI request and response bodies, English and Chinese.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::filter;
use serde_json::{Value, json};
use weir_filters::openai::{BodyError, filter_request, filter_response};
use weir_filters::{Action, Verdict};

const WORDS: &[(&str, &str)] = &[
    ("badword", "abuse"),
    ("坏词", "abuse"),
    ("敏感内容", "politics"),
    ("ｆｒａｕｄ", "fraud"),
];

fn masked(verdict: Verdict<Vec<u8>>) -> Value {
    match verdict {
        Verdict::Masked(body) => serde_json::from_slice(&body).expect("masked body is valid JSON"),
        other => panic!("expected a masked body, got {other:?}"),
    }
}

#[test]
fn chat_request_masked_in_english_and_chinese() {
    let f = filter(WORDS, Action::Mask('*'));
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are nice. BADWORD is banned."},
            {"role": "user", "content": "请不要说坏词，也不要谈敏感内容。FRAUD!"},
            {"role": "user", "content": [
                {"type": "text", "text": "part one badword"},
                {"type": "image_url", "image_url": {"url": "http://x/badword.png"}},
                {"type": "text", "text": "第二部分：坏词"}
            ]}
        ],
        "temperature": 0.5
    });
    let outcome = filter_request(&f, body.to_string().as_bytes()).unwrap();
    assert_eq!(outcome.hits.len(), 6);
    let out = masked(outcome.verdict);
    assert_eq!(
        out["messages"][0]["content"],
        "You are nice. ******* is banned."
    );
    assert_eq!(
        out["messages"][1]["content"],
        "请不要说**，也不要谈****。*****!"
    );
    assert_eq!(out["messages"][2]["content"][0]["text"], "part one *******");
    assert_eq!(out["messages"][2]["content"][2]["text"], "第二部分：**");
    // nothing but the text fields changed
    assert_eq!(
        out["messages"][2]["content"][1],
        body["messages"][2]["content"][1]
    );
    assert_eq!(out["temperature"], 0.5);
    assert_eq!(out["model"], "m");
}

#[test]
fn masking_keeps_the_rest_of_the_body_byte_for_byte() {
    let f = filter(WORDS, Action::Mask('*'));
    let body = br#"{"z": 1.50, "prompt" :"say \"badword\" \u0041", "a":[1,2]}"#;
    let out = filter_request(&f, body).unwrap();
    let Verdict::Masked(new) = out.verdict else {
        panic!("not masked")
    };
    assert_eq!(
        String::from_utf8(new).unwrap(),
        r#"{"z": 1.50, "prompt" :"say \"*******\" A", "a":[1,2]}"#
    );
}

#[test]
fn completions_prompt_string_and_array() {
    let f = filter(WORDS, Action::Mask('×'));
    let out = masked(
        filter_request(
            &f,
            r#"{"model":"m","prompt":"坏词 and badword"}"#.as_bytes(),
        )
        .unwrap()
        .verdict,
    );
    assert_eq!(out["prompt"], "×× and ×××××××");
    let out = masked(
        filter_request(&f, r#"{"prompt":["ok","敏感内容"],"n":2}"#.as_bytes())
            .unwrap()
            .verdict,
    );
    assert_eq!(out["prompt"], json!(["ok", "××××"]));
}

#[test]
fn request_blocked_names_the_category() {
    let f = filter(WORDS, Action::Block);
    let body = json!({"messages": [{"role": "user", "content": "谈谈敏感内容"}]});
    let outcome = filter_request(&f, body.to_string().as_bytes()).unwrap();
    assert_eq!(
        outcome.verdict,
        Verdict::Blocked {
            category: "politics".into()
        }
    );
    let body = json!({"messages": [{"role": "user", "content": "BadWord"}]});
    let outcome = filter_request(&f, body.to_string().as_bytes()).unwrap();
    assert_eq!(
        outcome.verdict,
        Verdict::Blocked {
            category: "abuse".into()
        }
    );
}

#[test]
fn clean_bodies_pass() {
    let f = filter(WORDS, Action::Block);
    let body = json!({"messages": [{"role": "user", "content": "你好, hello"}], "prompt": null});
    let outcome = filter_request(&f, body.to_string().as_bytes()).unwrap();
    assert_eq!(outcome.verdict, Verdict::Pass);
    assert!(outcome.hits.is_empty() && outcome.error.is_none());
    // a body without text fields
    let outcome = filter_request(&f, b"{}").unwrap();
    assert_eq!(outcome.verdict, Verdict::Pass);
}

#[test]
fn responses_masked_and_blocked() {
    let f = filter(WORDS, Action::Mask('*'));
    let body = json!({
        "id": "x", "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "这是坏词"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": null}, "finish_reason": "tool_calls"}
        ],
        "usage": {"total_tokens": 3}
    });
    let out = masked(
        filter_response(&f, body.to_string().as_bytes())
            .unwrap()
            .verdict,
    );
    assert_eq!(out["choices"][0]["message"]["content"], "这是**");
    assert_eq!(out["usage"], body["usage"]);
    let completion = json!({"choices": [{"index": 0, "text": "a BADWORD"}]});
    let out = masked(
        filter_response(&f, completion.to_string().as_bytes())
            .unwrap()
            .verdict,
    );
    assert_eq!(out["choices"][0]["text"], "a *******");
    let f = filter(WORDS, Action::Block);
    let outcome = filter_response(&f, completion.to_string().as_bytes()).unwrap();
    assert!(matches!(outcome.verdict, Verdict::Blocked { .. }));
}

#[test]
fn unreadable_bodies_are_errors() {
    let f = filter(WORDS, Action::Mask('*'));
    for body in [
        &b"not json"[..],
        b"\xFF{}",
        b"[1]",
        br#"{"messages": "x"}"#,
        br#"{"prompt": "ok", "prompt": "badword"}"#,
    ] {
        assert!(
            matches!(filter_request(&f, body), Err(BodyError::NotOpenAi(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}
