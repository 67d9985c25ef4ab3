//! Logs and forwarding headers through the real binary: `[server]
//! log_format = "json"` writes one JSON object per line (the access log's
//! fields included), `X-Forwarded-For`/`-Proto` go upstream and a client
//! cannot spoof them unless it is a trusted proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{SERVER, weir_bin};
use serde_json::{Value, json};
use weir_test_support::upstream::ECHO_HEADER;
use weir_test_support::{Upstream, Weir, client, eventually};

async fn gateway(upstream: &Upstream, server: &str) -> Weir {
    gateway_env(upstream, server, &[]).await
}

async fn gateway_env(upstream: &Upstream, server: &str, env: &[(&str, &str)]) -> Weir {
    let config = format!(
        "{SERVER}{server}\n[[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/v1\"\nmodels = [\"chat\"]\n\
         arms = [{{ name = \"a\", pool = \"p\", weight = 1, model = \"vendor/model-a\" }}]\n",
        upstream.addr
    );
    Weir::start_with_env(weir_bin(), &config, env)
        .await
        .unwrap()
}

/// What the upstream received as X-Forwarded-For and -Proto for a request
/// that carried `xff`.
async fn forwarded(weir: &Weir, xff: Option<&str>) -> (Value, Value) {
    let mut req = client()
        .post(weir.url("/v1/chat/completions"))
        .header(ECHO_HEADER, "1")
        .json(&json!({ "model": "chat", "messages": [] }));
    if let Some(v) = xff {
        req = req
            .header("x-forwarded-for", v)
            .header("x-forwarded-proto", "https");
    }
    let echo: Value = req.send().await.unwrap().json().await.unwrap();
    (
        echo["headers"]["x-forwarded-for"].clone(),
        echo["headers"]["x-forwarded-proto"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_spoof_forwarding_headers_but_a_trusted_proxy_extends_them() {
    let upstream = Upstream::local("a").await.unwrap();
    let weir = gateway(&upstream, "").await;
    assert_eq!(
        forwarded(&weir, None).await,
        (json!("127.0.0.1"), json!("http"))
    );
    assert_eq!(
        forwarded(&weir, Some("6.6.6.6")).await,
        (json!("127.0.0.1"), json!("http")),
        "an untrusted client's claim must be replaced"
    );

    let trusting = gateway(&upstream, "trusted_proxies = [\"127.0.0.0/8\"]\n").await;
    assert_eq!(
        forwarded(&trusting, Some("198.51.100.7")).await,
        (json!("198.51.100.7, 127.0.0.1"), json!("https"))
    );

    // Off: the gateway neither adds nor rewrites them.
    let off = gateway(&upstream, "forwarded_headers = false\n").await;
    assert_eq!(forwarded(&off, None).await, (Value::Null, Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_access_fields() {
    let upstream = Upstream::local("a").await.unwrap();
    let weir = gateway_env(
        &upstream,
        "log_format = \"json\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
        &[("WEIR_LOG", "info")],
    )
    .await;
    let resp = client()
        .post(weir.url("/v1/chat/completions"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("user-agent", "logs-test/1.0")
        .header("x-request-id", "req-logs-1")
        .json(&json!({ "model": "chat", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let line = eventually(Duration::from_secs(10), || async {
        weir.log()
            .lines()
            .find(|l| l.contains("req-logs-1"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|e| panic!("no access line: {e}\n{}", weir.log()));
    // Every line of the log is JSON, the startup lines included.
    for l in weir.log().lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "weir::access", "{v}");
    assert_eq!(v["client"], "198.51.100.7", "{v}");
    assert_eq!(
        v["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
    assert_eq!(v["user_agent"], "logs-test/1.0");
    assert_eq!(v["route"], "chat");
    assert_eq!(v["arm"], "a");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["status"], 200);
    assert_eq!(v["outcome"], "ok");
    assert!(v["bytes_in"].as_u64().unwrap() > 0, "{v}");
    assert!(v["bytes_out"].as_u64().unwrap() > 0, "{v}");
    assert!(v["host"].as_str().unwrap().starts_with("127.0.0.1"), "{v}");
    let total = v["duration_ms"].as_f64().unwrap();
    let upstream_ms = v["upstream_ms"].as_f64().unwrap();
    assert!(upstream_ms > 0.0 && upstream_ms <= total, "{v}");
    // Durations have at most three decimals.
    let text = v["duration_ms"].to_string();
    assert!(
        text.split('.').nth(1).is_none_or(|d| d.len() <= 3),
        "{text}"
    );
}
