//! etcd outages: traffic carries on when etcd dies; a gateway restarted
//! while etcd is down serves its last-good cache; changes made when etcd
//! is back are applied; with neither etcd nor a cache the gateway is not ready.

use std::time::Duration;

use weir_test_support::{Etcd, Weir, eventually};

use crate::common::{SERVER, weir_bin};
use crate::support::{self, Arms, Load, put, wait_revision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_dying_under_load_changes_nothing_and_a_restart_serves_the_cache() {
    let mut etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(0, 100)).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let weir = support::weir(&etcd.endpoint(), &cache).await;
    wait_revision(&weir, imported).await;

    // Kill etcd under load: no request fails, the split stays.
    let load = Load::start(&weir, 16);
    load.advance(200).await.unwrap();
    etcd.stop();
    eventually(Duration::from_secs(15), || async {
        (weir.metric("weir_etcd_connected").await.unwrap() == 0.0).then_some(())
    })
    .await
    .unwrap();
    load.advance(2_000).await.unwrap();
    let weir_test_support::load::Report { sent, failures, .. } = load.finish().await;
    println!("{sent} requests while etcd died, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(support::v2_share(&weir, 300).await, 100.0);
    let (status, body) = weir.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("etcd unreachable"),
        "{body}"
    );

    // Restart the gateway while etcd is down: it serves the cache.
    drop(weir);
    let endpoint = etcd.endpoint();
    let args = support::weir_args(&endpoint, &cache);
    let weir = Weir::start_with(weir_bin(), SERVER, &args).await.unwrap();
    let (status, body) = weir.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "etcd-cache", "{body}");
    assert_eq!(body["revision"], imported, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("last-good cache"),
        "{body}"
    );
    assert_eq!(support::v2_share(&weir, 300).await, 100.0);
    assert!(
        weir.log().contains("serving the last-good cache"),
        "{}",
        weir.log()
    );

    // etcd comes back with changed weights: they are applied.
    etcd.resume().await.unwrap();
    let mut client = support::client(&etcd).await;
    let rev = put(&mut client, "routes/chat/weights", r#"{"v1":100,"v2":0}"#).await;
    wait_revision(&weir, rev).await;
    assert_eq!(support::v2_share(&weir, 300).await, 0.0);
    let (status, body) = weir.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "etcd", "{body}");
    assert!(body.get("detail").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_or_cache_the_gateway_is_not_ready_until_etcd_answers() {
    let mut etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(100, 0)).await;
    etcd.stop();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("never-written.json");
    let endpoint = etcd.endpoint();
    let args = support::weir_args(&endpoint, &cache);
    let weir = Weir::spawn(weir_bin(), SERVER, &args).await.unwrap();
    let body = eventually(Duration::from_secs(15), || async {
        let (status, body) = weir.readyz().await.ok()?;
        let said = body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no usable last-good cache");
        (status == 503 && said).then_some(body)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", weir.log()));
    assert_eq!(body["ready"], false);
    // A request meanwhile is answered with the gateway's own 503.
    let resp = weir_test_support::client()
        .get(weir.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_ready");

    etcd.resume().await.unwrap();
    weir.wait_ready().await.unwrap();
    wait_revision(&weir, imported).await;
    assert_eq!(support::v2_share(&weir, 200).await, 0.0);
    // The cache is written off the apply path, once a config is applied.
    eventually(Duration::from_secs(15), || async {
        cache.exists().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("no cache written: {e}\n{}", weir.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_is_not_ready_and_says_why_until_a_config_is_imported() {
    let etcd = Etcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let endpoint = etcd.endpoint();
    let args = support::weir_args(&endpoint, &cache);
    let weir = Weir::spawn(weir_bin(), SERVER, &args).await.unwrap();
    eventually(Duration::from_secs(15), || async {
        let (status, body) = weir.readyz().await.ok()?;
        let said = body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("holds no routes");
        (status == 503 && said).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", weir.log()));
    assert!(weir.metric("weir_config_rejected_total").await.unwrap() >= 1.0);

    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(100, 0)).await;
    weir.wait_ready().await.unwrap();
    wait_revision(&weir, imported).await;
    assert_eq!(support::v2_share(&weir, 100).await, 0.0);
}
