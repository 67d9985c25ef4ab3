//! Hot swap: a new version loads beside the old one under concurrent load
//! with zero failed requests; loads that do not verify (tampered file,
//! tampered manifest, wrong key) or do not fit (bad ONNX, wrong shapes) are
//! refused and the old version keeps serving; watch mode reloads by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_test_support::eventually;

use crate::common::{
    Engine, TempRepo, client, copy_version, lm_context, models_dir, sse_data, start_engine,
};

/// Rewrites a version folder's manifest, signed with the key from `seed`;
/// returns the public key as hex.
pub(crate) fn resign(dir: &Path, model: &str, version: &str, seed: u8) -> String {
    let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "manifest.json" {
            files.insert(
                name,
                hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap())),
            );
        }
    }
    let message = weir_engine::repository::manifest::signed_message(model, version, &files);
    let signature = pair.sign(message.as_bytes());
    let manifest = json!({
        "format": 1, "model": model, "version": version, "files": files,
        "key_id": hex::encode(&Sha256::digest(&public)[..8]),
        "signature": base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    hex::encode(public)
}

async fn load(engine: &Engine, model: &str) -> (u16, Value) {
    let r = client()
        .post(engine.url(&format!("/v2/repository/models/{model}/load")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Re-signs every version in `repo` with a test key (seed 7) and writes
/// that key to `keys/test.pub`; returns its path, for `--public-key`. New
/// versions can then be signed with `resign(.., 7)`.
fn sign_with_test_key(repo: &TempRepo) -> std::path::PathBuf {
    let mut key_hex = String::new();
    for model in std::fs::read_dir(repo.repo()).unwrap() {
        let model = model.unwrap();
        let name = model.file_name().to_string_lossy().into_owned();
        for version in std::fs::read_dir(model.path()).unwrap() {
            let version = version.unwrap();
            let number = version.file_name().to_string_lossy().into_owned();
            key_hex = resign(&version.path(), &name, &number, 7);
        }
    }
    let key = repo.dir.path().join("keys/test.pub");
    std::fs::write(&key, key_hex).unwrap();
    key
}

pub(crate) async fn served_versions(engine: &Engine, model: &str) -> Value {
    let v: Value = client()
        .get(engine.url(&format!("/v2/models/{model}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["versions"].clone()
}

#[tokio::test]
async fn swap_under_concurrent_load_fails_nothing() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = Arc::new(start_engine(&repo, &[]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let after_swap_v2 = Arc::new(AtomicUsize::new(0));

    // A long stream that starts on version 1 and must finish there.
    let stream = client()
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "Four score and", "max_tokens": 400, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["x-weir-model-version"], "1");

    let mut workers = Vec::new();
    for w in 0..8 {
        let (engine, stop, failures, v2) = (
            engine.clone(),
            stop.clone(),
            failures.clone(),
            after_swap_v2.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) || done == 0 {
                let (version, ok) = if w % 2 == 0 {
                    let r = c
                        .post(engine.url("/v1/completions"))
                        .json(&json!({"model": "tiny-lm", "prompt": "The Fox", "max_tokens": 6, "temperature": 0}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap();
                            (v["model"].as_str().unwrap_or_default().to_string(), v["choices"][0]["finish_reason"] == "length")
                        }
                        _ => (String::new(), false),
                    }
                } else {
                    let ctx = lm_context();
                    let body = json!({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, ctx], "data": vec![65; ctx]}]});
                    match c.post(engine.url("/v2/models/tiny-lm/infer")).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap();
                            (format!("tiny-lm:{}", v["model_version"].as_str().unwrap_or_default()), true)
                        }
                        _ => (String::new(), false),
                    }
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if version == "tiny-lm:2" {
                    v2.fetch_add(1, Ordering::Relaxed);
                }
                done += 1;
            }
            done
        }));
    }

    repo.add("tiny-lm", "2");
    let (status, report) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["versions"], json!(["2"]));
    assert_eq!(report["retired"], json!(["1"]));
    assert_eq!(served_versions(&engine, "tiny-lm").await, json!(["2"]));

    // Keep the load on until the new version has answered plenty (or a
    // request failed, which the assertion below reports).
    eventually(Duration::from_secs(60), || {
        let answered = after_swap_v2.load(Ordering::Relaxed);
        let failed = failures.load(Ordering::Relaxed);
        std::future::ready((answered >= 50 || failed > 0).then_some(()))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during the swap ({total} sent)"
    );

    // The stream begun on version 1 drained on version 1.
    let data = sse_data(&stream.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["model"], "tiny-lm:1");
    assert_eq!(last["choices"][0]["finish_reason"], "length");

    // Pinning back to version 1 through the load body.
    let r = client()
        .post(engine.url("/v2/repository/models/tiny-lm/load"))
        .json(&json!({"parameters": {"version": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_versions(&engine, "tiny-lm").await, json!(["1"]));
}

#[tokio::test]
async fn unverified_loads_are_refused_and_the_old_version_serves_on() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    let v2 = repo.version_dir("tiny-lm", "2");
    let shipped_v2 = models_dir().join("repo/tiny-lm/2");

    // 1. A tampered model file.
    copy_version(&shipped_v2, &v2);
    let mut onnx = std::fs::read(v2.join("model.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 0x01;
    std::fs::write(v2.join("model.onnx"), &onnx).unwrap();
    let (status, err) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("model.onnx: sha256"),
        "{err}"
    );

    // 2. A manifest edited to match the tampered file: the signature breaks.
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(v2.join("manifest.json")).unwrap()).unwrap();
    manifest["files"]["model.onnx"] = Value::String(hex::encode(Sha256::digest(&onnx)));
    std::fs::write(v2.join("manifest.json"), manifest.to_string()).unwrap();
    let (status, err) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 422);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("signature does not verify"),
        "{err}"
    );

    // 3. Correctly signed, but by a key the engine does not trust.
    std::fs::remove_dir_all(&v2).unwrap();
    copy_version(&shipped_v2, &v2);
    resign(&v2, "tiny-lm", "2", 99);
    let (status, err) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 422);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("the engine trusts key"),
        "{err}"
    );

    // 4. An unlisted extra file.
    std::fs::remove_dir_all(&v2).unwrap();
    copy_version(&shipped_v2, &v2);
    std::fs::write(v2.join("notes.txt"), "hi").unwrap();
    let (status, err) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 422);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("notes.txt: file is not listed"),
        "{err}"
    );

    // Through all of it, version 1 answered.
    assert_eq!(served_versions(&engine, "tiny-lm").await, json!(["1"]));
    let r = client()
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "x", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-weir-model-version"], "1");
    assert_eq!(loads(&engine, "tiny-lm", "error").await, 4);
}

#[tokio::test]
async fn loads_that_do_not_fit_are_refused() {
    // A repository signed with a test key, so broken models can be signed.
    let repo = TempRepo::with(&[("tiny-lm", "1"), ("mlp", "1")]);
    let key = sign_with_test_key(&repo);
    let engine = start_engine(&repo, &["--public-key", key.to_str().unwrap()]).await;

    // Not ONNX at all.
    let v2 = repo.version_dir("tiny-lm", "2");
    copy_version(&models_dir().join("repo/tiny-lm/2"), &v2);
    std::fs::write(v2.join("model.onnx"), b"this is not an onnx graph").unwrap();
    resign(&v2, "tiny-lm", "2", 7);
    let (status, err) = load(&engine, "tiny-lm").await;
    assert_eq!(status, 500, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("onnx runtime"),
        "{err}"
    );
    assert_eq!(served_versions(&engine, "tiny-lm").await, json!(["1"]));

    // Real ONNX, but model.toml declares an output type the graph lacks.
    let m2 = repo.version_dir("mlp", "2");
    copy_version(&repo.version_dir("mlp", "1"), &m2);
    let toml = std::fs::read_to_string(m2.join("model.toml")).unwrap();
    let toml = toml.replace("version = \"1\"", "version = \"2\"");
    let (head, outputs) = toml.split_at(toml.find("[[outputs]]").unwrap());
    std::fs::write(
        m2.join("model.toml"),
        format!("{head}{}", outputs.replacen("\"FP32\"", "\"FP64\"", 1)),
    )
    .unwrap();
    resign(&m2, "mlp", "2", 7);
    let (status, err) = load(&engine, "mlp").await;
    assert_eq!(status, 422, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(msg.contains("OUTPUT0") && msg.contains("FP64"), "{err}");
    assert_eq!(served_versions(&engine, "mlp").await, json!(["1"]));
}

#[tokio::test]
async fn watch_mode_swaps_in_a_new_version() {
    let repo = TempRepo::with(&[("tiny-lm", "1")]);
    let engine = start_engine(&repo, &["--watch"]).await;
    assert_eq!(served_versions(&engine, "tiny-lm").await, json!(["1"]));
    repo.add("tiny-lm", "2");
    let swapped = eventually(Duration::from_secs(30), || async {
        (served_versions(&engine, "tiny-lm").await == json!(["2"])).then_some(())
    })
    .await;
    assert!(
        swapped.is_ok(),
        "watch mode did not load version 2:\n{}",
        engine.log()
    );
}

/// `weir_engine_model_loads_total` for `model` and `result` (0 when absent).
async fn loads(engine: &Engine, model: &str, result: &str) -> u64 {
    let scrape = client().get(engine.url("/metrics")).send().await.unwrap();
    let text = scrape.text().await.unwrap();
    let series = format!(r#"weir_engine_model_loads_total{{model="{model}",result="{result}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Signs `from` (a version folder) as `model` version 2 with the test key in
/// a folder outside the repository, then moves it into `repo` at once.
fn move_in_version_2(repo: &TempRepo, model: &str, from: &Path) {
    let staging = tempfile::tempdir().unwrap();
    let staged = staging.path().join(model);
    copy_version(from, &staged);
    let toml = std::fs::read_to_string(staged.join("model.toml")).unwrap();
    std::fs::write(
        staged.join("model.toml"),
        toml.replace("version = \"1\"", "version = \"2\""),
    )
    .unwrap();
    resign(&staged, model, "2", 7);
    copy_version(&staged, &repo.version_dir(model, "2"));
}

/// Waits until `model` serves version 2 and its load has been counted.
async fn wait_for_version_2(engine: &Engine, model: &str) {
    let swapped = eventually(Duration::from_secs(30), || async {
        let served = served_versions(engine, model).await == json!(["2"]);
        (served && loads(engine, model, "ok").await >= 2).then_some(())
    })
    .await;
    assert!(
        swapped.is_ok(),
        "watch mode did not load {model} version 2:\n{}",
        engine.log()
    );
}

/// One change, one reload, of the changed model only: the engine's own
/// reads of the model files it loads are not changes (they once made every
/// model reload twice a second, forever).
#[tokio::test]
async fn watch_mode_reloads_only_the_changed_model_once() {
    let repo = TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1")]);
    let key = sign_with_test_key(&repo);
    let engine = start_engine(&repo, &["--watch", "--public-key", key.to_str().unwrap()]).await;

    move_in_version_2(&repo, "mlp", &repo.version_dir("mlp", "1"));
    wait_for_version_2(&engine, "mlp").await;
    move_in_version_2(&repo, "tiny-lm", &models_dir().join("repo/tiny-lm/2"));
    wait_for_version_2(&engine, "tiny-lm").await;

    // Each model loaded at the start and once for its own change: not again
    // for the reads of its own reload, nor for the other model's change.
    for model in ["mlp", "tiny-lm"] {
        assert_eq!(
            (
                loads(&engine, model, "ok").await,
                loads(&engine, model, "error").await
            ),
            (2, 0),
            "{model} loads (ok, error):\n{}",
            engine.log()
        );
    }
}
