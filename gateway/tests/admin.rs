//! The admin API's CPU profile of the running gateway: behind the admin
//! token, and the memory it takes is given back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, weir_bin};
use sha2::{Digest, Sha256};
use weir_test_support::{Load, Upstream, Weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_of_the_gateway_under_load_needs_the_admin_token() {
    let up = Upstream::local("v1").await.unwrap();
    let token = hex::encode(Sha256::digest(b"admin-secret"));
    let cfg = config(&[("v1", &up, 1)], "").replace(
        "grace_period_seconds = 0\n",
        &format!("grace_period_seconds = 0\nadmin_token_sha256 = \"{token}\"\n"),
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let load = Load::start(&weir, 4);
    let client = weir_test_support::client();
    let get = |query: &str, token: Option<&str>| {
        let mut req = client.get(weir.admin_url(&format!("/debug/pprof/profile{query}")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    assert_eq!(get("?seconds=1", None).await.unwrap().status(), 401);
    assert_eq!(
        get("?seconds=0", Some("admin-secret"))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("?format=pdf", Some("admin-secret"))
            .await
            .unwrap()
            .status(),
        400
    );

    let svg = get("?seconds=1", Some("admin-secret")).await.unwrap();
    assert_eq!(svg.status(), 200);
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let svg = svg.text().await.unwrap();
    assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(300)]);

    // Samples are taken on CPU time and those that land in libc (the
    // socket calls, most of a proxy's time) are skipped, so their number
    // follows how much CPU the gateway got on a busy machine: the test asks
    // for gateway frames from a window in which the load moved, not for a
    // count (a 1-s window on a 2-core CI runner kept 9).
    let before = load.sent();
    let folded = get("?seconds=2&format=folded", Some("admin-secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let during = load.sent() - before;
    assert!(during > 0, "no request was answered while profiling");
    let samples: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(
        samples > 0,
        "no samples in 2 s while {during} requests were answered"
    );
    assert!(
        folded.contains("weir_gateway") || folded.contains("pingora"),
        "no gateway frames:\n{}",
        &folded[..folded.len().min(2000)]
    );
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_gives_back_the_memory_it_took() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&[("v1", &up, 1)], ""))
        .await
        .unwrap();
    let client = weir_test_support::client();
    // Warm up the request path first, so its buffers are in both figures.
    let load = Load::start(&weir, 1);
    load.advance(200).await.unwrap();
    let before = weir.rss_bytes().expect("rss");
    for _ in 0..2 {
        let resp = client
            .get(weir.admin_url("/debug/pprof/profile?seconds=1&format=folded"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.text().await.unwrap().is_empty(), "no samples");
    }
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The sample collector and the parsed debug information took over
    // 400 MB that stayed; what is left is the answer's own small change.
    let after = weir.rss_bytes().expect("rss");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "RSS grew by {} MB after two 1-s profiles ({} MB → {} MB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
}
