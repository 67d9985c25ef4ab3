//! The causal-lm decode loop seen from outside: the KV-cache budget (a full
//! budget is a 429 on every protocol, a cancelled stream gives its share
//! back at once) and chunked prefill (a long prompt does not stall the
//! streams already running). Every wait is on a condition the engine
//! reports (a response, or a value in `/metrics`), with a deadline that
//! only turns a hang into a failure.

use std::time::{Duration, Instant};

use serde_json::json;
use weir_engine::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use weir_engine::grpc::proto::model_infer_request::InferInputTensor;
use weir_engine::grpc::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, infer_parameter::ParameterChoice,
};

use super::{SMOL, post, start};
use crate::common::{Engine, client};

/// How long a condition may take before the test fails (failure detection
/// only: on a healthy machine each takes well under a second).
const DEADLINE: Duration = Duration::from_secs(120);

/// KV bytes per token of SmolLM2-135M: 30 layers × 2 × 3 heads × 64 × 4 B.
const KV_PER_TOKEN: u64 = 46_080;

/// The value of `name{model=SMOL,version="1"}` in the engine's `/metrics`.
async fn metric(engine: &Engine, name: &str) -> f64 {
    let text = client()
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = [format!("model=\"{SMOL}\""), "version=\"1\"".to_string()];
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("{name} for {SMOL}/1 is not in /metrics:\n{text}"))
}

/// Polls `name` until `done` holds for its value, which it returns.
async fn wait_for(engine: &Engine, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let value = metric(engine, name).await;
        if done(value) {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} stayed at {value} for {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A greedy stream that ignores stop tokens (so it runs its whole length
/// unless cancelled), once the engine has admitted it.
async fn stream(engine: &Engine, prompt: &str, max_tokens: usize) -> reqwest::Response {
    let mut r = client()
        .post(engine.url("/v1/completions"))
        .json(&json!({
            "model": SMOL, "prompt": prompt, "max_tokens": max_tokens,
            "ignore_eos": true, "temperature": 0, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The first chunk: the sequence holds its KV share and decodes.
    assert!(r.chunk().await.unwrap().is_some());
    r
}

#[tokio::test]
async fn a_full_kv_budget_refuses_and_a_cancelled_stream_frees_it_at_once() {
    // 64 MiB holds 1,456 tokens: room for one of the requests below.
    let engine = start(&[&format!("{SMOL}:1")], &["--kv-cache-mb", "64"]).await;
    assert_eq!(
        metric(&engine, "weir_engine_kv_cache_limit_bytes").await,
        (64u64 << 20) as f64
    );
    assert_eq!(metric(&engine, "weir_engine_kv_cache_bytes").await, 0.0);
    // "Once upon a time" is 4 tokens: 1,204 positions reserved. Alone, the
    // stream would run for a minute or more on two cores.
    let first = stream(&engine, "Once upon a time", 1200).await;
    assert_eq!(
        metric(&engine, "weir_engine_kv_cache_bytes").await,
        (1204 * KV_PER_TOKEN) as f64
    );

    // A second one does not fit now: 429 on /v1, on /v2 and over gRPC.
    let (status, out) = post(
        &engine,
        "/v1/completions",
        json!({"model": SMOL, "prompt": "Hello", "max_tokens": 1200}),
    )
    .await;
    assert_eq!(status, 429, "{out}");
    assert_eq!(out["error"]["code"], "kv_cache_full");
    let r = client()
        .post(engine.url(&format!("/v2/models/{SMOL}/infer")))
        .json(&json!({
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["Hello"]}],
            "parameters": {"max_tokens": 1200},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("KV cache"),
        "{body}"
    );
    let mut grpc = GrpcInferenceServiceClient::connect(engine.grpc_url())
        .await
        .unwrap();
    let err = grpc
        .model_infer(ModelInferRequest {
            model_name: SMOL.into(),
            inputs: vec![InferInputTensor {
                name: "text_input".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                contents: Some(InferTensorContents {
                    bytes_contents: vec![b"Hello".to_vec()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            parameters: [(
                "max_tokens".to_string(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(1200)),
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Nothing refused took a share.
    assert_eq!(
        metric(&engine, "weir_engine_kv_cache_bytes").await,
        (1204 * KV_PER_TOKEN) as f64
    );

    // Cancel the stream: its share comes back long before it would have
    // finished on its own (it stops short of its 1,200 tokens).
    drop(first);
    wait_for(&engine, "weir_engine_kv_cache_bytes", |v| v == 0.0).await;
    let generated = metric(&engine, "weir_engine_output_tokens_total").await;
    assert!(generated < 1200.0, "{generated} tokens: it ran to its end");
    assert_eq!(metric(&engine, "weir_engine_queue_depth").await, 0.0);

    // Now the same request fits.
    let second = stream(&engine, "Hello", 1200).await;
    drop(second);
    wait_for(&engine, "weir_engine_kv_cache_bytes", |v| v == 0.0).await;
}

#[tokio::test]
async fn a_long_prompt_is_prefilled_between_the_running_streams_steps() {
    const CHUNK: u64 = 128;
    let engine = start(&[&format!("{SMOL}:1")], &["--prefill-chunk", "128"]).await;
    // A stream that keeps decoding while the long prompt arrives; a reader
    // drains it so that it never pauses on a full channel.
    let mut running = stream(&engine, "Once upon a time", 2000).await;
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = running.chunk().await {} });
    let chunks_before = metric(&engine, "weir_engine_prefill_chunks_total").await;
    let steps_before = metric(&engine, "weir_engine_decode_steps_during_prefill_total").await;
    assert_eq!(steps_before, 0.0);

    let long = "The quick brown fox jumps over the lazy dog. ".repeat(120);
    let body = json!({
        "model": SMOL, "prompt": long, "max_tokens": 8, "temperature": 0,
        "ignore_eos": true, "return_token_ids": true,
    });
    let (status, out) = post(&engine, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{out}");
    let prompt_tokens = out["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 8 * CHUNK, "{prompt_tokens}"); // ~1,200 tokens
    let chunks = prompt_tokens.div_ceil(CHUNK);
    // The prompt ran in its chunks, and the running stream took one decode
    // step after each of them but the last (whose logits give the long
    // request's first token): with one run for the whole prompt it would
    // have taken none.
    let chunks_run = metric(&engine, "weir_engine_prefill_chunks_total").await - chunks_before;
    assert_eq!(chunks_run, chunks as f64);
    let steps = metric(&engine, "weir_engine_decode_steps_during_prefill_total").await;
    assert_eq!(steps, (chunks - 1) as f64);
    reader.abort();
    drop(engine);

    // Chunked or in one run, the prompt leaves the same cache: the same
    // greedy tokens.
    let whole = start(&[&format!("{SMOL}:1")], &["--prefill-chunk", "4096"]).await;
    let (status, alone) = post(&whole, "/v1/completions", body).await;
    assert_eq!(status, 200, "{alone}");
    assert_eq!(
        alone["choices"][0]["token_ids"],
        out["choices"][0]["token_ids"]
    );
    assert_eq!(
        metric(&whole, "weir_engine_prefill_chunks_total").await,
        1.0
    );
}
