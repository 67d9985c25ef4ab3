//! The engine's sandbox: on by default where the kernel allows, visible in
//! `/proc/<pid>/status` and the metrics, off when asked; a model version
//! that links outside the repository cannot be read; the shared setup code
//! refuses exec and other files (`weir-sandbox-probe`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use weir_test_support::{client, eventually};

use crate::common::{Engine, TempRepo, start_engine};
use crate::hot_swap::{resign, served_versions};

fn status(engine: &Engine) -> Option<(u32, u32)> {
    weir_conf::sandbox::proc_status(&engine.pid()?.to_string())
}

#[tokio::test]
async fn the_engine_sandboxes_itself_by_default_and_serves() {
    let repo = TempRepo::with(&[("mlp", "1"), ("tiny-lm", "1")]);
    let engine = start_engine(&repo, &[]).await;
    assert_eq!(status(&engine), Some((1, 2)), "{}", engine.log());
    assert_eq!(
        engine.metric_sample("weir_engine_sandbox_enabled").await,
        Some(1.0)
    );
    assert!(engine.log().contains("sandbox applied"), "{}", engine.log());
    // It serves: a completion and a tensor inference.
    let r = client()
        .post(engine.url("/v1/completions"))
        .json(&json!({"model": "tiny-lm", "prompt": "ab", "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", engine.log());
    let r = client()
        .post(engine.url("/v2/models/mlp/infer"))
        .json(&json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5f32; 16]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", engine.log());

    let ready = client()
        .get(engine.url("/v2/health/ready"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(ready["sandbox"]["enabled"], true, "{ready}");
    assert_eq!(ready["sandbox"]["landlock"], "full", "{ready}");

    // `on` refuses to start where a layer is missing, or where a thread
    // (ONNX Runtime's own) would already run outside Landlock's rules.
    let on = start_engine(&repo, &["--sandbox", "on"]).await;
    assert_eq!(status(&on), Some((1, 2)), "{}", on.log());
    assert!(!on.log().contains("already running"), "{}", on.log());

    let off = start_engine(&repo, &["--sandbox", "off"]).await;
    assert_eq!(status(&off), Some((0, 0)));
    assert_eq!(
        off.metric_sample("weir_engine_sandbox_enabled").await,
        Some(0.0)
    );
}

/// Version 2 of `mlp` whose `model.onnx` is a symbolic link to a copy
/// outside the repository, signed for that file's digest with the test key
/// of `seed`, moved into the repository at once.
fn link_version_2(repo: &TempRepo, seed: u8) {
    let outside = repo.dir.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    let v1 = repo.version_dir("mlp", "1");
    std::fs::copy(v1.join("model.onnx"), outside.join("model.onnx")).unwrap();
    let staging = tempfile::tempdir_in(repo.dir.path()).unwrap();
    let staged = staging.path().join("2");
    std::fs::create_dir(&staged).unwrap();
    let toml = std::fs::read_to_string(v1.join("model.toml")).unwrap();
    std::fs::write(
        staged.join("model.toml"),
        toml.replace("version = \"1\"", "version = \"2\""),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.join("model.onnx"), staged.join("model.onnx")).unwrap();
    resign(&staged, "mlp", "2", seed);
    std::fs::rename(&staged, repo.version_dir("mlp", "2")).unwrap();
}

fn trusted_key(repo: &TempRepo, seed: u8) -> PathBuf {
    let public = resign(&repo.version_dir("mlp", "1"), "mlp", "1", seed);
    let path = repo.dir.path().join("keys/test.pub");
    std::fs::write(&path, public).unwrap();
    path
}

/// A version added under `--watch` whose `model.onnx` links outside the
/// repository, with a manifest signed for the linked file, is refused by
/// the verifier before anything reads it (the sandbox would refuse the
/// read too: `the_shared_setup_refuses_exec_and_other_files`), and the old
/// version serves on, in the sandbox.
#[tokio::test]
async fn a_version_linking_outside_the_repository_is_refused() {
    let repo = TempRepo::with(&[("mlp", "1")]);
    let key = trusted_key(&repo, 11);
    let key = key.display().to_string();
    let engine = start_engine(&repo, &["--watch", "--public-key", &key]).await;
    assert_eq!(status(&engine), Some((1, 2)));
    assert_eq!(served_versions(&engine, "mlp").await, json!(["1"]));
    link_version_2(&repo, 11);
    let refused = eventually(Duration::from_secs(30), || async {
        let log = engine.log();
        (log.contains("load refused") && log.contains("model.onnx: only plain files")).then_some(())
    })
    .await;
    assert!(refused.is_ok(), "not refused:\n{}", engine.log());
    assert_eq!(served_versions(&engine, "mlp").await, json!(["1"]));
    let r = client()
        .post(engine.url("/v2/models/mlp/infer"))
        .json(&json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": vec![0.5f32; 16]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the old version stopped serving");
}

fn probe() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weir-engine")).with_file_name("weir-sandbox-probe")
}

#[test]
fn the_shared_setup_refuses_exec_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = |mode: &str| {
        let out = std::process::Command::new(probe())
            .arg(mode)
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (built by cargo test --workspace)",
                    probe().display()
                )
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let on = run("on");
    for want in [
        "status=Some((1, 2))",
        "read_passwd=refused",
        "exec=refused",
        "write_allowed_dir=refused",
        "read_allowed=ok",
    ] {
        assert!(on.contains(want), "{want} in:\n{on}");
    }
    let off = run("off");
    for want in ["status=Some((0, 0))", "read_passwd=ok", "exec=ok"] {
        assert!(off.contains(want), "{want} in:\n{off}");
    }
}
