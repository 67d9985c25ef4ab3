//! Dead backends: retried elsewhere, marked unhealthy, and the fallback arm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{split, weir_bin};
use weir_test_support::{Upstream, Weir, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_is_marked_unhealthy_and_traffic_continues() {
    let mut a = Upstream::local("v1").await.unwrap();
    let b = Upstream::local("v1").await.unwrap();
    let cfg = format!(
        r#"
{}[[pools]]
name = "p"
backends = [{{ address = "{}" }}, {{ address = "{}" }}]
health_check = {{ kind = "tcp", interval_ms = 100 }}
[[routes]]
name = "chat"
arms = [{{ name = "v1", pool = "p", weight = 1 }}]
"#,
        common::SERVER,
        a.addr,
        b.addr
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let before = split(&weir, 400, 16, &[]).await;
    assert_eq!(before.get("v1"), Some(&400));
    assert!(
        a.hits() > 100 && b.hits() > 100,
        "both backends serve: {} {}",
        a.hits(),
        b.hits()
    );

    let dead = a.addr.to_string();
    a.stop().await;
    // Every request still succeeds: connect failures retry on the other backend.
    let hits_b = b.hits();
    let during = split(&weir, 1_000, 16, &[]).await;
    assert_eq!(during.get("v1"), Some(&1_000));
    assert_eq!(b.hits() - hits_b, 1_000);

    let client = weir_test_support::client();
    eventually(Duration::from_secs(10), || {
        let req = client.get(weir.admin_url("/admin/routes")).send();
        let dead = dead.clone();
        async move {
            let v: serde_json::Value = req.await.ok()?.json().await.ok()?;
            let backends = v["pools"][0]["backends"].as_array()?.clone();
            backends
                .iter()
                .any(|x| x["address"] == dead.as_str() && x["healthy"] == false)
                .then_some(())
        }
    })
    .await
    .expect("the dead backend was never marked unhealthy");
    let healthy = weir
        .metric(&format!(
            "weir_backend_healthy{{backend=\"{dead}\",pool=\"p\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(healthy, 0.0);
    let after = split(&weir, 500, 16, &[]).await;
    assert_eq!(after.get("v1"), Some(&500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_without_backends_falls_back_to_the_fallback_arm() {
    let v1 = Upstream::local("v1").await.unwrap();
    let mut v2 = Upstream::local("v2").await.unwrap();
    let weir = Weir::start(
        weir_bin(),
        &common::config(&[("v1", &v1, 50), ("v2", &v2, 50)], ""),
    )
    .await
    .unwrap();
    v2.stop().await;
    let client = weir_test_support::client();
    for _ in 0..50 {
        let resp = client
            .get(weir.url("/"))
            .header("x-ab-group", "v2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "v1");
        // Until the health check marks v2 down, the connect retry finds no
        // other v2 backend and the fallback serves; afterwards the fallback
        // serves directly. Either way the response says so.
        assert_eq!(resp.headers()["x-weir-arm"], "v1");
        assert_eq!(resp.headers()["x-weir-fallback"], "1");
    }
}
