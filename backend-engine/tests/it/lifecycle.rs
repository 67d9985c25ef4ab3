//! Startup checks (library, device, refused models), async tasks and
//! metrics.

use std::time::Duration;

use serde_json::{Value, json};
use weir_test_support::eventually;

use crate::common::{Engine, TempRepo, client, run_to_exit, start_engine, try_start_engine};

#[test]
fn missing_onnx_runtime_names_both_ways_to_give_it() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let models = repo.repo();
    let (ok, stderr) = run_to_exit(&["--models", models.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("--ort-lib") && stderr.contains("ORT_DYLIB_PATH"),
        "{stderr}"
    );
    let (ok, stderr) = run_to_exit(
        &[
            "--models",
            models.to_str().unwrap(),
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn cuda_on_a_cpu_library_is_a_clear_error_unless_auto() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let models = repo.repo();
    let lib = Engine::ort_lib();
    let (ok, stderr) = run_to_exit(
        &[
            "--models",
            models.to_str().unwrap(),
            "--device",
            "cuda",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
        ],
        &[("ORT_DYLIB_PATH", lib.to_str().unwrap())],
    );
    assert!(!ok);
    assert!(
        stderr.contains("CUDA is unavailable") && stderr.contains("--device auto"),
        "{stderr}"
    );

    let engine = start_engine(&repo, &["--device", "auto"]).await;
    assert!(engine.log().contains("using the CPU"), "{}", engine.log());
}

#[tokio::test]
async fn a_tampered_model_is_refused_at_startup_naming_the_file() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let toml = repo.version_dir("mlp", "1").join("model.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push('\n');
    std::fs::write(&toml, text).unwrap();
    let err = match try_start_engine(&repo, &[]).await {
        Ok(_) => panic!("a tampered model was served"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("mlp/1 refused") && err.contains("model.toml: sha256"),
        "{err}"
    );
}

#[tokio::test]
async fn async_tasks_run_and_expire() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let c = client();
    let body = json!({"model": "tiny-lm", "prompt": "Shall I compare thee", "max_tokens": 20, "temperature": 0});
    let r = c
        .post(engine.url("/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["status"], "queued");
    let id = created["task_id"].as_str().unwrap().to_string();
    let task: Value = eventually(Duration::from_secs(10), || async {
        let task: Value = c
            .get(engine.url(&format!("/v1/tasks/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (task["status"] == "succeeded" || task["status"] == "failed").then_some(task)
    })
    .await
    .unwrap();
    assert_eq!(task["status"], "succeeded", "{task}");
    let direct: Value = c
        .post(engine.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        task["result"]["choices"][0]["text"],
        direct["choices"][0]["text"]
    );

    let chat = json!({"model": "tiny-lm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let r = c
        .post(engine.url("/v1/tasks"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let r = c
        .get(engine.url("/v1/tasks/task-nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "task_not_found");
    let r = c
        .post(engine.url("/v1/tasks"))
        .json(&json!({"model": "nosuch", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn finished_tasks_expire_after_the_ttl() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = start_engine(&repo, &["--task-ttl-secs", "0"]).await;
    let c = client();
    let r = c
        .post(engine.url("/v1/tasks"))
        .json(&json!({"model": "tiny-lm", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = eventually(Duration::from_secs(10), || async {
        let r = c
            .get(engine.url(&format!("/v1/tasks/{id}")))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return Some(());
        }
        let v: Value = r.json().await.unwrap();
        assert!(v["status"] == "queued" || v["status"] == "running", "{v}");
        None
    })
    .await;
    assert!(gone.is_ok(), "a finished task outlived a zero ttl");
}

#[tokio::test]
async fn metrics_cover_queue_batches_latency_and_tokens() {
    let repo = TempRepo::with(&[("tiny-lm", "1"), ("mlp", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let c = client();
    let r = c
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "The Fox", "max_tokens": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": vec![0.5; 32]}]});
    assert_eq!(
        c.post(engine.url("/v2/models/mlp/infer"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(engine.url("/metrics")).send().await.unwrap();
    assert!(r.headers().contains_key("x-weir-queue-depth"));
    let text = r.text().await.unwrap();
    for want in [
        r#"weir_engine_queue_depth{model="tiny-lm",version="1"} 0"#,
        r#"weir_engine_batch_size_bucket{model="mlp",version="1",le="2"} 1"#,
        r#"weir_engine_inference_duration_seconds_count{model="mlp",version="1"} 1"#,
        r#"weir_engine_time_to_first_token_seconds_count{model="tiny-lm",version="1"} 1"#,
        r#"weir_engine_output_tokens_total{model="tiny-lm",version="1"} 10"#,
        r#"weir_engine_output_tokens_per_second_count{model="tiny-lm",version="1"} 1"#,
        r#"weir_engine_model_loads_total{model="mlp",result="ok"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
}

/// SIGTERM while sixteen long streams are in flight: every one of them
/// finishes (to `[DONE]`), then the engine exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_in_flight_finish() {
    let repo = TempRepo::with(&[("tiny-lm", "1"), ("mlp", "1")]);
    let mut engine = start_engine(&repo, &["--model", "tiny-lm:1", "--model", "mlp"]).await;
    // Long streams (the model slides over its context), so that all of them
    // are still generating when the signal comes.
    let max_tokens = 3000;
    let mut streams = Vec::new();
    for i in 0..16 {
        let resp = client()
            .post(engine.url("/v1/completions"))
            .json(&json!({
                "model": "tiny-lm", "prompt": format!("The Fox {i}"), "max_tokens": max_tokens,
                "temperature": 0.8, "seed": i, "stream": true,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    // Every stream has begun: read its first chunk before the signal.
    let mut firsts = Vec::new();
    for s in &mut streams {
        firsts.push(s.chunk().await.unwrap().unwrap());
    }
    engine.signal("TERM").unwrap();
    for (s, first) in streams.into_iter().zip(firsts) {
        let rest = s.text().await.unwrap();
        let body = String::from_utf8_lossy(&first).into_owned() + &rest;
        assert!(
            body.trim_end().ends_with("data: [DONE]"),
            "a stream was cut at SIGTERM: {body}"
        );
        // Each generated its whole answer (to max_tokens), most of it after
        // the signal.
        assert!(body.contains("\"finish_reason\":\"length\""), "{body}");
    }
    let code = engine.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code.unwrap(), Some(0), "{}", engine.log());
}

#[tokio::test]
async fn json_logs_name_every_request_on_one_line() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let engine = start_engine(&repo, &["--log-format", "json"]).await;
    let resp = client()
        .get(engine.url("/v2/models/mlp"))
        .header("x-request-id", "engine-log-1")
        .header("user-agent", "engine-logs/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let line = eventually(Duration::from_secs(10), || async {
        engine
            .log()
            .lines()
            .find(|l| l.contains("engine-log-1"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|e| panic!("no request line: {e}\n{}", engine.log()));
    for l in engine.log().lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "weir_engine::access", "{v}");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/v2/models/mlp");
    assert_eq!(v["status"], 200);
    assert_eq!(v["user_agent"], "engine-logs/1.0");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0, "{v}");
}

#[tokio::test]
async fn generations_are_measured_in_the_genai_conventions() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let resp = client()
        .post(engine.url("/v1/completions"))
        .json(
            &json!({ "model": "tiny-lm", "prompt": "The Fox", "max_tokens": 8, "temperature": 0 }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let usage = &body["usage"];
    let text = client()
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str, labels: &[&str]| weir_test_support::sample_with(&text, name, labels);
    let model = [
        "gen_ai_request_model=\"tiny-lm\"",
        "gen_ai_response_model=\"tiny-lm\"",
        "weir_model_version=\"1\"",
    ];
    let mut input = model.to_vec();
    input.push("gen_ai_token_type=\"input\"");
    let mut output = model.to_vec();
    output.push("gen_ai_token_type=\"output\"");
    assert_eq!(
        sample("gen_ai_client_token_usage_sum", &input),
        usage["prompt_tokens"].as_f64(),
        "{text}"
    );
    assert_eq!(
        sample("gen_ai_client_token_usage_sum", &output),
        usage["completion_tokens"].as_f64()
    );
    assert_eq!(
        sample("gen_ai_server_request_duration_seconds_count", &model),
        Some(1.0)
    );
    assert_eq!(
        sample("gen_ai_server_time_to_first_token_seconds_count", &model),
        Some(1.0)
    );
    assert_eq!(
        sample("gen_ai_server_time_per_output_token_seconds_count", &model),
        Some(1.0)
    );
}
