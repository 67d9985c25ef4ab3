//! Tracing: the W3C `traceparent` is continued or started on the way
//! upstream, and with `[server.tracing]` each request's spans reach a real
//! OTLP/gRPC collector in the caller's trace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{SERVER, config, weir_bin};
use weir_test_support::{OtlpSink, Upstream, Weir, eventually};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn traceparent_seen(weir: &Weir, sent: Option<&str>) -> String {
    let mut req = weir_test_support::client().get(weir.url("/x"));
    if let Some(t) = sent {
        req = req.header("traceparent", t);
    }
    let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    v["traceparent"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&[("v1", &up, 1)], ""))
        .await
        .unwrap();
    let continued = traceparent_seen(&weir, Some(CALLER)).await;
    assert_eq!(continued.len(), 55, "{continued}");
    assert!(
        continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{continued}"
    );
    assert!(continued.ends_with("-01"));
    assert_ne!(&continued[36..52], "00f067aa0ba902b7");
    for sent in [None, Some("not-a-trace")] {
        let started = traceparent_seen(&weir, sent).await;
        assert_eq!(started.len(), 55, "{started}");
        // Nothing is recorded without an exporter: not sampled.
        assert!(
            started.starts_with("00-") && started.ends_with("-00"),
            "{started}"
        );
        assert!(!started.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    }
}

fn traced_config(up: &Upstream, sink: &OtlpSink, ratio: f64) -> String {
    config(&[("v1", up, 1)], "").replacen(
        SERVER,
        &format!(
            "{SERVER}[server.tracing]\notlp_endpoint = \"http://{}\"\nservice_name = \"weir-test\"\nsample_ratio = {ratio:?}\n\n",
            sink.addr
        ),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_in_the_callers_trace() {
    let sink = OtlpSink::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &traced_config(&up, &sink, 1.0))
        .await
        .unwrap();
    let upstream_saw = traceparent_seen(&weir, Some(CALLER)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let spans = eventually(Duration::from_secs(20), || async {
        let spans: Vec<_> = sink
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        (spans.len() >= 3).then_some(spans)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", sink.spans(), weir.log()));
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no {n}: {spans:#?}"))
    };
    let request = by_name("weir.request");
    let route = by_name("weir.route");
    let upstream = by_name("weir.upstream");
    // request (server) under the caller; route and upstream under request.
    assert_eq!((request.kind, route.kind, upstream.kind), (2, 1, 3));
    assert_eq!(request.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(route.parent_span_id, request.span_id);
    assert_eq!(upstream.parent_span_id, request.span_id);
    // The upstream's parent is the gateway's upstream span, sampled.
    assert_eq!(upstream_saw, format!("00-{trace}-{}-01", upstream.span_id));
    assert_eq!(request.attributes["weir.route"], "chat");
    assert_eq!(request.attributes["weir.arm"], "v1");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(request.attributes["url.path"], "/x");
    assert_eq!(request.attributes["server.address"], up.addr.to_string());
    assert_eq!(request.service, "weir-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_callers_flag() {
    let sink = OtlpSink::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &traced_config(&up, &sink, 0.0))
        .await
        .unwrap();
    // A new trace at ratio 0 is not recorded (flag 00); a caller's sampled
    // trace still is.
    let new = traceparent_seen(&weir, None).await;
    assert!(new.ends_with("-00"), "{new}");
    let sampled = traceparent_seen(&weir, Some(CALLER)).await;
    assert!(sampled.ends_with("-01"), "{sampled}");
    let spans = eventually(Duration::from_secs(20), || async {
        let spans = sink.spans();
        (spans.len() >= 3).then_some(spans)
    })
    .await
    .unwrap();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"),
        "{spans:#?}"
    );
    assert!(!spans.iter().any(|s| new.contains(&s.trace_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    // The collector's port is closed: spans are dropped, requests served.
    let sink = OtlpSink::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    let text = traced_config(&up, &sink, 1.0);
    drop(sink);
    let weir = Weir::start(weir_bin(), &text).await.unwrap();
    let client = weir_test_support::client();
    for _ in 0..50 {
        let resp = client.get(weir.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_call_carries_the_genai_span_attributes() {
    use weir_test_support::upstream::{REPLY_HEADER, USAGE_HEADER};
    let sink = OtlpSink::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &traced_config(&up, &sink, 1.0))
        .await
        .unwrap();
    let caller = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = weir_test_support::client()
        .post(weir.url("/v1/chat/completions"))
        .header("traceparent", caller)
        .header(REPLY_HEADER, "hello")
        .header(USAGE_HEADER, "1")
        .json(&serde_json::json!({ "model": "m", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let request = eventually(Duration::from_secs(20), || async {
        sink.spans()
            .into_iter()
            .find(|s| s.trace_id == "5bf92f3577b34da6a3ce929d0e0e4736" && s.name == "weir.request")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#?}\n{}", sink.spans(), weir.log()));
    assert_eq!(
        request.attributes["gen_ai.operation.name"], "chat",
        "{request:#?}"
    );
    assert_eq!(request.attributes["gen_ai.usage.input_tokens"], "1");
    assert_eq!(request.attributes["gen_ai.usage.output_tokens"], "5");
    assert_eq!(
        request.attributes["gen_ai.response.finish_reasons"], "stop",
        "{request:#?}"
    );
}

/// The engine's spans join the gateway's trace: a streamed completion
/// through `weir` to a real `weir-engine`, both exporting to one collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_span_is_a_child_of_the_gateways_upstream_span() {
    use weir_test_support::Engine;
    let sink = OtlpSink::start().await.unwrap();
    let endpoint = format!("http://{}", sink.addr);
    let binary = Engine::binary_beside(weir_bin()).unwrap();
    let engine = Engine::launch(
        &binary,
        &Engine::shipped_repository(),
        &["--model", "tiny-lm", "--otlp-endpoint", &endpoint],
    )
    .await
    .unwrap();
    let cfg = format!(
        "{SERVER}[server.tracing]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"weir-test\"\n\n\
         [[pools]]\nname = \"e\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"lm\"\nmodels = [\"tiny-lm\"]\narms = [{{ name = \"v1\", pool = \"e\", weight = 1 }}]\n",
        engine.http
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let resp = weir_test_support::client()
        .post(weir.url("/v1/completions"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({
            "model": "tiny-lm", "prompt": "ab", "max_tokens": 4, "stream": true,
            "temperature": 0, "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    let spans = eventually(Duration::from_secs(20), || async {
        let spans: Vec<_> = sink
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let engine_done = spans.iter().any(|s| s.service == "weir-engine");
        let gateway_done = spans.iter().any(|s| s.name == "weir.request");
        (engine_done && gateway_done).then_some(spans)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:#?}\ngateway:\n{}\nengine:\n{}",
            sink.spans(),
            weir.log(),
            engine.log()
        )
    });
    let one = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} {name}: {spans:#?}"))
            .clone()
    };
    let upstream = one("weir-test", "weir.upstream");
    let request = one("weir-test", "weir.request");
    let served = one("weir-engine", "text_completion tiny-lm");
    assert_eq!(served.parent_span_id, upstream.span_id, "{spans:#?}");
    assert_eq!(served.kind, 2, "a server span");
    let a = &served.attributes;
    assert_eq!(a["gen_ai.operation.name"], "text_completion");
    assert_eq!(a["gen_ai.request.model"], "tiny-lm");
    assert!(a["gen_ai.response.model"].starts_with("tiny-lm:"), "{a:?}");
    assert_eq!(a["gen_ai.usage.output_tokens"], "4", "{a:?}");
    assert_eq!(a["gen_ai.usage.input_tokens"], "2", "{a:?}");
    assert_eq!(a["gen_ai.response.finish_reasons"], "length", "{a:?}");
    assert_eq!(a["http.response.status_code"], "200");
    // The gateway read the same output and finish reason from the stream
    // (a chunk per token: the stream carries no usage, as the client asked
    // for none).
    let g = &request.attributes;
    assert_eq!(g["gen_ai.usage.output_tokens"], "4", "{g:?}");
    assert_eq!(g["gen_ai.response.finish_reasons"], "length", "{g:?}");
}
