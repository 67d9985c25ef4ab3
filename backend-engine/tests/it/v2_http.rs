//! Open Inference Protocol over HTTP: metadata, readiness, inference
//! (JSON and binary tensors) against the shipped models' goldens, and
//! validation errors.

use serde_json::{Value, json};

use crate::common::{TempRepo, client, golden, start_engine};

fn close(a: &[f64], b: &[f64], atol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= atol)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

#[tokio::test]
async fn metadata_readiness_and_headers() {
    let repo = TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let c = client();
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/mlp/ready",
        "/v2/models/mlp/versions/1/ready",
    ] {
        let r = c.get(engine.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-weir-queue-depth"], "0", "{path}");
    }
    let server: Value = c
        .get(engine.url("/v2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(server["name"], "weir-engine");

    for path in ["/v2/models/mlp", "/v2/models/mlp/versions/1"] {
        let meta: Value = c
            .get(engine.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["name"], "mlp");
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(
            meta["inputs"][0],
            json!({"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]})
        );
        assert_eq!(
            meta["outputs"][0],
            json!({"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]})
        );
    }
    let lm: Value = c
        .get(engine.url("/v2/models/tiny-lm"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lm["inputs"][0]["datatype"], "INT64");
    let missing = c
        .get(engine.url("/v2/models/mlp/versions/9/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn mlp_matches_golden_over_json() {
    let g = golden("mlp", "1");
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let c = client();
    let atol = g["atol"].as_f64().unwrap();
    for case in g["cases"].as_array().unwrap() {
        let body = json!({
            "id": case["name"],
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": case["shape"], "data": case["input"]}],
        });
        let r = c
            .post(engine.url("/v2/models/mlp/infer"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-weir-model-version"], "1");
        let out: Value = r.json().await.unwrap();
        assert_eq!(out["id"], case["name"]);
        assert_eq!(out["model_version"], "1");
        let o = &out["outputs"][0];
        assert_eq!(o["name"], "OUTPUT0");
        assert_eq!(o["shape"][0], case["shape"][0]);
        assert!(
            close(&floats(&o["data"]), &flat(&case["output"]), atol),
            "case {}: {} vs {}",
            case["name"],
            o["data"],
            case["output"]
        );
    }
}

#[tokio::test]
async fn binary_tensor_extension_round_trips() {
    let g = golden("mlp", "1");
    let case = &g["cases"][2];
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let input: Vec<f32> = flat(&case["input"]).iter().map(|x| *x as f32).collect();
    let raw: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": case["shape"],
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&raw);
    let r = client()
        .post(engine.url("/v2/models/mlp/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    let size = head["outputs"][0]["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(bytes.len() - json_len, size);
    let got: Vec<f64> = bytes[json_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    assert!(close(
        &got,
        &flat(&case["output"]),
        g["atol"].as_f64().unwrap()
    ));
}

#[tokio::test]
async fn tiny_lm_logits_match_golden() {
    for version in ["1", "2"] {
        let g = golden("tiny-lm", version);
        let repo = TempRepo::with(&[("tiny-lm", version)]);
        let engine = start_engine(&repo, &[]).await;
        let c = client();
        let fl = &g["first_step_logits"];
        let ids = fl["input_ids"].as_array().unwrap();
        let body = json!({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, ids.len()], "data": ids}]});
        let out: Value = c
            .post(engine.url(&format!("/v2/models/tiny-lm/versions/{version}/infer")))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(out["outputs"][0]["shape"], json!([1, 256]));
        assert!(close(
            &floats(&out["outputs"][0]["data"]),
            &floats(&fl["logits"]),
            g["logits_atol"].as_f64().unwrap()
        ));

        let batch = &g["first_step_batch"];
        let rows = batch["input_ids"].as_array().unwrap();
        let body = json!({"inputs": [{"name": "input_ids", "datatype": "INT64",
            "shape": [rows.len(), rows[0].as_array().unwrap().len()], "data": rows}]});
        let out: Value = c
            .post(engine.url("/v2/models/tiny-lm/infer"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let logits = floats(&out["outputs"][0]["data"]);
        let argmax: Vec<usize> = logits
            .chunks(256)
            .map(|row| {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                best
            })
            .collect();
        let want: Vec<usize> = batch["argmax"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            argmax, want,
            "tiny-lm v{version}: batched first-step argmax"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_never_crash() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let c = client();
    let infer = engine.url("/v2/models/mlp/infer");
    let good_input =
        json!({"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": vec![0.0; 16]});
    let cases: Vec<(String, String, u16, &str)> = vec![
        (infer.clone(), "{not json".into(), 400, "malformed JSON"),
        (infer.clone(), "".into(), 400, "empty"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 15], "data": vec![0.0; 15]}]}).to_string(), 400, "shape [1, 15]"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": vec![0.0; 3]}]}).to_string(), 400, "needs 16 elements"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "INT64", "shape": [1, 16], "data": vec![0; 16]}]}).to_string(), 400, "datatype INT64 does not match"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [1, 16], "data": vec![0; 16]}]}).to_string(), 400, "unsupported datatype"),
        (infer.clone(), json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 16], "data": vec![0.0; 16]}]}).to_string(), 400, "unknown input 'nope'"),
        (infer.clone(), json!({"inputs": [good_input.clone()], "outputs": [{"name": "OUT9"}]}).to_string(), 400, "unknown output 'OUT9'"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, -16], "data": []}]}).to_string(), 400, "negative"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ["x"]}]}).to_string(), 400, "not a number"),
        (infer.clone(), json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [64, 16], "data": vec![0.0; 1024]}]}).to_string(), 400, "max_batch_size"),
        (engine.url("/v2/models/nosuch/infer"), json!({"inputs": [good_input.clone()]}).to_string(), 404, "model 'nosuch' is not loaded"),
        (engine.url("/v2/models/mlp/versions/7/infer"), json!({"inputs": [good_input.clone()]}).to_string(), 404, "no loaded version '7'"),
    ];
    for (url, body, status, want) in cases {
        let r = c.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert!(r.headers().contains_key("x-weir-queue-depth"));
        let err: Value = r.json().await.unwrap();
        let msg = err["error"]
            .as_str()
            .unwrap_or_else(|| panic!("v2 error shape: {err}"));
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let r = c.get(engine.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");
    // Still serving.
    let r = c
        .post(&infer)
        .json(&json!({"inputs": [good_input]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let repo = TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    for (path, shape) in [
        ("/v2/models/mlp/infer", "v2"),
        ("/v1/chat/completions", "openai"),
    ] {
        let mut conn = tokio::net::TcpStream::connect(engine.http).await.unwrap();
        // Ten gigabytes declared, none sent: the answer must not wait for them.
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: e\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            conn.read_to_end(&mut answer),
        )
        .await;
        assert!(read.is_ok(), "{path}: no answer while the body was awaited");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "{path}: {text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let err: Value = serde_json::from_str(body).unwrap();
        match shape {
            "v2" => assert!(err["error"].as_str().unwrap().contains("10000000000")),
            _ => assert_eq!(err["error"]["code"], "body_too_large", "{err}"),
        }
    }
}
