//! The Open Inference Protocol over gRPC through a tonic client, and
//! grpc.health.v1.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weir_engine::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use weir_engine::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use weir_engine::grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
    ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};

use crate::common::{TempRepo, golden, start_engine};

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(f32s).collect(),
        other => vec![other.as_f64().unwrap() as f32],
    }
}

fn mlp_request(
    shape: Vec<i64>,
    raw: Option<Vec<u8>>,
    contents: Option<Vec<f32>>,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "mlp".into(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape,
            contents: contents.map(|c| InferTensorContents {
                fp32_contents: c,
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "OUTPUT0".into(),
            ..Default::default()
        }],
        raw_input_contents: raw.into_iter().collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn inference_service_through_tonic() {
    let g = golden("mlp", "1");
    let repo = TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let mut c = GrpcInferenceServiceClient::connect(engine.grpc_url())
        .await
        .unwrap();

    let live = c.server_live(ServerLiveRequest {}).await.unwrap();
    assert!(live.metadata().contains_key("x-weir-queue-depth"));
    assert!(live.into_inner().live);
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "weir-engine");
    for (name, version, ready) in [
        ("mlp", "", true),
        ("mlp", "1", true),
        ("mlp", "2", false),
        ("nosuch", "", false),
    ] {
        let r = c
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.ready, ready, "{name}:{version}");
    }
    let m = c
        .model_metadata(ModelMetadataRequest {
            name: "tiny-lm".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            m.versions,
            m.inputs[0].datatype.as_str(),
            m.inputs[0].shape[0]
        ),
        (vec!["1".to_string()], "INT64", -1)
    );

    let atol = g["atol"].as_f64().unwrap() as f32;
    for case in g["cases"].as_array().unwrap() {
        let shape: Vec<i64> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let input = f32s(&case["input"]);
        let want = f32s(&case["output"]);
        let raw: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();
        for request in [
            mlp_request(shape.clone(), Some(raw), None),
            mlp_request(shape.clone(), None, Some(input.clone())),
        ] {
            let r = c.model_infer(request).await.unwrap().into_inner();
            assert_eq!(
                (
                    r.model_name.as_str(),
                    r.model_version.as_str(),
                    r.id.as_str()
                ),
                ("mlp", "1", "req-1")
            );
            assert_eq!(r.outputs[0].shape, vec![shape[0], 4]);
            let got: Vec<f32> = r.raw_output_contents[0]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(got.len(), want.len());
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= atol),
                "{}",
                case["name"]
            );
        }
    }

    let err = c
        .model_infer(mlp_request(vec![1, 15], Some(vec![0; 60]), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("shape [1, 15]"), "{}", err.message());
    let err = c
        .model_infer(mlp_request(vec![1, 16], Some(vec![0; 7]), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut unknown = mlp_request(vec![1, 16], Some(vec![0; 64]), None);
    unknown.model_name = "nosuch".into();
    let err = c.model_infer(unknown).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.metadata().contains_key("x-weir-queue-depth"));
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(engine.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

/// With `--otlp-endpoint`, a `ModelInfer` call's span reaches a real OTLP
/// collector as the child of the caller's `traceparent`, with its gRPC
/// status; an HTTP request's span names its route and status.
#[tokio::test]
async fn inference_spans_continue_the_callers_trace() {
    use std::time::Duration;
    use weir_test_support::{OtlpSink, eventually};

    let sink = OtlpSink::start().await.unwrap();
    let endpoint = format!("http://{}", sink.addr);
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &["--otlp-endpoint", &endpoint]).await;
    let mut c = GrpcInferenceServiceClient::connect(engine.grpc_url())
        .await
        .unwrap();
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let call = |req: ModelInferRequest| {
        let mut req = tonic::Request::new(req);
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
        );
        req
    };
    c.model_infer(call(mlp_request(vec![1, 16], None, Some(vec![0.5; 16]))))
        .await
        .unwrap();
    let bad = c
        .model_infer(call(mlp_request(vec![1, 3], None, Some(vec![0.5; 3]))))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // HTTP, and a caller whose trace is not sampled: no span for it.
    let http = weir_test_support::client();
    let ready = http
        .get(engine.url("/v2/models/mlp"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let unsampled = "8bf92f3577b34da6a3ce929d0e0e4736";
    http.get(engine.url("/v2/models/mlp"))
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"))
        .send()
        .await
        .unwrap();

    let spans = eventually(Duration::from_secs(20), || async {
        let spans: Vec<_> = sink
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        (spans.len() >= 3).then_some(spans)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", sink.spans(), engine.log()));
    let infer: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "inference.GRPCInferenceService/ModelInfer")
        .collect();
    assert_eq!(infer.len(), 2, "{spans:#?}");
    for s in &spans {
        assert_eq!(s.parent_span_id, "00f067aa0ba902b7", "{s:#?}");
        assert_eq!(s.service, "weir-engine");
        assert_eq!(s.kind, 2);
    }
    let codes: Vec<&str> = infer
        .iter()
        .map(|s| s.attributes["rpc.grpc.status_code"].as_str())
        .collect();
    assert!(codes.contains(&"0") && codes.contains(&"3"), "{codes:?}");
    let meta = spans
        .iter()
        .find(|s| s.name == "GET /v2/models/{model}")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(meta.attributes["http.response.status_code"], "200");
    assert!(
        !sink.spans().iter().any(|s| s.trace_id == unsampled),
        "an unsampled caller's trace was recorded"
    );
}
