//! The Open Inference Protocol on the real text models: `text_input` →
//! `text_output` (causal-lm) and `text` → `embedding` (embedding) over HTTP
//! and gRPC, their metadata and configuration, and clear refusals.

use serde_json::{Value, json};
use weir_engine::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use weir_engine::grpc::proto::model_infer_request::InferInputTensor;
use weir_engine::grpc::proto::{
    InferParameter, InferTensorContents, ModelConfigRequest, ModelInferRequest,
    infer_parameter::ParameterChoice,
};

use super::{MINILM, SMOL, floats, post, start};
use crate::common::client;

fn text_request(name: &str, texts: &[&str], parameters: Value) -> Value {
    json!({
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [texts.len()], "data": texts}],
        "parameters": parameters,
    })
}

#[tokio::test]
async fn text_tensors_answer_like_the_openai_endpoints() {
    let engine = start(&[&format!("{SMOL}:1"), MINILM], &[]).await;
    // Metadata and configuration describe the text tensors.
    let meta: Value = client()
        .get(engine.url(&format!("/v2/models/{SMOL}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["inputs"],
        json!([{"name": "text_input", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "text_output", "datatype": "BYTES", "shape": [-1]}])
    );
    let config: Value = client()
        .get(engine.url(&format!("/v2/models/{MINILM}/versions/1/config")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(config["output"][0]["dims"], json!([-1, 384]));
    assert_eq!(config["parameters"]["kind"]["string_value"], "embedding");

    // Greedy text equals /v1/completions' for each prompt of a batch.
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let (status, out) = post(
        &engine,
        &format!("/v2/models/{SMOL}/versions/1/infer"),
        text_request(
            "text_input",
            &prompts,
            json!({"max_tokens": 12, "temperature": 0, "ignore_eos": true}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model_version"], "1");
    let output = &out["outputs"][0];
    assert_eq!(
        (&output["name"], &output["datatype"], &output["shape"]),
        (&json!("text_output"), &json!("BYTES"), &json!([2]))
    );
    for (i, prompt) in prompts.iter().enumerate() {
        let (status, openai) = post(
            &engine,
            "/v1/completions",
            json!({"model": SMOL, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                   "ignore_eos": true}),
        )
        .await;
        assert_eq!(status, 200, "{openai}");
        assert_eq!(
            output["data"][i], openai["choices"][0]["text"],
            "{prompt:?}"
        );
    }

    // Embeddings equal /v1/embeddings'.
    let sentences = ["A man is playing a guitar.", "A person plays the guitar."];
    let (status, out) = post(
        &engine,
        &format!("/v2/models/{MINILM}/infer"),
        text_request("text", &sentences, json!({})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["shape"], json!([2, 384]));
    let got = floats(&out["outputs"][0]["data"]);
    let (status, openai) = post(
        &engine,
        "/v1/embeddings",
        json!({"model": MINILM, "input": sentences}),
    )
    .await;
    assert_eq!(status, 200, "{openai}");
    let want: Vec<f64> = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| floats(&d["embedding"]))
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }

    // Bad requests: 400 naming what is wrong.
    let smol = format!("/v2/models/{SMOL}/infer");
    let minilm = format!("/v2/models/{MINILM}/infer");
    for (path, body, needle) in [
        (
            &smol,
            json!({"inputs": [{"name": "text_input", "datatype": "INT64", "shape": [1], "data": [1]}]}),
            "datatype INT64",
        ),
        (
            &smol,
            json!({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": ["Hi"]}]}),
            "shape [1, 1]",
        ),
        (&smol, json!({"inputs": []}), "missing input 'text_input'"),
        (
            &smol,
            text_request("prompt", &["Hi"], json!({})),
            "unknown input 'prompt'",
        ),
        (
            &smol,
            text_request("text_input", &[""], json!({})),
            "element 0 is empty",
        ),
        (
            &smol,
            text_request("text_input", &["Hi"], json!({"beam_width": 2})),
            "parameter 'beam_width'",
        ),
        (
            &smol,
            text_request("text_input", &["Hi"], json!({"temperature": "hot"})),
            "parameter 'temperature'",
        ),
        (
            &smol,
            text_request("text_input", &["Hi"], json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            &smol,
            text_request("text_input", &["Hi"; 17], json!({})),
            "max_batch_size 16",
        ),
        (
            &minilm,
            text_request("text", &["x"], json!({"max_tokens": 3})),
            "takes no parameters",
        ),
        (
            &minilm,
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
                   "outputs": [{"name": "last_hidden_state"}]}),
            "unknown output 'last_hidden_state'",
        ),
    ] {
        let (status, out) = post(&engine, path, body).await;
        assert_eq!(status, 400, "{out}");
        let message = out["error"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }

    // gRPC: the same answer, and INVALID_ARGUMENT for a bad request.
    let mut grpc = GrpcInferenceServiceClient::connect(engine.grpc_url())
        .await
        .unwrap();
    let request = |datatype: &str| ModelInferRequest {
        model_name: SMOL.into(),
        inputs: vec![InferInputTensor {
            name: "text_input".into(),
            datatype: datatype.into(),
            shape: vec![1],
            contents: Some(InferTensorContents {
                bytes_contents: vec![prompts[0].as_bytes().to_vec()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        parameters: [
            ("max_tokens", ParameterChoice::Int64Param(12)),
            ("temperature", ParameterChoice::DoubleParam(0.0)),
            ("ignore_eos", ParameterChoice::BoolParam(true)),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                InferParameter {
                    parameter_choice: Some(v),
                },
            )
        })
        .collect(),
        ..Default::default()
    };
    let answer = grpc
        .model_infer(request("BYTES"))
        .await
        .unwrap()
        .into_inner();
    let raw = &answer.raw_output_contents[0];
    let (len, text) = raw.split_at(4);
    assert_eq!(
        u32::from_le_bytes(len.try_into().unwrap()) as usize,
        text.len()
    );
    assert_eq!(
        std::str::from_utf8(text).unwrap(),
        output["data"][0].as_str().unwrap()
    );
    let err = grpc.model_infer(request("FP32")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let config = grpc
        .model_config(ModelConfigRequest {
            name: SMOL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.input[0].name, "text_input");
    assert_eq!(config.output[0].dims, vec![-1]);
}
