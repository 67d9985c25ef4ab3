//! Gateway-made errors are OpenAI-shaped JSON with the right status, and
//! `weir check` lists every problem of a bad file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::weir_bin;
use weir_test_support::{Upstream, Weir};

async fn error_of(resp: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = resp.status().as_u16();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    (status, ctype, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_no_backend_connect_failure_and_timeout_are_json_errors() {
    let slow = Upstream::local("slow").await.unwrap();
    // A port nothing listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        r#"
{}
[[pools]]
name = "slow"
backends = [{{ address = "{slow}" }}]

[[pools]]
name = "dead-unchecked"
backends = [{{ address = "{dead}" }}]
health_check = {{ kind = "none" }}

[[pools]]
name = "dead-checked"
backends = [{{ address = "{dead}" }}]
health_check = {{ kind = "tcp", interval_ms = 50 }}

[[routes]]
name = "slow"
prefix = "/slow"
timeouts = {{ read_ms = 200 }}
arms = [{{ name = "a", pool = "slow", weight = 1 }}]

[[routes]]
name = "refused"
prefix = "/refused"
arms = [{{ name = "a", pool = "dead-unchecked", weight = 1 }}]

[[routes]]
name = "down"
prefix = "/down"
arms = [{{ name = "a", pool = "dead-checked", weight = 1 }}]
"#,
        common::SERVER,
        slow = slow.addr
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();

    let (status, ctype, body) =
        error_of(client.get(weir.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(ctype, "application/json");
    assert_eq!(body["error"]["code"], "route_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nowhere")
    );

    let (status, _, body) = error_of(client.get(weir.url("/refused")).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_connect_failed");

    // The checked pool's only backend is marked down by the health check.
    let resp = weir_test_support::eventually(std::time::Duration::from_secs(10), || {
        let req = client.get(weir.url("/down")).send();
        async move { req.await.ok().filter(|r| r.status() == 503) }
    })
    .await
    .unwrap();
    let (_, _, body) = error_of(resp).await;
    assert_eq!(body["error"]["code"], "no_healthy_backend");

    let resp = client
        .get(weir.url("/slow"))
        .header(weir_test_support::upstream::DELAY_HEADER, "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-weir-route"], "slow");
    let (status, _, body) = error_of(resp).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");

    // The gateway is still serving normally afterwards.
    let ok = client.get(weir.url("/slow/ok")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[pools]]
name = "p"
backends = [{ address = "nope" }]
[[routes]]
name = "chat"
arms = [{ name = "v1", pool = "p", weight = -1 }, { name = "v2", pool = "engine-v3", weight = 1 }]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "3 problem(s)",
        "pools[p].backends[0].address: \"nope\" is not an IP:PORT address",
        "routes[chat].arms[v1].weight: must be >= 0",
        "routes[chat].arms[v2].pool: no pool named \"engine-v3\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[[routes]\nname = ").unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&syntax)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));

    let good = std::process::Command::new(weir_bin())
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/demo.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("3 route(s), 4 pool(s)"));
}

#[test]
fn check_refuses_a_config_without_routes() {
    let refused = "holds no routes: every request would get 404 no_route";
    common::assert_check_refuses("", &[refused]);
    common::assert_check_refuses(common::SERVER, &[refused]);
}

#[test]
fn a_missing_pool_on_a_grpc_route_is_the_only_problem_reported() {
    // Before the fix the missing pool's arm pointed at the first pool, and
    // a second problem said that "web" must speak h2c.
    let config = concat!(
        "pools = [{ name = \"web\", backends = [{ address = \"127.0.0.1:9001\" }] }]\n",
        "routes = [{ name = \"infer\", grpc = \"inference.GRPCInferenceService\", ",
        "arms = [{ name = \"a\", pool = \"engine-v3\", weight = 1 }] }]\n",
    );
    common::assert_check_refuses(
        config,
        &[
            "1 problem(s)",
            "routes[infer].arms[a].pool: no pool named \"engine-v3\"",
        ],
    );
}
