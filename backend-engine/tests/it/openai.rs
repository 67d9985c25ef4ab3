//! OpenAI-compatible API over the shipped tiny-lm versions: greedy text
//! equals the goldens (also when requests are batched together), seeds,
//! streaming, stop sequences, the chat template, errors.

use serde_json::{Value, json};

use crate::common::{Engine, TempRepo, client, golden, sse_data, start_engine};

async fn lm_engine() -> (TempRepo, Engine) {
    let repo = TempRepo::with(&[("tiny-lm", "1"), ("tiny-lm", "2"), ("mlp", "1")]);
    let engine = start_engine(
        &repo,
        &[
            "--model",
            "tiny-lm:1",
            "--model",
            "tiny-lm:2",
            "--model",
            "mlp",
        ],
    )
    .await;
    (repo, engine)
}

async fn post(engine: &Engine, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(engine.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn greedy_completions_match_goldens_even_when_batched() {
    let (_repo, engine) = lm_engine().await;
    for version in ["1", "2"] {
        let g = golden("tiny-lm", version);
        let steps = g["steps"].as_u64().unwrap();
        // All prompts at once: they share decoding steps.
        let requests = g["greedy"].as_array().unwrap().iter().map(|case| {
            let body = json!({
                "model": format!("tiny-lm:{version}"),
                "prompt": case["prompt"],
                "max_tokens": steps,
                "temperature": 0,
            });
            let engine = &engine;
            async move { (case, post(engine, "/v1/completions", body).await) }
        });
        for (case, (status, out)) in futures::future::join_all(requests).await {
            assert_eq!(status, 200, "{out}");
            assert_eq!(out["model"], format!("tiny-lm:{version}"));
            assert_eq!(out["object"], "text_completion");
            assert_eq!(
                out["choices"][0]["text"], case["generated_text"],
                "v{version} prompt {}",
                case["prompt"]
            );
            assert_eq!(out["choices"][0]["finish_reason"], "length");
            let prompt_len = case["prompt_ids"].as_array().unwrap().len() as u64;
            assert_eq!(out["usage"]["prompt_tokens"], prompt_len);
            assert_eq!(out["usage"]["completion_tokens"], steps);
            assert_eq!(out["usage"]["total_tokens"], prompt_len + steps);
        }
    }
}

#[tokio::test]
async fn same_seed_same_text() {
    let (_repo, engine) = lm_engine().await;
    let body = |seed: u64| {
        json!({"model": "tiny-lm", "prompt": "The Fox and the ", "max_tokens": 40,
               "temperature": 0.9, "top_p": 0.95, "seed": seed})
    };
    let text = |v: Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    let (_, a) = post(&engine, "/v1/completions", body(42)).await;
    let (_, b) = post(&engine, "/v1/completions", body(42)).await;
    assert_eq!(text(a), text(b));
    let mut seen = std::collections::BTreeSet::new();
    for seed in 1..=5 {
        seen.insert(text(post(&engine, "/v1/completions", body(seed)).await.1));
    }
    assert!(seen.len() > 1, "different seeds all gave the same text");
}

#[tokio::test]
async fn streaming_matches_non_streaming_and_ends_with_done() {
    let (_repo, engine) = lm_engine().await;
    let g = golden("tiny-lm", "2");
    let case = &g["greedy"][0];
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let mut body = json!({"model": "tiny-lm:2", "max_tokens": 48, "temperature": 0,
            "stream": true, "stream_options": {"include_usage": true}});
        if path.contains("chat") {
            body["messages"] = json!([{"role": "user", "content": case["prompt"]}]);
        } else {
            body["prompt"] = case["prompt"].clone();
        }
        let r = client()
            .post(engine.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let data = sse_data(&r.text().await.unwrap());
        assert_eq!(data.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let mut text = String::new();
        let mut finish = None;
        for c in &chunks {
            if let Some(choice) = c["choices"].get(0) {
                let piece = if path.contains("chat") {
                    &choice["delta"]["content"]
                } else {
                    &choice["text"]
                };
                text.push_str(piece.as_str().unwrap_or(""));
                if !choice["finish_reason"].is_null() {
                    finish = Some(choice["finish_reason"].clone());
                }
            }
        }
        if path.contains("chat") {
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        }
        assert_eq!(text, case["generated_text"].as_str().unwrap(), "{path}");
        assert_eq!(finish, Some(json!("length")));
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
        assert_eq!(usage["completion_tokens"], 48);
    }
}

#[tokio::test]
async fn stop_sequences_cut_the_text() {
    let (_repo, engine) = lm_engine().await;
    let g = golden("tiny-lm", "1");
    let case = &g["greedy"][4];
    let full = case["generated_text"].as_str().unwrap();
    // A stop made of two characters from the middle of the golden text.
    let chars: Vec<char> = full.chars().collect();
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 2].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"model": "tiny-lm:1", "prompt": case["prompt"], "max_tokens": 48,
            "temperature": 0, "stop": [stop], "stream": stream});
        let r = client()
            .post(engine.url("/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let (text, finish) = if stream {
            let data = sse_data(&r.text().await.unwrap());
            let mut text = String::new();
            let mut finish = Value::Null;
            for d in &data[..data.len() - 1] {
                let c: Value = serde_json::from_str(d).unwrap();
                text.push_str(c["choices"][0]["text"].as_str().unwrap());
                if !c["choices"][0]["finish_reason"].is_null() {
                    finish = c["choices"][0]["finish_reason"].clone();
                }
            }
            (text, finish)
        } else {
            let v: Value = r.json().await.unwrap();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, expected, "stream={stream} stop={stop:?}");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test]
async fn chat_template_joins_messages_with_newlines() {
    let (_repo, engine) = lm_engine().await;
    let (s1, chat) = post(&engine, "/v1/chat/completions", json!({
        "model": "tiny-lm:1", "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "system", "content": "Fables."},
                     {"role": "user", "content": [{"type": "text", "text": "The Fox and the "}]}]
    }))
    .await;
    let (s2, plain) = post(&engine, "/v1/completions", json!({
        "model": "tiny-lm:1", "max_tokens": 24, "temperature": 0, "prompt": "Fables.\nThe Fox and the "
    }))
    .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        plain["choices"][0]["text"]
    );
    assert_eq!(chat["usage"], plain["usage"]);
}

#[tokio::test]
async fn errors_use_the_openai_shape() {
    let (_repo, engine) = lm_engine().await;
    let cases = [
        (
            json!({"model": "nosuch", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "tiny-lm:9", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "mlp", "prompt": "x"}),
            400,
            "model_not_supported",
        ),
        (
            json!({"model": "tiny-lm", "prompt": "x", "temperature": 3}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "tiny-lm", "prompt": "x", "top_p": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "tiny-lm", "prompt": "x", "n": 2}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "tiny-lm", "prompt": "x", "max_tokens": 100000}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "tiny-lm", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "invalid_request",
        ),
        (json!({"prompt": "x"}), 400, "invalid_request"),
        (json!({"model": "tiny-lm"}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let (s, v) = post(&engine, "/v1/completions", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v["error"]["type"].is_string());
    }
    let r = client()
        .post(engine.url("/v1/chat/completions"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
}

#[tokio::test]
async fn models_are_listed() {
    let (_repo, engine) = lm_engine().await;
    let v: Value = client()
        .get(engine.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["tiny-lm", "tiny-lm:1", "tiny-lm:2", "mlp", "mlp:1"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
}
