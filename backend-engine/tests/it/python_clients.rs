//! Runs `tests/python/test_clients.py` (tritonclient HTTP/gRPC and the
//! openai SDK) against a real engine, with the repository's `.venv`
//! (`scripts/setup-python.sh`; `WEIR_PYTHON` overrides the interpreter).

use std::process::Command;

use crate::common::{TempRepo, crate_dir, models_dir, start_engine};

#[tokio::test]
async fn stock_python_clients_work_unmodified() {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-python.sh (or set WEIR_PYTHON)",
        python.display()
    );
    let repo = TempRepo::all();
    let engine = start_engine(
        &repo,
        &[
            "--model",
            "mlp",
            "--model",
            "tiny-lm:1",
            "--model",
            "tiny-lm:2",
        ],
    )
    .await;
    let out = Command::new(&python)
        .arg(crate_dir().join("tests/python/test_clients.py"))
        .env("WEIR_HTTP", engine.http.to_string())
        .env("WEIR_GRPC", engine.grpc.to_string())
        .env("WEIR_GOLDEN", models_dir().join("golden"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(report.contains("OK"), "{report}");
}
