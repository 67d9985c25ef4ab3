//! The real models of `scripts/setup-models.sh` (SmolLM2-135M-Instruct
//! versions 1 and 2, all-MiniLM-L6-v2) through the real binary: greedy and
//! chat goldens, the chat template, the tokenizer, continuous batching, the
//! KV-cache budget, embeddings, refused parameters and tampered files; the
//! Open Inference Protocol's text tensors in `oip.rs`, the decode loop's
//! budget recovery and chunked prefill in `decode.rs`, and a GPT-2-architecture
//! decoder built from random weights in `gpt2.rs`.
//! The repository comes from `WEIR_MODELS_REPO`, else from running
//! `scripts/setup-models.sh` (which only compares stamps when nothing changed).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use weir_engine::hf::{ChatTemplate, TemplateMessage, TextTokenizer};

use crate::common::{Engine, client, crate_dir, golden, sse_data};

mod decode;
mod gpt2;
mod oip;

const SMOL: &str = "smollm2-135m-instruct";
const MINILM: &str = "all-minilm-l6-v2";

/// The real-model repository folder (once per test binary).
fn repo() -> PathBuf {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| Engine::real_repository().expect("the real models' repository"))
        .clone()
}

fn key() -> String {
    repo().join("../keys/models.pub").display().to_string()
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir-engine"))
}

/// The Python with the project's packages: `WEIR_PYTHON`, else `.venv`.
fn python() -> PathBuf {
    std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.venv/bin/python"))
}

async fn start(models: &[&str], extra: &[&str]) -> Engine {
    let key = key();
    let mut args: Vec<&str> = vec!["--public-key", &key];
    for m in models {
        args.extend(["--model", m]);
    }
    args.extend(extra);
    match Engine::launch(&binary(), &repo(), &args).await {
        Ok(e) => e,
        Err(e) => panic!("{e:#}"),
    }
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

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn causal_lm_greedy_and_chat_match_goldens_for_both_versions() {
    let engine = start(&[&format!("{SMOL}:1"), &format!("{SMOL}:2")], &[]).await;
    for version in ["1", "2"] {
        let g = golden(SMOL, version);
        let model = format!("{SMOL}:{version}");
        // The plain continuation, past the stop token as the reference does.
        let (status, out) = post(
            &engine,
            "/v1/completions",
            json!({
                "model": model, "prompt": g["greedy"]["prompt"], "temperature": 0,
                "max_tokens": g["greedy"]["max_new_tokens"], "ignore_eos": true,
                "return_token_ids": true,
            }),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(
            ids(&out["prompt_token_ids"]),
            ids(&g["greedy"]["prompt_ids"])
        );
        assert_eq!(
            ids(&out["choices"][0]["token_ids"]),
            ids(&g["greedy"]["generated_ids"]),
            "v{version} greedy ids"
        );
        assert_eq!(out["choices"][0]["text"], g["greedy"]["generated_text"]);
        assert_eq!(out["usage"]["completion_tokens"], 32);
        // The chat answer, ending at <|im_end|>.
        let (status, out) = post(
            &engine,
            "/v1/chat/completions",
            json!({
                "model": model, "messages": g["chat"]["messages"], "temperature": 0,
                "return_token_ids": true,
            }),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(ids(&out["prompt_token_ids"]), ids(&g["chat"]["prompt_ids"]));
        assert_eq!(
            ids(&out["choices"][0]["token_ids"]),
            ids(&g["chat"]["generated_ids"]),
            "v{version} chat ids"
        );
        assert_eq!(
            out["choices"][0]["message"]["content"],
            g["chat"]["answer_text"]
        );
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            out["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            g["chat"]["prompt_ids"].as_array().unwrap().len()
        );
    }
    // Streaming gives the same text, chunk by chunk.
    let g = golden(SMOL, "1");
    let body = client()
        .post(engine.url("/v1/chat/completions"))
        .json(&json!({
            "model": format!("{SMOL}:1"), "messages": g["chat"]["messages"],
            "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut text = String::new();
    let mut usage = Value::Null;
    for data in sse_data(&body) {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(text, g["chat"]["answer_text"].as_str().unwrap());
    let chat_tokens = g["chat"]["generated_ids"].as_array().unwrap().len();
    assert_eq!(
        usage["completion_tokens"].as_u64().unwrap() as usize,
        chat_tokens
    );
    // Every generation of version 1 is in the GenAI metrics, those that
    // ended at the stop token (the two chats) as well as the one that ran
    // to max_tokens.
    let page = client()
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v1 = "weir_model_version=\"1\"";
    let sample = |name: &str, extra: &[&str]| {
        let mut labels = vec![v1];
        labels.extend_from_slice(extra);
        weir_test_support::sample_with(&page, name, &labels).unwrap_or(-1.0)
    };
    assert_eq!(
        sample("gen_ai_server_request_duration_seconds_count", &[]),
        3.0,
        "{page}"
    );
    assert_eq!(
        sample(
            "gen_ai_client_token_usage_sum",
            &["gen_ai_token_type=\"output\""]
        ),
        (32 + 2 * chat_tokens) as f64,
        "{page}"
    );
}

#[test]
fn chat_template_renders_like_hugging_face_and_tokenizer_round_trips() {
    let dir = repo().join(SMOL).join("1");
    let g = golden(SMOL, "1");
    let template = ChatTemplate::from_source(
        std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap(),
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    for case in [&g["chat_template"], &g["chat"]] {
        let messages: Vec<TemplateMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| TemplateMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let rendered = template.render(&messages, true).unwrap();
        let want = case.get("rendered").unwrap_or(&case["prompt_text"]);
        assert_eq!(rendered, want.as_str().unwrap());
    }
    let tokenizer =
        TextTokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    for case in g["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tokenizer.encode(text, false).unwrap();
        assert_eq!(
            got.iter().map(|&i| u64::from(i)).collect::<Vec<_>>(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(tokenizer.decode(&got).unwrap(), text);
    }
    let chinese = "道可道，非常道。名可名，非常名。";
    let round = tokenizer
        .decode(&tokenizer.encode(chinese, false).unwrap())
        .unwrap();
    assert_eq!(round, chinese);
}

#[tokio::test]
async fn unsupported_parameters_and_overlong_requests_are_refused() {
    let engine = start(&[&format!("{SMOL}:1")], &["--kv-cache-mb", "8"]).await;
    let chat = |extra: Value| {
        let mut body = json!({
            "model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, name) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"n": 2}), "n:"),
    ] {
        let (status, out) = post(&engine, "/v1/chat/completions", chat(extra)).await;
        assert_eq!(status, 400, "{out}");
        let message = out["error"]["message"].as_str().unwrap();
        assert!(message.contains(name), "{message}");
    }
    // Accepted no-op values of the same parameters.
    let (status, out) = post(
        &engine,
        "/v1/chat/completions",
        chat(json!({"response_format": {"type": "text"}, "logprobs": false, "tools": []})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    // Beyond the context (2048 by default).
    let (status, out) = post(
        &engine,
        "/v1/completions",
        json!({"model": SMOL, "prompt": "Hello", "max_tokens": 2100}),
    )
    .await;
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{out}"
    );
    // More than the whole KV budget (8 MiB = 182 tokens).
    let (status, out) = post(
        &engine,
        "/v1/completions",
        json!({"model": SMOL, "prompt": "Hello", "max_tokens": 400}),
    )
    .await;
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KV cache"),
        "{out}"
    );
}

#[tokio::test]
async fn eight_concurrent_greedy_requests_equal_each_alone() {
    let engine = start(&[&format!("{SMOL}:1")], &[]).await;
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time",
        "道可道，",
        "The three primary colors are",
        "1, 2, 3, 4,",
        "Water boils at",
        "My favourite book is",
    ];
    let body = |p: &str| {
        json!({
            "model": SMOL, "prompt": p, "max_tokens": 24, "temperature": 0,
            "return_token_ids": true, "ignore_eos": true,
        })
    };
    let mut alone = Vec::new();
    for p in prompts {
        let (status, out) = post(&engine, "/v1/completions", body(p)).await;
        assert_eq!(status, 200, "{out}");
        alone.push(out["choices"][0].clone());
    }
    let together = futures::future::join_all(
        prompts
            .iter()
            .map(|p| post(&engine, "/v1/completions", body(p))),
    )
    .await;
    for ((p, solo), (status, out)) in prompts.iter().zip(&alone).zip(&together) {
        assert_eq!(*status, 200, "{out}");
        assert_eq!(out["choices"][0]["token_ids"], solo["token_ids"], "{p:?}");
        assert_eq!(out["choices"][0]["text"], solo["text"], "{p:?}");
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn embeddings_match_the_golden_and_the_openai_shape() {
    let engine = start(&[MINILM, &format!("{SMOL}:1")], &[]).await;
    let g = golden(MINILM, "1");
    let sentences: Vec<&str> = g["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let (status, out) = post(
        &engine,
        "/v1/embeddings",
        json!({"model": MINILM, "input": sentences}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "list");
    let atol = g["atol"].as_f64().unwrap();
    let vectors: Vec<Vec<f64>> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    let mut tokens = 0;
    for (s, v) in g["sentences"].as_array().unwrap().iter().zip(&vectors) {
        assert_eq!(v.len(), 384);
        for (got, want) in v.iter().zip(floats(&s["first8"])) {
            assert!(
                (got - want).abs() <= atol,
                "{got} vs {want} for {}",
                s["text"]
            );
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        tokens += s["ids"].as_array().unwrap().len();
    }
    assert_eq!(out["usage"]["prompt_tokens"], tokens);
    assert_eq!(out["usage"]["total_tokens"], tokens);
    for pair in g["pairs"].as_array().unwrap() {
        let (a, b) = (
            pair["a"].as_u64().unwrap() as usize,
            pair["b"].as_u64().unwrap() as usize,
        );
        let c = cosine(&vectors[a], &vectors[b]);
        assert!(
            (c - pair["cosine"].as_f64().unwrap()).abs() < 1e-3,
            "{pair}: {c}"
        );
    }
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]) + 0.5);
    // One string, token ids and base64 give the same vector.
    let first = &g["sentences"][0];
    for input in [
        first["text"].clone(),
        first["ids"].clone(),
        json!([first["ids"]]),
    ] {
        let (status, out) = post(
            &engine,
            "/v1/embeddings",
            json!({"model": MINILM, "input": input, "encoding_format": "base64"}),
        )
        .await;
        assert_eq!(status, 200, "{out}");
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let v: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        assert!(cosine(&v, &vectors[0]) > 0.99999, "{input}");
    }
    for (body, needle) in [
        (
            json!({"model": MINILM, "input": "x", "dimensions": 128}),
            "dimensions",
        ),
        (json!({"model": MINILM, "input": []}), "input"),
        (json!({"model": MINILM, "input": [[999999]]}), "vocabulary"),
        (
            json!({"model": MINILM, "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": SMOL, "input": "x"}),
            "not an embedding model",
        ),
    ] {
        let (status, out) = post(&engine, "/v1/embeddings", body).await;
        assert_eq!(status, 400, "{out}");
        assert!(
            out["error"]["message"].as_str().unwrap().contains(needle),
            "{out}"
        );
    }
    let (status, out) = post(
        &engine,
        "/v1/chat/completions",
        json!({"model": MINILM, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{out}");
    // The stock openai SDK and tritonclient.
    let out = Command::new(python())
        .arg(crate_dir().join("tests/python/test_real_models.py"))
        .env("WEIR_HTTP", engine.http.to_string())
        .env("WEIR_GRPC", engine.grpc.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Copies a version folder, changes one file, and expects the engine to
/// refuse to start, naming that file.
async fn refuses_tampered(model: &str, file: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("repo").join(model).join("1");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(repo().join(model).join("1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(dst.join(file)).unwrap();
    bytes.extend_from_slice(b" ");
    std::fs::write(dst.join(file), bytes).unwrap();
    let key = key();
    let err = Engine::launch(&binary(), &tmp.path().join("repo"), &["--public-key", &key])
        .await
        .err()
        .expect("a tampered version must not load")
        .to_string();
    assert!(err.contains(file), "{err}");
}

#[tokio::test]
async fn tampered_tokenizer_or_chat_template_is_refused() {
    refuses_tampered(MINILM, "tokenizer.json").await;
    refuses_tampered(SMOL, "chat_template.jinja").await;
}

/// Bringing your own model: a version folder copied under a new name,
/// signed with `models/sign.py` and a key of its own, loads and serves.
#[tokio::test]
async fn a_folder_signed_with_sign_py_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("repo/my-encoder/3");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(repo().join(MINILM).join("1")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "manifest.json" {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    let toml = std::fs::read_to_string(dst.join("model.toml")).unwrap();
    let toml = toml
        .replace(&format!("name = \"{MINILM}\""), "name = \"my-encoder\"")
        .replace("version = \"1\"", "version = \"3\"");
    std::fs::write(dst.join("model.toml"), toml).unwrap();
    let keys = tmp.path().join("keys");
    let out = Command::new(python())
        .arg(crate_dir().join("models/sign.py"))
        .arg("--new-key")
        .arg(&keys)
        .arg("--key")
        .arg(keys.join("signing.key"))
        .arg(&dst)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run sign.py");
    assert!(
        out.status.success(),
        "sign.py:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = keys.join("models.pub").display().to_string();
    let engine = Engine::launch(&binary(), &tmp.path().join("repo"), &["--public-key", &key])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (status, out) = post(
        &engine,
        "/v1/embeddings",
        json!({"model": "my-encoder", "input": "A man is playing a guitar."}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model"], "my-encoder:3");
    assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 384);
}
