//! Graceful shutdown: on SIGTERM the gateway stops being ready, lets the
//! requests and streams in flight finish, then exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{config, weir_bin};
use weir_test_support::upstream::{DELAY_HEADER, SSE_HEADER};
use weir_test_support::{Upstream, Weir, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_and_streams_in_flight_finish() {
    let up = Upstream::local("v1").await.unwrap();
    let cfg = config(&[("v1", &up, 1)], "")
        .replace("grace_period_seconds = 0", "grace_period_seconds = 5");
    let mut weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();

    // Six slow requests and one long stream in flight.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let req = client.get(weir.url("/v1/x")).header(DELAY_HEADER, "1500");
        slow.spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        });
    }
    let text = "x".repeat(400);
    let stream = client
        .post(weir.url("/v1/chat/completions"))
        .header(SSE_HEADER, &text)
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    eventually(Duration::from_secs(10), || async {
        (up.received() == 7).then_some(())
    })
    .await
    .unwrap();

    weir.signal("TERM").unwrap();
    // Readiness goes away at once; what is in flight goes on.
    eventually(Duration::from_secs(5), || async {
        let ready = weir.readyz().await.map(|(s, _)| s).unwrap_or(0);
        (ready != 200).then_some(())
    })
    .await
    .unwrap();
    let body = stream.text().await.unwrap();
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "the stream was cut: {} bytes",
        body.len()
    );
    assert_eq!(body.matches("data: {").count(), 400);
    while let Some(r) = slow.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let code = weir.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(code, Some(0), "{}", weir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_grace_period_does_not_delay_the_exit() {
    let up = Upstream::local("v1").await.unwrap();
    let grace = Duration::from_secs(2);
    let cfg = config(&[("v1", &up, 1)], "")
        .replace("grace_period_seconds = 0", "grace_period_seconds = 2");
    let mut weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    // 2,000 chunks 5 ms apart: about 10 s, far past the grace period.
    let stream = client
        .post(weir.url("/v1/chat/completions"))
        .header(SSE_HEADER, "x".repeat(2_000))
        .header(weir_test_support::upstream::SSE_GAP_HEADER, "5")
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let started = std::time::Instant::now();
    weir.signal("TERM").unwrap();
    let code = weir.wait_exit(Duration::from_secs(20)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{}", weir.log());
    // The grace period is the budget (plus a little for the process to go);
    // before, Pingora waited a second grace period for the stream's task.
    assert!(
        took < grace + Duration::from_millis(1_200),
        "exit took {took:?} with a grace period of {grace:?}"
    );
    drop(stream);
}
