//! Arm selection through the real `weir` binary and real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, split, weir_bin};
use futures::StreamExt;
use weir_test_support::{Upstream, Weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_holds_within_two_points_over_10k_requests() {
    let (v1, v2, weir) = common::two_arms(90, 10).await;
    let counts = split(&weir, 10_000, 64, &[]).await;
    let v2_share = counts.get("v2").copied().unwrap_or(0) as f64 / 100.0;
    println!("split over 10k: {counts:?} (v2 {v2_share:.2}%)");
    assert!(
        (v2_share - 10.0).abs() <= 2.0,
        "v2 got {v2_share}%: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 10_000);
    assert_eq!(v1.hits() + v2.hits(), 10_000);

    // The admin listener reports the same traffic.
    let mut served = 0.0;
    for arm in ["v1", "v2"] {
        let n = weir
            .metric(&format!(
                "weir_requests_total{{arm=\"{arm}\",route=\"chat\",status=\"200\"}}"
            ))
            .await
            .unwrap();
        assert_eq!(n as usize, counts[arm], "{arm}");
        let timed = weir
            .metric(&format!(
                "weir_request_duration_seconds_count{{arm=\"{arm}\",route=\"chat\"}}"
            ))
            .await
            .unwrap();
        assert_eq!(timed, n);
        served += n;
    }
    assert_eq!(served, 10_000.0);
    let client = weir_test_support::client();
    let health = client.get(weir.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let routes: serde_json::Value = client
        .get(weir.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes["generation"], 1);
    assert_eq!(routes["routes"][0]["arms"][1]["weight"], 10);
    assert_eq!(routes["routes"][0]["fallback"], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_header_forces_an_arm_and_weight_zero_is_header_only() {
    let v1 = Upstream::local("v1").await.unwrap();
    let v2 = Upstream::local("v2").await.unwrap();
    let dark = Upstream::local("dark").await.unwrap();
    let cfg = config(&[("v1", &v1, 90), ("v2", &v2, 10), ("dark", &dark, 0)], "");
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();

    let forced = split(&weir, 1_000, 32, &[("x-ab-group", "v2")]).await;
    assert_eq!(forced.get("v2"), Some(&1_000), "{forced:?}");

    let dark_forced = split(
        &weir,
        200,
        32,
        &[("x-ab-group", "dark"), ("x-user-id", "u1")],
    )
    .await;
    assert_eq!(dark_forced.get("dark"), Some(&200), "{dark_forced:?}");

    // Without the header, weight 0 is never chosen: by weight or by sticky key.
    let weighted = split(&weir, 3_000, 32, &[]).await;
    assert!(!weighted.contains_key("dark"), "{weighted:?}");
    let client = weir_test_support::client();
    let sticky = futures::stream::iter(0..2_000)
        .map(|u| {
            let req = client
                .get(weir.url("/"))
                .header("x-user-id", format!("user-{u}"))
                .send();
            async move {
                req.await.unwrap().headers()["x-weir-arm"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(sticky.iter().all(|a| a != "dark"));

    // An unknown header value falls back to the normal rules.
    let unknown = split(&weir, 500, 32, &[("x-ab-group", "nope")]).await;
    assert!(!unknown.contains_key("dark"));
    assert_eq!(unknown.values().sum::<usize>(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_never_switch_arms() {
    let (_v1, _v2, weir) = common::two_arms(50, 50).await;
    let client = weir_test_support::client();
    let pairs = futures::stream::iter((0..500).flat_map(|u| (0..8).map(move |_| u)))
        .map(|u| {
            let req = client
                .get(weir.url("/v1/completions"))
                .header("x-user-id", format!("user-{u}"))
                .send();
            async move {
                let resp = req.await.unwrap();
                assert_eq!(resp.status(), 200);
                (u, resp.headers()["x-weir-arm"].to_str().unwrap().to_owned())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut by_user = std::collections::HashMap::<u32, String>::new();
    for (u, arm) in pairs {
        let first = by_user.entry(u).or_insert_with(|| arm.clone());
        assert_eq!(*first, arm, "user-{u} switched arms");
    }
    let on_v2 = by_user.values().filter(|a| *a == "v2").count();
    assert!(
        (150..=350).contains(&on_v2),
        "50/50 sticky split put {on_v2} of 500 users on v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_propagated_or_generated() {
    let v1 = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&[("v1", &v1, 1)], ""))
        .await
        .unwrap();
    let client = weir_test_support::client();

    let resp = client
        .get(weir.url("/x"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(resp.headers()["x-weir-route"], "chat");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], "abc-123", "upstream did not see the id");

    let resp = client.get(weir.url("/x")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], generated.as_str());
}
