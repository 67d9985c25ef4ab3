//! Canary auto-rollback across replicas: one gateway rolls a failing canary
//! back and records it in etcd; a second replica, which saw none of the
//! failures, stops sending to the canary too; `weirctl rollback clear`
//! gives it its weight back on both.

use std::process::Command;
use std::time::Duration;

use weir_test_support::{Etcd, Load, Upstream, Weir, eventually};

use crate::support::{self, weir};

fn config(stable: &Upstream, canary: &Upstream) -> String {
    crate::common::canary_config(
        stable,
        canary,
        "rollback = { error_ratio = 0.1, window_ms = 10000, min_requests = 50 }",
    )
}

async fn wait_rolled_back(weir: &Weir, want: bool) {
    eventually(Duration::from_secs(20), || async {
        (crate::common::rolled_back(weir, "canary").await == Some(want)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("rolled_back never became {want}: {e}\n{}", weir.log()));
}

fn weirctl(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
        .args(["--etcd", endpoint, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_made_by_one_replica_is_followed_by_the_others() {
    let etcd = Etcd::start().await.unwrap();
    let stable = Upstream::local("stable").await.unwrap();
    let canary = Upstream::local("canary").await.unwrap();
    support::import(&etcd, &config(&stable, &canary)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = weir(&etcd.endpoint(), &dir.path().join("a.json")).await;
    let b = weir(&etcd.endpoint(), &dir.path().join("b.json")).await;

    canary.fail_share(20, 500);
    let load = Load::start(&a, 4);
    wait_rolled_back(&a, true).await;
    load.finish().await;
    assert_eq!(
        a.metric("weir_rollbacks_total{arm=\"canary\",route=\"chat\"}")
            .await
            .unwrap(),
        1.0
    );

    // b saw no failure, yet follows the record in etcd.
    wait_rolled_back(&b, true).await;
    assert_eq!(
        b.metric("weir_rollbacks_total{arm=\"canary\",route=\"chat\"}")
            .await
            .unwrap(),
        0.0,
        "b did not decide the rollback itself"
    );
    let before = canary.hits();
    let served = crate::common::split(&b, 300, 8, &[]).await;
    assert_eq!(served.get("stable"), Some(&300), "{served:?}");
    assert_eq!(canary.hits(), before);

    let list = weirctl(&etcd.endpoint(), &["rollback", "list"]);
    let records = list["rollbacks"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["route"], "chat");
    assert_eq!(records[0]["arm"], "canary");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("error ratio"),
        "{list}"
    );
    assert!(
        records[0]["by"]
            .as_str()
            .unwrap()
            .contains(&a.proxy.to_string()),
        "{list}"
    );

    // A re-import of the config keeps the record; clearing it does not.
    support::import(&etcd, &config(&stable, &canary)).await;
    assert_eq!(
        weirctl(&etcd.endpoint(), &["rollback", "list"])["rollbacks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    canary.fail_share(0, 500);
    let cleared = weirctl(&etcd.endpoint(), &["rollback", "clear", "chat", "canary"]);
    assert_eq!(cleared["cleared"], true);
    wait_rolled_back(&a, false).await;
    wait_rolled_back(&b, false).await;
    let served = crate::common::split(&b, 400, 8, &[]).await;
    assert!(
        served.get("canary").copied().unwrap_or(0) >= 40,
        "{served:?}"
    );
}
