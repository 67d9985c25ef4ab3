//! The stock clients through the gateway to engines serving real models
//! (SmolLM2-135M-Instruct versions 1 and 2, all-MiniLM-L6-v2; from
//! `scripts/setup-models.sh`), configured as the quickstart is: chat split
//! 90/10 with each arm renaming the model to its version, embeddings on v1.
//! `tests/python/test_real_models.py` runs the openai SDK (chat, a stream
//! with usage, embeddings, the catalogue) and tritonclient (text as BYTES
//! over HTTP and gRPC).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{SERVER, weir_bin};
use weir_test_support::{Engine, Weir};

fn config(v1: &Engine, v2: &Engine) -> String {
    format!(
        r#"{SERVER}
[[pools]]
name = "v1"
backends = [{{ address = "{v1_http}" }}]

[[pools]]
name = "v2"
backends = [{{ address = "{v2_http}" }}]

[[pools]]
name = "v1-grpc"
protocol = "h2c"
backends = [{{ address = "{v1_grpc}" }}]

[[pools]]
name = "v2-grpc"
protocol = "h2c"
backends = [{{ address = "{v2_grpc}" }}]

[[routes]]
name = "chat"
models = ["smollm2-135m-instruct"]
arms = [
  {{ name = "v1", pool = "v1", weight = 90, model = "smollm2-135m-instruct:1" }},
  {{ name = "v2", pool = "v2", weight = 10, model = "smollm2-135m-instruct:2" }},
]

[[routes]]
name = "embeddings"
models = ["all-minilm-l6-v2"]
arms = [{{ name = "v1", pool = "v1", weight = 1 }}]

[[routes]]
name = "oip-grpc"
grpc = "inference.GRPCInferenceService"
arms = [
  {{ name = "v1", pool = "v1-grpc", weight = 90 }},
  {{ name = "v2", pool = "v2-grpc", weight = 10 }},
]
"#,
        v1_http = v1.http,
        v2_http = v2.http,
        v1_grpc = v1.grpc,
        v2_grpc = v2.grpc,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_reach_real_models_through_the_gateway() {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let binary = Engine::binary_beside(weir_bin()).unwrap();
    let v1 = Engine::start_real(&binary, &["smollm2-135m-instruct:1", "all-minilm-l6-v2:1"])
        .await
        .unwrap();
    let v2 = Engine::start_real(&binary, &["smollm2-135m-instruct:2"])
        .await
        .unwrap();
    let weir = Weir::start(weir_bin(), &config(&v1, &v2)).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_real_models.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("WEIR_GATEWAY", weir.proxy.to_string())
        .env("WEIR_V1", v1.http.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{report}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        weir.log()
    );
    assert!(report.contains("OK"), "{report}");
}
