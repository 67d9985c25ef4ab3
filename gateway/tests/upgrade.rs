//! Graceful upgrade: a new `weir --upgrade` takes the proxy's listening
//! socket over from the running one (SIGQUIT), which finishes what it has
//! and exits; a load running throughout sees no failed request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{config, weir_bin};
use weir_test_support::{Load, Upstream, Weir, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_request() {
    let up = Upstream::local("v1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    // Both processes serve the same port: one the OS chose for this test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(&[("v1", &up, 1)], "")
        .replace(
            "proxy = \"127.0.0.1:0\"",
            &format!("proxy = \"127.0.0.1:{port}\""),
        )
        .replace(
            "grace_period_seconds = 0\n",
            &format!(
                "grace_period_seconds = 2\nupgrade_sock = \"{}\"\n",
                sock.display()
            ),
        );
    let mut old = Weir::start(weir_bin(), &cfg).await.unwrap();
    let load = Load::start(&old, 8);
    load.advance(300).await.unwrap();

    // The new process waits on the upgrade socket for the old one's listener.
    let new = tokio::spawn({
        let cfg = cfg.clone();
        async move { Weir::spawn(weir_bin(), &cfg, &["--upgrade"]).await }
    });
    eventually(Duration::from_secs(10), || {
        let exists = sock.exists();
        async move { exists.then_some(()) }
    })
    .await
    .unwrap();
    old.signal("QUIT").unwrap();
    let new = new.await.unwrap().unwrap();
    new.wait_ready().await.unwrap();
    assert_eq!(new.proxy, old.proxy);

    // The old process drains and exits; the new one serves on.
    let code = old.wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(code, Some(0), "{}", old.log());
    load.advance(1_000).await.unwrap();
    let report = load.finish().await;
    eprintln!(
        "{} requests across the upgrade, {} failed",
        report.sent,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{:?}",
        &report.failures[..report.failures.len().min(10)]
    );
    assert!(
        new.metric("weir_requests_total{arm=\"v1\",route=\"chat\",status=\"200\"}")
            .await
            .unwrap()
            >= 1_000.0
    );
}
