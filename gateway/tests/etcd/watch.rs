//! Weights put in etcd change the live split; deletes are applied; a burst
//! of flips under load fails no request; a compacted revision forces a
//! full resync that lands on the final state.

use std::time::Duration;

use serde_json::Value;
use weir_test_support::{Etcd, Relay, eventually};

use crate::support::{self, Arms, Load, put, wait_revision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weights_put_changes_the_live_split_and_a_delete_restores_it() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(90, 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = support::weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;
    wait_revision(&weir, imported).await;
    support::assert_v2_share(&weir, 2_000, 10.0, "v2 at 90/10").await;

    let mut client = support::client(&etcd).await;
    let rev = put(&mut client, "routes/chat/weights", r#"{"v1":10,"v2":90}"#).await;
    wait_revision(&weir, rev).await;
    support::assert_v2_share(&weir, 2_000, 90.0, "v2 after the put").await;

    // The admin view names the source and the revision.
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    assert_eq!(routes["source"]["kind"], "etcd");
    assert_eq!(routes["revision"], rev);
    assert!(
        routes["source"]["location"]
            .as_str()
            .unwrap()
            .contains(&etcd.endpoint())
    );
    assert_eq!(weir.metric("weir_etcd_connected").await.unwrap(), 1.0);
    assert!(
        weir.metric("weir_config_apply_seconds_count")
            .await
            .unwrap()
            >= 2.0
    );

    // Deleting the override goes back to the route document's 90/10.
    let rev = support::delete(&mut client, "routes/chat/weights").await;
    wait_revision(&weir, rev).await;
    let share = support::v2_share(&weir, 2_000).await;
    assert!(
        (share - 10.0).abs() <= 3.0,
        "v2 got {share}% after the delete"
    );

    // The last-good cache holds what is live.
    let cache: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cache.json")).unwrap())
            .unwrap();
    assert_eq!(cache["revision"], rev);
    assert!(cache["docs"]["routes/chat"].is_string());
    assert!(cache["docs"].get("routes/chat/weights").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_weights_ten_times_a_second_under_load_fails_no_request() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(50, 50)).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = support::weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;
    wait_revision(&weir, imported).await;

    let load = Load::start(&weir, 32);
    load.advance(200).await.unwrap();
    let mut client = support::client(&etcd).await;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = 0;
    for i in 0..100 {
        tick.tick().await;
        let w = if i % 2 == 0 {
            r#"{"v1":100,"v2":0}"#
        } else {
            r#"{"v1":0,"v2":100}"#
        };
        last = put(&mut client, "routes/chat/weights", w).await;
    }
    wait_revision(&weir, last).await;
    load.advance(200).await.unwrap();
    let weir_test_support::load::Report { sent, failures, .. } = load.finish().await;
    let applied = weir
        .metric("weir_config_reloads_total{result=\"applied\"}")
        .await
        .unwrap();
    println!(
        "{sent} requests during 100 flips, {} failed, {applied} configs applied",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The last flip (i = 99) sends everything to v2.
    let share = support::v2_share(&weir, 500).await;
    assert_eq!(share, 100.0);
    assert_eq!(
        weir.metric("weir_config_rejected_total").await.unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_forces_a_resync_that_applies_the_final_state() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(90, 10)).await;
    // The gateway reaches etcd through a relay the test can cut.
    let relay = Relay::start(etcd.client).await.unwrap();
    let endpoint = format!("http://{}", relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let weir = support::weir(&endpoint, &dir.path().join("cache.json")).await;
    wait_revision(&weir, imported).await;

    relay.cut();
    eventually(Duration::from_secs(15), || async {
        (weir.metric("weir_etcd_connected").await.unwrap() == 0.0).then_some(())
    })
    .await
    .unwrap();

    // While the gateway cannot see etcd: several changes, a delete, then a
    // compaction past all of them, so a resumed watch cannot replay them.
    let mut client = support::client(&etcd).await;
    put(&mut client, "routes/chat/weights", r#"{"v1":50,"v2":50}"#).await;
    put(&mut client, "routes/chat/weights", r#"{"v1":30,"v2":70}"#).await;
    support::delete(&mut client, "routes/chat/weights").await;
    let last = put(&mut client, "routes/chat/weights", r#"{"v1":0,"v2":100}"#).await;
    client.compact(last, None).await.unwrap();
    let resyncs = weir.metric("weir_etcd_resyncs_total").await.unwrap();

    relay.restore();
    wait_revision(&weir, last).await;
    assert_eq!(support::v2_share(&weir, 500).await, 100.0);
    assert!(
        weir.metric("weir_etcd_resyncs_total").await.unwrap() > resyncs,
        "no full resync recorded:\n{}",
        weir.log()
    );
    assert!(
        weir.log().contains("reading everything again"),
        "{}",
        weir.log()
    );

    // The watch goes on from the resync: a later put is applied normally.
    let rev = put(&mut client, "routes/chat/weights", r#"{"v1":100,"v2":0}"#).await;
    wait_revision(&weir, rev).await;
    assert_eq!(support::v2_share(&weir, 500).await, 0.0);
}
