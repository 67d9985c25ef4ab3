//! A decoder of another architecture through the same causal-lm code:
//! `models/tiny_gpt2.py` builds a GPT-2 (learned position embeddings,
//! LayerNorm with bias, full multi-head attention with as many KV heads as
//! query heads, GELU MLP, tied head; 2 layers, 4 heads of 16) in the Optimum
//! layout from random weights, with SmolLM2's tokenizer, signed with a key of
//! its own. Its greedy tokens must equal those of the plain onnxruntime loop
//! of `loadtest/reference/ort_greedy.py` on the same `model.onnx`, alone,
//! batched with other prompts and streamed.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::{SMOL, binary, ids, post, python, repo};
use crate::common::{Engine, client, crate_dir, sse_data};

const MODEL: &str = "tiny-gpt2";
const NEW_TOKENS: usize = 16;
/// Prompts of 5, 6, 4 and 37 tokens: a batch of them is left-padded.
const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
];

/// Builds and signs the model under `out` (`repo/`, `keys/`) and returns
/// the reference answer of each prompt: `prompt_ids`, `generated_ids`,
/// `text`, `min_top2_gap`.
fn build_with_reference(out: &Path) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(crate_dir().join("models/tiny_gpt2.py"))
        .arg(out)
        .arg("--tokenizer-from")
        .arg(repo().join(SMOL).join("1"))
        .args(["-n", &NEW_TOKENS.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for prompt in PROMPTS {
        cmd.args(["--prompt", prompt]);
    }
    let run = cmd.output().expect("run tiny_gpt2.py");
    assert!(
        run.status.success(),
        "tiny_gpt2.py:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reference: Vec<Value> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reference.len(), PROMPTS.len());
    for r in &reference {
        // float32 noise is ~1e-5 here: a closer call could flip a token.
        assert!(r["min_top2_gap"].as_f64().unwrap() > 1e-3, "{r}");
    }
    reference
}

fn completion(prompt: &str) -> Value {
    json!({
        "model": MODEL, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
        "ignore_eos": true, "return_token_ids": true,
    })
}

fn assert_matches(out: &Value, want: &Value) {
    let prompt = &want["prompt"];
    assert_eq!(out["model"], format!("{MODEL}:1"));
    assert_eq!(
        ids(&out["prompt_token_ids"]),
        ids(&want["prompt_ids"]),
        "{prompt}"
    );
    assert_eq!(
        ids(&out["choices"][0]["token_ids"]),
        ids(&want["generated_ids"]),
        "{prompt}"
    );
    assert_eq!(out["choices"][0]["text"], want["text"], "{prompt}");
    assert_eq!(out["usage"]["completion_tokens"], NEW_TOKENS);
}

/// Decode steps that ran more than one sequence, from `/metrics`.
async fn batched_steps(engine: &Engine) -> f64 {
    let text = client()
        .get(engine.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!("model=\"{MODEL}\",version=\"1\"");
    let value = |series: String| {
        text.lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("{series} is not in /metrics:\n{text}"))
    };
    value(format!("weir_engine_batch_size_count{{{labels}}}"))
        - value(format!(
            "weir_engine_batch_size_bucket{{{labels},le=\"1\"}}"
        ))
}

#[tokio::test]
async fn a_gpt2_architecture_export_decodes_like_plain_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = build_with_reference(tmp.path());
    let key = tmp.path().join("keys/models.pub").display().to_string();
    let engine = Engine::launch(&binary(), &tmp.path().join("repo"), &["--public-key", &key])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Alone: token for token the reference loop's answer.
    for (prompt, want) in PROMPTS.iter().zip(&reference) {
        let (status, out) = post(&engine, "/v1/completions", completion(prompt)).await;
        assert_eq!(status, 200, "{out}");
        assert_matches(&out, want);
    }
    assert_eq!(batched_steps(&engine).await, 0.0);

    // Together: decoded as one batch (pasts left-padded), the same answers.
    let together = futures::future::join_all(
        PROMPTS
            .iter()
            .map(|p| post(&engine, "/v1/completions", completion(p))),
    )
    .await;
    for ((status, out), want) in together.iter().zip(&reference) {
        assert_eq!(*status, 200, "{out}");
        assert_matches(out, want);
    }
    // The four prompts of one text-tensor request are generated together.
    let (status, out) = post(
        &engine,
        &format!("/v2/models/{MODEL}/infer"),
        json!({
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [PROMPTS.len()], "data": PROMPTS}],
            "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": true},
        }),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let texts: Vec<&Value> = reference.iter().map(|r| &r["text"]).collect();
    assert_eq!(out["outputs"][0]["data"], json!(texts));
    assert!(
        batched_steps(&engine).await > 0.0,
        "no decode step ran more than one sequence"
    );

    // Streamed: the same text, chunk by chunk.
    let want = &reference[3];
    let mut body = completion(PROMPTS[3]);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let sse = client()
        .post(engine.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut text, mut chunks, mut usage) = (String::new(), 0, Value::Null);
    for data in sse_data(&sse) {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        if let Some(t) = v["choices"][0]["text"].as_str() {
            text.push_str(t);
            chunks += 1;
        }
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(text, want["text"].as_str().unwrap());
    assert!(chunks > 1, "{sse}");
    assert_eq!(usage["completion_tokens"], NEW_TOKENS);
    assert_eq!(
        usage["prompt_tokens"].as_u64().unwrap() as usize,
        want["prompt_ids"].as_array().unwrap().len()
    );
}
