//! The OpenTelemetry GenAI metrics through the real binary: token usage,
//! request duration, time to first token and per output token, labelled
//! with operation, request and response model, route, arm and tenant, and
//! model labels bounded by the config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{SERVER, weir_bin};
use serde_json::json;
use std::time::Duration;
use weir_test_support::upstream::{REPLY_HEADER, SSE_HEADER, USAGE_HEADER};

use weir_test_support::{Upstream, Weir, client, eventually, sample_with as sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_are_measured_in_the_genai_conventions_with_bounded_labels() {
    let upstream = Upstream::local("a").await.unwrap();
    let config = format!(
        "{SERVER}[[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/v1\"\n\
         arms = [{{ name = \"a\", pool = \"p\", weight = 1, model = \"vendor/model-a\" }}]\n",
        upstream.addr
    );
    let weir = Weir::start(weir_bin(), &config).await.unwrap();
    let ask = |model: &str, header: (&'static str, &'static str)| {
        client()
            .post(weir.url("/v1/chat/completions"))
            .header(header.0, header.1)
            .header(USAGE_HEADER, "1")
            .json(&json!({ "model": model, "messages": [] }))
            .send()
    };
    // A JSON answer with usage (1 prompt token, 5 completion tokens), the
    // arm's own model named.
    let resp = ask("vendor/model-a", (REPLY_HEADER, "hello"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    // A stream, asked under a made-up name (the arm renames it).
    let resp = ask("made-up-by-a-client", (SSE_HEADER, "abcd"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    // Not an OpenAI call: no GenAI series.
    client()
        .get(weir.url("/healthz-upstream"))
        .send()
        .await
        .unwrap();

    // The gateway counts a request once it has answered it: wait for both.
    let text = eventually(Duration::from_secs(10), || async {
        let text = weir.scrape().await.ok()?;
        (genai_requests(&text) >= 2.0).then_some(text)
    })
    .await
    .unwrap();
    let known = [
        "gen_ai_operation_name=\"chat\"",
        "gen_ai_request_model=\"vendor/model-a\"",
        "gen_ai_response_model=\"vendor/model-a\"",
        "weir_route=\"chat\"",
        "weir_arm=\"a\"",
        "weir_tenant=\"\"",
    ];
    let mut output = known.to_vec();
    output.push("gen_ai_token_type=\"output\"");
    assert_eq!(
        sample(&text, "gen_ai_client_token_usage_sum", &output),
        Some(5.0),
        "{text}"
    );
    let mut input = known.to_vec();
    input.push("gen_ai_token_type=\"input\"");
    assert_eq!(
        sample(&text, "gen_ai_client_token_usage_sum", &input),
        Some(1.0)
    );
    let mut ok = known.to_vec();
    ok.push("error_type=\"\"");
    assert_eq!(
        sample(&text, "gen_ai_server_request_duration_seconds_count", &ok),
        Some(1.0)
    );
    // The made-up name is folded into `other`; the stream has its first
    // token and per-token times.
    let folded = [
        "gen_ai_request_model=\"other\"",
        "gen_ai_response_model=\"vendor/model-a\"",
    ];
    assert_eq!(
        sample(
            &text,
            "gen_ai_server_time_to_first_token_seconds_count",
            &folded
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gen_ai_server_time_per_output_token_seconds_count",
            &folded
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("made-up-by-a-client"),
        "a client-made name became a label"
    );
    assert_eq!(
        genai_requests(&text),
        2.0,
        "only the two OpenAI calls: {text}"
    );
}

/// OpenAI requests the GenAI duration histogram counted.
fn genai_requests(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("gen_ai_server_request_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
