//! The stock clients through the real gateway: `tests/python/test_clients.py`
//! runs the openai SDK and tritonclient (HTTP and gRPC) against a `weir` in
//! front of two real `weir-engine`s (v1 serves tiny-lm:1 and mlp, v2 serves
//! tiny-lm:2), and a real gRPC client against a second `weir` whose routes
//! fail on purpose (no route, no backend, no credentials, rate limit). The
//! first `weir` also has a TLS listener (a certificate made here with
//! `openssl`): ALPN, gRPC and the openai SDK over TLS.
//! The Python comes from the repository's `.venv` (`scripts/setup-python.sh`;
//! `WEIR_PYTHON` overrides it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{SERVER, weir_bin};
use sha2::{Digest, Sha256};
use weir_test_support::{Engine, Weir};

/// The key of the errors gateway's tenant.
const KEY: &str = "grpc-test-key";

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

fn pools(v1: &Engine, v2: &Engine) -> String {
    let mut s = String::new();
    for (name, e) in [("v1", v1), ("v2", v2)] {
        s.push_str(&format!(
            "[[pools]]\nname = \"{name}-http\"\nbackends = [{{ address = \"{}\" }}]\n\
             health_check = {{ kind = \"http\", path = \"/v2/health/ready\", interval_ms = 100 }}\n\n\
             [[pools]]\nname = \"{name}-grpc\"\nprotocol = \"h2c\"\nbackends = [{{ address = \"{}\" }}]\n\
             health_check = {{ kind = \"tcp\", interval_ms = 100 }}\n\n",
            e.http, e.grpc
        ));
    }
    s
}

/// HTTP and gRPC split 80/20 over the two engines; `mlp` (OIP path) and
/// `tiny-lm:2` (OpenAI body) routed by model to the engine that has it.
fn main_config(v1: &Engine, v2: &Engine, tls: &std::path::Path) -> String {
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    format!(
        r#"{SERVER}[server.tls]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"

{pools}
[[routes]]
name = "chat"
sticky_header = "x-user-id"
fallback = "v1"
arms = [{{ name = "v1", pool = "v1-http", weight = 80 }}, {{ name = "v2", pool = "v2-http", weight = 20 }}]

[[routes]]
name = "mlp"
models = ["mlp"]
arms = [{{ name = "v1", pool = "v1-http", weight = 1 }}]

[[routes]]
name = "pinned-v2"
models = ["tiny-lm:2"]
arms = [{{ name = "v2", pool = "v2-http", weight = 1 }}]

[[routes]]
name = "oip-grpc"
grpc = "inference.GRPCInferenceService"
sticky_header = "x-user-id"
fallback = "v1"
arms = [{{ name = "v1", pool = "v1-grpc", weight = 80 }}, {{ name = "v2", pool = "v2-grpc", weight = 20 }}]
"#,
        pools = pools(v1, v2),
        cert = cert.display(),
        key = key.display(),
    )
}

/// Only two gRPC methods are routed: `ModelInfer` needs a key and allows
/// one call per second, `ModelMetadata` goes to a pool with no live backend.
fn errors_config(v1: &Engine, dead: std::net::SocketAddr) -> String {
    let digest = hex::encode(Sha256::digest(KEY.as_bytes()));
    format!(
        r#"{SERVER}
[[pools]]
name = "live"
protocol = "h2c"
backends = [{{ address = "{live}" }}]

[[pools]]
name = "dead"
protocol = "h2c"
backends = [{{ address = "{dead}" }}]
health_check = {{ kind = "tcp", interval_ms = 100, unhealthy_threshold = 1 }}

[[tenants]]
name = "team"
api_keys = ["sha256:{digest}"]
requests_per_second = 1
burst = 1

[[routes]]
name = "infer"
grpc = "inference.GRPCInferenceService/ModelInfer"
auth = "required"
arms = [{{ name = "a", pool = "live", weight = 1 }}]

[[routes]]
name = "metadata"
grpc = "inference.GRPCInferenceService/ModelMetadata"
arms = [{{ name = "a", pool = "dead", weight = 1 }}]
"#,
        live = v1.grpc,
    )
}

/// A gateway whose only upstream is the main gateway's TLS listener,
/// reached by name (`localhost`): gRPC over an `h2` pool (TLS + ALPN), the
/// OpenAI API over an `http1` pool with TLS, both verified with `ca`.
fn front_config(tls: std::net::SocketAddr, ca: &std::path::Path) -> String {
    format!(
        r#"{SERVER}
[[pools]]
name = "tls-grpc"
protocol = "h2"
backends = [{{ address = "localhost:{port}" }}]
tls = {{ ca_file = "{ca}" }}

[[pools]]
name = "tls-http"
protocol = "http1"
backends = [{{ address = "localhost:{port}" }}]
tls = {{ ca_file = "{ca}" }}

[[routes]]
name = "grpc"
grpc = "inference.GRPCInferenceService"
arms = [{{ name = "main", pool = "tls-grpc", weight = 1 }}]

[[routes]]
name = "http"
arms = [{{ name = "main", pool = "tls-http", weight = 1 }}]
"#,
        port = tls.port(),
        ca = ca.display(),
    )
}

/// A certificate authority (`ca.pem`) and a server certificate it signed
/// for 127.0.0.1 and `localhost` (`cert.pem`, `key.pem`) in `dir`. (A
/// self-signed certificate would do for Python's client, not for the
/// gateway's: webpki refuses a CA certificate as a server's.)
fn self_signed(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (scripts/deps.sh installs it)");
        assert!(status.success(), "openssl {args:?} failed");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=weir test CA",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_work_through_the_gateway() {
    let python = python();
    let engine = Engine::binary_beside(weir_bin()).unwrap();
    let v1 = Engine::start(&engine, &["tiny-lm:1", "mlp"]).await.unwrap();
    let v2 = Engine::start(&engine, &["tiny-lm:2"]).await.unwrap();
    let certs = tempfile::tempdir().unwrap();
    self_signed(certs.path());
    let main = Weir::start(weir_bin(), &main_config(&v1, &v2, certs.path()))
        .await
        .unwrap();
    let tls = main.tls.expect("the launch line names the TLS listener");
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let errors = Weir::start(weir_bin(), &errors_config(&v1, dead))
        .await
        .unwrap();
    let front = Weir::start(weir_bin(), &front_config(tls, &certs.path().join("ca.pem")))
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_clients.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .env("WEIR_GATEWAY", main.proxy.to_string())
            .env("WEIR_ADMIN", main.admin.to_string())
            .env("WEIR_ERRORS", errors.proxy.to_string())
            .env("WEIR_ERRORS_ADMIN", errors.admin.to_string())
            .env("WEIR_KEY", KEY)
            .env("WEIR_TLS", tls.to_string())
            .env("WEIR_FRONT", front.proxy.to_string())
            .env("WEIR_CA", certs.path().join("ca.pem"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .map(|o| (o, main, errors, front, certs))
    })
    .await
    .unwrap()
    .expect("run python");
    let (out, main, _errors, _front, _certs) = out;
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed:\n{report}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        main.log()
    );
    assert!(report.contains("OK"), "{report}");
}
