//! Routing by model: the OpenAI body's `model` (read ahead, then replayed to
//! the upstream intact) and the Open Inference Protocol path's model name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{SERVER, weir_bin};
use weir_test_support::{Upstream, Weir};

/// `lm` serves tiny-lm (and its versions) from upstream `lm`, `mlp` serves
/// mlp; with `general`, everything else goes to upstream `general`.
async fn gateway(general: bool) -> (Upstream, Upstream, Upstream, Weir) {
    let lm = Upstream::local("lm").await.unwrap();
    let mlp = Upstream::local("mlp").await.unwrap();
    let other = Upstream::local("general").await.unwrap();
    let mut text = String::from(SERVER);
    for (name, up) in [("lm", &lm), ("mlp", &mlp), ("general", &other)] {
        text.push_str(&format!(
            "[[pools]]\nname = \"{name}\"\nbackends = [{{ address = \"{}\" }}]\n\n",
            up.addr
        ));
    }
    text.push_str(
        "[[routes]]\nname = \"lm\"\nprefix = \"/v\"\nmodels = [\"tiny-lm\"]\narms = [{ name = \"a\", pool = \"lm\", weight = 1 }]\n\n\
         [[routes]]\nname = \"mlp\"\nprefix = \"/v\"\nmodels = [\"mlp\"]\narms = [{ name = \"a\", pool = \"mlp\", weight = 1 }]\n\n",
    );
    if general {
        text.push_str(
            "[[routes]]\nname = \"general\"\nprefix = \"/v\"\narms = [{ name = \"a\", pool = \"general\", weight = 1 }]\n",
        );
    }
    let weir = Weir::start(weir_bin(), &text).await.unwrap();
    (lm, mlp, other, weir)
}

async fn post(
    client: &reqwest::Client,
    weir: &Weir,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let resp = client
        .post(weir.url(path))
        .header("content-type", content_type)
        .header("x-test-echo", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_model_chooses_the_route_and_reaches_the_upstream_intact() {
    let (_lm, _mlp, _other, weir) = gateway(true).await;
    for client in [
        weir_test_support::client(),
        reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap(),
    ] {
        for (model, upstream) in [
            ("tiny-lm", "lm"),
            ("tiny-lm:2", "lm"),
            ("mlp", "mlp"),
            ("tiny-lmx", "general"),
        ] {
            let body = format!(r#"{{"prompt":"{}","model":"{model}"}}"#, "p".repeat(20_000));
            let (status, v) = post(
                &client,
                &weir,
                "/v1/completions",
                "application/json",
                body.clone(),
            )
            .await;
            assert_eq!(status, 200, "{model}: {v}");
            assert_eq!(v["upstream"], upstream, "{model}");
            assert_eq!(
                v["body"],
                body.as_str(),
                "{model}: the body arrives unchanged"
            );
        }
        // A streamed (chunked) body is read the same way.
        let chunks = futures::stream::iter(
            [r#"{"model":"#, r#""mlp","x":"#, "1}"]
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c.as_bytes()))),
        );
        let (status, v) = post(
            &client,
            &weir,
            "/v1/completions",
            "application/json",
            reqwest::Body::wrap_stream(chunks),
        )
        .await;
        assert_eq!((status, v["upstream"].as_str()), (200, Some("mlp")), "{v}");
        assert_eq!(v["body"], r#"{"model":"mlp","x":1}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oip_path_names_the_model_and_other_bodies_are_not_read() {
    let (_lm, _mlp, _other, weir) = gateway(true).await;
    let client = weir_test_support::client();
    let (status, v) = post(
        &client,
        &weir,
        "/v2/models/mlp/infer",
        "application/octet-stream",
        vec![7u8; 100_000],
    )
    .await;
    assert_eq!((status, v["upstream"].as_str()), (200, Some("mlp")));
    assert_eq!(v["body_bytes"], 100_000);
    let (status, v) = post(
        &client,
        &weir,
        "/v2/models/tiny-lm/versions/2/infer",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!((status, v["upstream"].as_str()), (200, Some("lm")));
    // Not JSON: not read ahead, so no model: the general route, any size.
    let (status, v) = post(
        &client,
        &weir,
        "/v1/upload",
        "application/octet-stream",
        vec![1u8; 300_000],
    )
    .await;
    assert_eq!((status, v["upstream"].as_str()), (200, Some("general")));
    assert_eq!(v["body_bytes"], 300_000);
    // JSON without a model, or not parseable: the general route.
    for body in [r#"{"prompt":"x"}"#, "{not json", r#"{"model":7}"#] {
        let (status, v) = post(&client, &weir, "/v1/completions", "application/json", body).await;
        assert_eq!(
            (status, v["upstream"].as_str()),
            (200, Some("general")),
            "{body}"
        );
        assert_eq!(v["body"], body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_oversized_bodies_get_clear_errors() {
    let (lm, mlp, _other, weir) = gateway(false).await;
    let client = weir_test_support::client();
    let (status, v) = post(
        &client,
        &weir,
        "/v1/completions",
        "application/json",
        r#"{"model":"gpt-9"}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(
        v["error"]["message"],
        "no route serves model \"gpt-9\" at /v1/completions"
    );
    let (status, v) = post(
        &client,
        &weir,
        "/v1/completions",
        "application/json",
        r#"{"prompt":"x"}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("names no model"),
        "{v}"
    );
    // Over the 64 KiB read-ahead: 413, declared or streamed.
    let big = format!(r#"{{"model":"mlp","prompt":"{}"}}"#, "p".repeat(70_000));
    let (status, v) = post(
        &client,
        &weir,
        "/v1/completions",
        "application/json",
        big.clone(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    let stream = futures::stream::iter(
        big.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let (status, _) = post(
        &client,
        &weir,
        "/v1/completions",
        "application/json",
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(lm.received() + mlp.received(), 0);
}
