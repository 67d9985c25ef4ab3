//! Streaming through the gateway: SSE chunks reach the client as the
//! upstream writes them, a client that goes away mid-stream cancels the
//! upstream request (HTTP/1.1 and HTTP/2), and streamed answers are measured
//! (time to first token, time per output token, tokens).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{config, weir_bin};
use futures::StreamExt;
use weir_test_support::{Upstream, Weir, eventually};

const ARM: &str = "{arm=\"v1\",route=\"chat\"}";

async fn one_arm() -> (Upstream, Weir) {
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&[("v1", &up, 1)], ""))
        .await
        .unwrap();
    (up, weir)
}

fn stream_request(
    client: &reqwest::Client,
    weir: &Weir,
    text: &str,
    gap_ms: u64,
) -> reqwest::RequestBuilder {
    client
        .post(weir.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-sse", text)
        .header("x-test-sse-gap-ms", gap_ms.to_string())
        .body(r#"{"model":"m","stream":true}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_before_the_upstream_finishes_and_are_measured() {
    let (up, weir) = one_arm().await;
    let client = weir_test_support::client();
    // Six one-character deltas 300 ms apart, then [DONE].
    let resp = stream_request(&client, &weir, "abcdef", 300)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("\"content\":\"a\""), "{first}");
    // The client holds the first delta while the upstream is still writing.
    assert_eq!(up.streams(), (0, 0));
    let mut text = first;
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    for c in ["a", "b", "c", "d", "e", "f"] {
        assert!(text.contains(&format!("\"content\":\"{c}\"")), "{text}");
    }
    assert_eq!(up.streams(), (1, 0));
    let ttft = format!("weir_time_to_first_token_seconds_count{ARM}");
    let tpot = format!("weir_time_per_output_token_seconds_count{ARM}");
    let output = "weir_tokens_total{arm=\"v1\",direction=\"output\",route=\"chat\"}";
    eventually(Duration::from_secs(10), || async {
        (weir.metric(output).await.ok()? == 6.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(weir.metric(&ttft).await.unwrap(), 1.0);
    assert_eq!(weir.metric(&tpot).await.unwrap(), 1.0);
    // Five gaps of 300 ms over five tokens after the first: the mean sits
    // in the 0.25-0.5 s bucket range, not below.
    let fast = "weir_time_per_output_token_seconds_bucket{arm=\"v1\",route=\"chat\",le=\"0.1\"}";
    assert_eq!(weir.metric(fast).await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_in_the_stream_counts_input_and_output_tokens() {
    let (_up, weir) = one_arm().await;
    let client = weir_test_support::client();
    let text = stream_request(&client, &weir, "hello", 1)
        .body(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    let series =
        |d: &str| format!("weir_tokens_total{{arm=\"v1\",direction=\"{d}\",route=\"chat\"}}");
    eventually(Duration::from_secs(10), || async {
        (weir.metric(&series("output")).await.ok()? == 5.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(weir.metric(&series("input")).await.unwrap(), 1.0);
}

async fn disconnect_cancels_upstream(client: reqwest::Client) {
    let (up, weir) = one_arm().await;
    let long = "x".repeat(200);
    let resp = stream_request(&client, &weir, &long, 100)
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(up.streams(), (0, 0));
    // The client goes away after the first chunk.
    drop(body);
    drop(client);
    eventually(Duration::from_secs(10), || async {
        (up.streams() == (0, 1)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: streams {:?}\n{}", up.streams(), weir.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_disconnects_cancels_the_upstream() {
    disconnect_cancels_upstream(weir_test_support::client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_disconnects_cancels_the_upstream() {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    disconnect_cancels_upstream(client).await;
}
