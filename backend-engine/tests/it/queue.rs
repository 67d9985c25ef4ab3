//! Backpressure: with the queue full, HTTP answers 429 with Retry-After
//! and gRPC RESOURCE_EXHAUSTED; the queue depth header tracks it.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use weir_engine::grpc::proto::ModelInferRequest;
use weir_engine::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use weir_engine::grpc::proto::model_infer_request::InferInputTensor;
use weir_test_support::eventually;

use crate::common::{TempRepo, client, lm_context, start_engine};

#[tokio::test]
async fn full_queue_answers_429_and_resource_exhausted() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    // One place in the queue, and a generation far longer than any socket
    // buffer: while its reader holds still it keeps that place.
    let engine = start_engine(
        &repo,
        &["--queue-capacity", "1", "--max-tokens-limit", "100000000"],
    )
    .await;
    let c = client();
    let held = c
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "hold", "max_tokens": 100_000_000, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(held.headers()["x-weir-queue-depth"], "1");
    let mut held_body = held.bytes_stream();
    let first = held_body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data:"));

    let r = c
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-weir-queue-depth"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "queue_full");

    let ctx = lm_context();
    let body = json!({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, ctx], "data": vec![256; ctx]}]});
    let r = c
        .post(engine.url("/v2/models/tiny-lm/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("queue"), "{v}");

    let r = c
        .post(engine.url("/v1/tasks"))
        .json(&json!({"model": "tiny-lm", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    let mut g = GrpcInferenceServiceClient::connect(engine.grpc_url())
        .await
        .unwrap();
    let err = g
        .model_infer(ModelInferRequest {
            model_name: "tiny-lm".into(),
            inputs: vec![InferInputTensor {
                name: "input_ids".into(),
                datatype: "INT64".into(),
                shape: vec![1, ctx as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![256i64.to_le_bytes().repeat(ctx)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    // Hanging up frees the place; the engine notices and serves again.
    drop(held_body);
    let recovered = eventually(Duration::from_secs(10), || async {
        let r = c
            .post(engine.url("/v2/models/tiny-lm/infer"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 200 | 429), "{}", r.status());
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(
        recovered.is_ok(),
        "the place was not released after the client hung up"
    );
}
