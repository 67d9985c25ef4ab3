//! Model names through the gateway: an arm's `model` renames the OpenAI
//! body on the way up and the answer's `model` on the way back (JSON, SSE
//! split at any byte, the stock OpenAI SDK as client); a request naming an
//! arm's model goes to that arm; the gateway's own `/v1/models` catalogue;
//! task polls that reach the engine that runs the task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{SERVER, weir_bin};
use futures::StreamExt;
use serde_json::{Value, json};
use weir_test_support::upstream::{ECHO_HEADER, REPLY_HEADER, SSE_HEADER, SSE_SPLIT_HEADER};
use weir_test_support::{Engine, Upstream, Weir};

/// Route `chat` (`models = ["chat"]`) split 50/50 between upstreams `a` and
/// `b`, whose arms rename the model to `vendor/model-a` and `vendor/model-b`.
async fn renaming() -> (Upstream, Upstream, Weir) {
    let a = Upstream::local("a").await.unwrap();
    let b = Upstream::local("b").await.unwrap();
    let config = format!(
        "{SERVER}[[pools]]\nname = \"a\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[pools]]\nname = \"b\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/v1\"\nmodels = [\"chat\"]\narms = [\n\
           {{ name = \"a\", pool = \"a\", weight = 1, model = \"vendor/model-a\" }},\n\
           {{ name = \"b\", pool = \"b\", weight = 1, model = \"vendor/model-b\" }},\n]\n",
        a.addr, b.addr
    );
    let weir = Weir::start(weir_bin(), &config).await.unwrap();
    (a, b, weir)
}

async fn chat(weir: &Weir, body: Value, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = weir_test_support::client()
        .post(weir.url("/v1/chat/completions"))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let arm = resp.headers()["x-weir-arm"].to_str().unwrap().to_owned();
    (arm, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arms_model_renames_the_body_and_every_answer() {
    let (_a, _b, weir) = renaming().await;
    let ask = json!({"model": "chat", "temperature": 0.50, "messages": [{"role": "user", "content": "hi"}]});
    let mut arms = std::collections::HashSet::new();
    for _ in 0..20 {
        // What the upstream received: its arm's name, every other field kept.
        let (arm, text) = chat(&weir, ask.clone(), &[(ECHO_HEADER, "1")]).await;
        let echo: Value = serde_json::from_str(&text).unwrap();
        let sent = echo["body"].as_str().unwrap();
        assert_eq!(
            sent,
            ask.to_string()
                .replace("\"chat\"", &format!("\"vendor/model-{arm}\""))
        );
        arms.insert(arm);
        // A JSON answer names what the client asked for.
        let (_, text) = chat(&weir, ask.clone(), &[(REPLY_HEADER, "hello")]).await;
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["model"], "chat", "{answer}");
        assert_eq!(answer["choices"][0]["message"]["content"], "hello");
    }
    assert_eq!(arms.len(), 2, "both arms served");
    // Streams, each event cut into 1..7-byte writes (a UTF-8 character
    // and the JSON split anywhere): every chunk names `chat`.
    let streamed =
        json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = "héllo, 世界 \"model\"";
    for split in ["1", "3", "7"] {
        let (arm, body) = chat(
            &weir,
            streamed.clone(),
            &[(SSE_HEADER, text), (SSE_SPLIT_HEADER, split)],
        )
        .await;
        let mut content = String::new();
        let mut events = 0;
        for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["model"], "chat", "arm {arm}, split {split}: {line}");
            content.push_str(event["choices"][0]["delta"]["content"].as_str().unwrap());
            events += 1;
        }
        assert_eq!(content, text);
        assert_eq!(events, text.chars().count());
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    // A request naming an arm's model is that arm's, and is not renamed.
    for _ in 0..10 {
        let pinned = json!({"model": "vendor/model-b", "messages": []});
        let (arm, text) = chat(&weir, pinned, &[(REPLY_HEADER, "x")]).await;
        assert_eq!(arm, "b");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap()["model"],
            "vendor/model-b"
        );
    }
    // A body whose model is ambiguous is refused, not guessed.
    let resp = weir_test_support::client()
        .post(weir.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"chat","messages":[],"model":"chat"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The catalogue: the route's name and both upstream names, from the
    // gateway itself (neither upstream has a /v1/models).
    let list: Value = weir_test_support::client()
        .get(weir.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "vendor/model-a", "vendor/model-b"]);
    for (id, status) in [("chat", 200), ("vendor/model-a", 200), ("gpt-4", 404)] {
        let resp = weir_test_support::client()
            .get(weir.url(&format!("/v1/models/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{id}");
        let body: Value = resp.json().await.unwrap();
        if status == 200 {
            assert_eq!(body["id"], id);
        } else {
            assert_eq!(body["error"]["code"], "model_not_found");
        }
    }
}

fn python() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-python.sh (or set WEIR_PYTHON)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_sees_the_name_it_asked_for() {
    let (_a, _b, weir) = renaming().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/model_names.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("WEIR_URL", weir.url("/v1"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}\n{}", weir.log());
    assert!(report.contains("OK"), "{report}");
}

/// `tiny-lm` split 90/10 between two engines that each serve one version
/// (arms renaming to `tiny-lm:1` and `tiny-lm:2`), and a route without
/// models for task polls split the same way (its prefix keeps it off
/// `/v1/models`, so the catalogue is the gateway's).
fn engines_config(v1: &Engine, v2: &Engine) -> String {
    format!(
        "{SERVER}[[pools]]\nname = \"v1\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[pools]]\nname = \"v2\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"lm\"\nprefix = \"/v1\"\nmodels = [\"tiny-lm\"]\narms = [\n\
           {{ name = \"v1\", pool = \"v1\", weight = 90, model = \"tiny-lm:1\" }},\n\
           {{ name = \"v2\", pool = \"v2\", weight = 10, model = \"tiny-lm:2\" }},\n]\n\n\
         [[routes]]\nname = \"tasks\"\nprefix = \"/v1/tasks\"\narms = [\n\
           {{ name = \"v1\", pool = \"v1\", weight = 90 }},\n\
           {{ name = \"v2\", pool = \"v2\", weight = 10 }},\n]\n",
        v1.http, v2.http
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_pins_and_task_polls_never_miss_behind_a_split() {
    let binary = Engine::binary_beside(weir_bin()).unwrap();
    let v1 = Engine::start(&binary, &["tiny-lm:1"]).await.unwrap();
    let v2 = Engine::start(&binary, &["tiny-lm:2"]).await.unwrap();
    let weir = Weir::start(weir_bin(), &engines_config(&v1, &v2))
        .await
        .unwrap();
    let client = weir_test_support::client();
    // 100 of 100 lists show both versions.
    let lists = futures::stream::iter(0..100)
        .map(|_| {
            let req = client.get(weir.url("/v1/models"));
            async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for list in lists {
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["tiny-lm", "tiny-lm:1", "tiny-lm:2"], "{list}");
    }
    // A pinned version: 0 of 200 lookups and completions miss.
    let statuses = futures::stream::iter(0..200)
        .map(|i| {
            let req = if i % 2 == 0 {
                client.get(weir.url("/v1/models/tiny-lm:1"))
            } else {
                client.post(weir.url("/v1/completions")).json(&json!({
                    "model": "tiny-lm:1", "prompt": "The ", "max_tokens": 2, "temperature": 0
                }))
            };
            async move {
                let resp = req.send().await.unwrap();
                let arm = resp
                    .headers()
                    .get("x-weir-arm")
                    .map(|v| v.to_str().unwrap().to_owned());
                (resp.status().as_u16(), arm, i)
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for (status, arm, i) in statuses {
        assert_eq!(status, 200, "request {i}");
        if i % 2 == 1 {
            assert_eq!(arm.as_deref(), Some("v1"));
        }
    }
    // The unpinned name is renamed for whichever arm serves it and comes back as asked.
    let answer: Value = client
        .post(weir.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "The ", "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["model"], "tiny-lm", "{answer}");
    // Tasks created on both engines; every poll reaches the engine that
    // runs the task (a 90/10 split of untagged polls would miss ~1 in 10).
    let created = futures::stream::iter(0..20)
        .map(|_| {
            let req = client.post(weir.url("/v1/tasks")).json(&json!({
                "model": "tiny-lm", "prompt": "The ", "max_tokens": 2, "temperature": 0
            }));
            async move {
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 202);
                let arm = resp.headers()["x-weir-arm"].to_str().unwrap().to_owned();
                let body: Value = resp.json().await.unwrap();
                (arm, body["task_id"].as_str().unwrap().to_owned())
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut misses = 0;
    for (arm, id) in &created {
        assert!(weir_gateway::rename::split_task_id(id).is_some(), "{id}");
        let done = weir_test_support::eventually(std::time::Duration::from_secs(30), || async {
            let resp = client
                .get(weir.url(&format!("/v1/tasks/{id}")))
                .send()
                .await
                .ok()?;
            if resp.status() == 404 {
                return Some(None);
            }
            assert_eq!(resp.headers()["x-weir-arm"].to_str().unwrap(), arm);
            let body: Value = resp.json().await.ok()?;
            assert_eq!(body["task_id"], id.as_str());
            (body["status"] == "succeeded" || body["status"] == "failed").then_some(Some(body))
        })
        .await
        .unwrap();
        match done {
            None => misses += 1,
            Some(body) => assert_eq!(body["status"], "succeeded", "{body}"),
        }
    }
    assert_eq!(misses, 0, "task polls answered 404");
    // A tag no backend has: a clear 404 from the gateway.
    let resp = client
        .get(weir.url("/v1/tasks/task-1.w0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "task_not_found");
}
