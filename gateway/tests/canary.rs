//! Canary auto-rollback with a file config: a canary that fails a fifth of
//! its requests is taken out of the split, stable serves all weighted
//! traffic, the A/B header still reaches the canary, and clearing the
//! rollback gives it its weight back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{SERVER, canary_config, weir_bin};
use weir_test_support::{Load, Upstream, Weir, eventually};

const ROLLED_BACK: &str = "weir_rollbacks_total{arm=\"canary\",route=\"chat\"}";

async fn arm_of(weir: &Weir, headers: &[(&str, &str)]) -> String {
    let mut req = weir_test_support::client().get(weir.url("/v1/chat/completions"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    resp.headers()["x-weir-arm"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_cleared_by_the_operator() {
    let stable = Upstream::local("stable").await.unwrap();
    let canary = Upstream::local("canary").await.unwrap();
    let cfg = canary_config(
        &stable,
        &canary,
        "rollback = { error_ratio = 0.1, window_ms = 10000, min_requests = 50 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();

    // Healthy: plenty of traffic on both arms, no rollback.
    let load = Load::start(&weir, 4);
    load.advance(600).await.unwrap();
    assert!(
        load.served_by("canary") >= 60,
        "{}",
        load.served_by("canary")
    );
    assert_eq!(weir.metric(ROLLED_BACK).await.unwrap(), 0.0);

    // The canary now fails one request in five.
    canary.fail_share(20, 500);
    eventually(Duration::from_secs(20), || async {
        (common::rolled_back(&weir, "canary").await == Some(true)).then_some(())
    })
    .await
    .unwrap();
    let report = load.finish().await;
    assert_eq!(weir.metric(ROLLED_BACK).await.unwrap(), 1.0);
    // The failures are the canary's own 500s until it was taken out.
    assert!(
        report.failures.iter().all(|f| f.starts_with("status 500")),
        "{:?}",
        report.failures
    );
    eprintln!(
        "{} of {} requests failed before the rollback took effect",
        report.failures.len(),
        report.sent
    );

    // Stable serves all weighted and sticky traffic; the header still
    // reaches the canary.
    let before = canary.hits();
    for i in 0..300 {
        let user = format!("user-{i}");
        assert_eq!(arm_of(&weir, &[("x-user-id", &user)]).await, "stable");
        assert_eq!(arm_of(&weir, &[]).await, "stable");
    }
    assert_eq!(canary.hits(), before);
    assert_eq!(arm_of(&weir, &[("x-ab-group", "canary")]).await, "canary");
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    let arm = &routes["routes"][0]["arms"][1];
    assert_eq!(arm["effective_weight"], 0, "{arm}");
    assert_eq!(arm["weight"], 20, "{arm}");

    // The canary is fixed; the operator clears the rollback.
    canary.fail_share(0, 500);
    let resp = weir_test_support::client()
        .delete(weir.admin_url("/admin/rollbacks/chat/canary"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["cleared"], true);
    assert_eq!(common::rolled_back(&weir, "canary").await, Some(false));
    let mut to_canary = 0;
    for _ in 0..400 {
        if arm_of(&weir, &[]).await == "canary" {
            to_canary += 1;
        }
    }
    assert!(
        (40..=130).contains(&to_canary),
        "{to_canary} of 400 to the canary"
    );
    // The old failures do not roll it back again.
    assert_eq!(common::rolled_back(&weir, "canary").await, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_on_latency_and_the_header_can_be_kept_out() {
    let stable = Upstream::local("stable").await.unwrap();
    let canary = Upstream::local("canary").await.unwrap();
    let cfg = canary_config(
        &stable,
        &canary,
        "rollback = { error_ratio = 0.0, latency_factor = 3.0, window_ms = 10000, min_requests = 20, header_reaches = false }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    // Only canary requests are slow (the header forces the arm).
    let client = weir_test_support::client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), weir.url("/v1/chat/completions"));
        tasks.spawn(async move {
            for _ in 0..40 {
                client
                    .get(&url)
                    .header("x-ab-group", "canary")
                    .header("x-test-delay-ms", "40")
                    .send()
                    .await
                    .unwrap();
                client
                    .get(&url)
                    .header("x-ab-group", "stable")
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    eventually(Duration::from_secs(20), || async {
        // Traffic keeps the check running.
        arm_of(&weir, &[("x-ab-group", "stable")]).await;
        (common::rolled_back(&weir, "canary").await == Some(true)).then_some(())
    })
    .await
    .unwrap();
    // header_reaches = false: the header no longer names the canary.
    for _ in 0..50 {
        assert_eq!(arm_of(&weir, &[("x-ab-group", "canary")]).await, "stable");
    }
}

#[test]
fn a_rollback_policy_needs_a_fallback_and_something_to_compare() {
    let cfg = format!(
        "{SERVER}[[pools]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n\
         [[routes]]\nname = \"chat\"\nrollback = {{ error_ratio = 0.0, latency_factor = 0.5, min_requests = 0 }}\n\
         arms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n"
    );
    common::assert_check_refuses(
        &cfg,
        &[
            "routes[chat].rollback: needs a fallback arm",
            "routes[chat].rollback.latency_factor: 0.5 must be 0 (off) or between 1 and 1000",
            "routes[chat].rollback: error_ratio and latency_factor are both off",
            "routes[chat].rollback.min_requests: must be at least 1",
        ],
    );
}
