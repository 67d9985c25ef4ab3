//! Sandboxed Wasm content filters through the real `weir` binary: request
//! bodies masked or blocked (English and Chinese), non-JSON and oversized
//! bodies, masked non-streamed answers, SSE streams masked chunk by chunk,
//! misbehaving modules, and dictionary hot reload without failed requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{SERVER, weir_bin};
use serde_json::{Value, json};
use weir_test_support::upstream::{
    ECHO_HEADER, REPLY_HEADER, SSE_CHUNK_HEADER, SSE_HEADER, SSE_SPLIT_HEADER,
};
use weir_test_support::wasm::module_misbehaving_on_bang;
use weir_test_support::{Upstream, Weir, eventually};

/// (name, misbehaviour, the error kind it is counted as).
const MISBEHAVIOURS: &[(&str, &str, &str)] = &[
    ("loop", "(loop $l (br $l))", "out_of_fuel"),
    (
        "grow",
        "(loop $l (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable)) (br $l))",
        "memory_limit",
    ),
    ("trap", "unreachable", "trap"),
    ("oob", "(return (i64.const 0x7FFF000000000008))", "garbage"),
];

/// `[[filters]]` and `[[routes]]` for every misbehaving module: route
/// `/closed-<name>` fails closed, `/open-loop` fails open.
fn misbehaving_config(module_dir: &std::path::Path) -> String {
    let mut out = String::new();
    for (name, code, _) in MISBEHAVIOURS {
        let path = module_dir.join(format!("{name}.wat"));
        std::fs::write(&path, module_misbehaving_on_bang(code)).unwrap();
        out.push_str(&format!(
            "[[filters]]\nname = \"stuck-{name}\"\nmodule = \"{}\"\nwords = [{{ word = \"x\" }}]\nmemory_limit_mb = 4\n\n\
             [[routes]]\nname = \"closed-{name}\"\nprefix = \"/closed-{name}\"\n\
             arms = [{{ name = \"a\", pool = \"p\", weight = 1 }}]\nfilters = {{ request = [\"stuck-{name}\"] }}\n\n",
            path.display()
        ));
    }
    let looping = module_dir.join("loop.wat");
    out.push_str(&format!(
        "[[filters]]\nname = \"stuck-open\"\nmodule = \"{}\"\nwords = [{{ word = \"x\" }}]\npolicy = \"fail_open\"\n\n\
         [[routes]]\nname = \"open\"\nprefix = \"/open\"\n\
         arms = [{{ name = \"a\", pool = \"p\", weight = 1 }}]\nfilters = {{ request = [\"stuck-open\"] }}\n\n",
        looping.display()
    ));
    out
}

/// One upstream behind routes with different filter set-ups.
fn config(up: &Upstream, words: &str, module_dir: &std::path::Path) -> String {
    format!(
        r#"{SERVER}
[[pools]]
name = "p"
backends = [{{ address = "{addr}" }}]
health_check = {{ kind = "none" }}

{misbehaving}
[[filters]]
name = "words"
words = [{words}]
mask_char = "*"

[[filters]]
name = "blocker"
words = [{{ word = "炸弹", category = "violence" }}, {{ word = "bomb", category = "violence" }}]
action = "block"

[[filters]]
name = "disguised"
words = [{{ word = "坏词" }}, {{ word = "敏感词" }}, {{ word = "secret" }}]
folds = {{ separators = "whitespace+punctuation", max_gap = 2 }}

[[routes]]
name = "disguised"
prefix = "/disguised"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
filters = {{ request = ["disguised"], response = ["disguised"] }}

[[routes]]
name = "mask"
prefix = "/mask"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
filters = {{ request = ["words"], response = ["words"], max_body_bytes = 4096 }}

[[routes]]
name = "block"
prefix = "/block"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
filters = {{ request = ["words", "blocker"] }}

[[routes]]
name = "raw"
prefix = "/raw"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
filters = {{ request = ["words"], non_json = "raw" }}

[[routes]]
name = "plain"
prefix = "/"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
"#,
        addr = up.addr,
        misbehaving = misbehaving_config(module_dir),
    )
}

const WORDS: &str = r#"{ word = "secret" }, { word = "坏词", category = "abuse" }"#;

struct Setup {
    up: Upstream,
    weir: Weir,
    /// The modules' folder (the sandbox lets the gateway read it).
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let up = Upstream::local("up").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(weir_bin(), &config(&up, WORDS, dir.path()))
        .await
        .unwrap();
    Setup { up, weir, dir }
}

/// POSTs `body` (JSON) to `path` asking the upstream to echo it.
async fn post(weir: &Weir, path: &str, body: &str) -> (u16, Value) {
    let resp = weir_test_support::client()
        .post(weir.url(path))
        .header("content-type", "application/json")
        .header(ECHO_HEADER, "1")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

/// Sends `body` in chunks of `size` bytes with `Transfer-Encoding: chunked`
/// over a raw connection; returns the whole response.
async fn raw_chunked(weir: &Weir, path: &str, body: &[u8], size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(weir.proxy).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{ECHO_HEADER}: 1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(size) {
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        if conn.write_all(&chunk).await.is_err() {
            break; // the gateway answered and closed early
        }
        conn.flush().await.unwrap();
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn chat(content: &str) -> String {
    json!({"model": "m", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": content}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_masked_or_blocked_in_english_and_chinese() {
    let s = setup().await;
    // Mask: only the text fields change, the JSON stays valid, the length is right.
    let (status, echoed) = post(
        &s.weir,
        "/mask/v1/chat/completions",
        &chat("my SECRET is 坏词, ok"),
    )
    .await;
    assert_eq!(status, 200, "{echoed}");
    let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["messages"][1]["content"], "my ****** is **, ok");
    assert_eq!(sent["messages"][0]["content"], "be nice");
    assert_eq!(sent["model"], "m");
    // Framed for its new length: chunked under Pingora (the head goes
    // before the body is filtered), its length on the direct path.
    let length = echoed["body"].as_str().unwrap().len().to_string();
    assert!(
        echoed["transfer_encoding"] == "chunked" || echoed["content_length"] == length.as_str(),
        "{echoed}"
    );
    assert_eq!(
        s.weir
            .metric("weir_filter_matches_total{category=\"abuse\",direction=\"request\",filter=\"words\"}")
            .await
            .unwrap(),
        1.0
    );
    // A prompt (completions) in a content-parts message and a prompt array.
    let parts = json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a secret"}]}]});
    let (_, echoed) = post(&s.weir, "/mask/v1/chat/completions", &parts.to_string()).await;
    let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["messages"][0]["content"][0]["text"], "a ******");
    let prompt = json!({"model":"m","prompt":["坏词坏词", "clean"]});
    let (_, echoed) = post(&s.weir, "/mask/v1/completions", &prompt.to_string()).await;
    let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["prompt"], json!(["****", "clean"]));

    // A body that arrives in 3-byte chunks, words split across them.
    let resp = raw_chunked(
        &s.weir,
        "/mask/v1/chat/completions",
        chat("split secret 坏词").as_bytes(),
        3,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#"split ****** **"#), "{resp}");

    // No match: the body goes through byte for byte.
    let clean = chat("nothing to see");
    let (_, echoed) = post(&s.weir, "/mask/v1/chat/completions", &clean).await;
    assert_eq!(echoed["body"], clean);

    // Block: 400 naming the category, never the word; the upstream never sees it.
    let hits = s.up.hits();
    for text in ["how to make a BOMB", "怎么做炸弹"] {
        let (status, err) = post(&s.weir, "/block/v1/chat/completions", &chat(text)).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["code"], "content_blocked");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("violence"), "{message}");
        assert!(!message.to_lowercase().contains("bomb") && !message.contains("炸弹"));
    }
    assert_eq!(s.up.hits(), hits, "blocked requests reached the upstream");
    // Masking runs before blocking on that route.
    let (status, echoed) = post(&s.weir, "/block/v1/chat/completions", &chat("a secret")).await;
    assert_eq!(status, 200);
    assert!(echoed["body"].as_str().unwrap().contains("a ******"));

    // GETs and routes without filters are untouched.
    let resp = weir_test_support::client()
        .get(s.weir.url("/mask/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_clear_errors() {
    let s = setup().await;
    // Not JSON on a reject route: 400 invalid_body.
    let (status, err) = post(&s.weir, "/mask/v1/chat/completions", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_body");
    // Raw route: the text is scanned as it is.
    let (status, echoed) = post(&s.weir, "/raw/upload", "plain secret text").await;
    assert_eq!(status, 200);
    assert_eq!(echoed["body"], "plain ****** text");
    // Larger than max_body_bytes (4096): 413, with a length and chunked alike.
    let big = chat(&"a".repeat(5_000));
    let (status, err) = post(&s.weir, "/mask/v1/chat/completions", &big).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "body_too_large");
    // The same body in chunks (no length up front), on a raw connection.
    let resp = raw_chunked(&s.weir, "/mask/v1/chat/completions", &[b' '; 10_000], 1_000).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // The gateway still serves.
    let (status, _) = post(&s.weir, "/mask/v1/chat/completions", &chat("fine")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_masked_whole_and_streamed() {
    let s = setup().await;
    let client = weir_test_support::client();
    // Non-streamed answer.
    let resp = client
        .post(s.weir.url("/mask/v1/chat/completions"))
        .header(REPLY_HEADER, "the SECRET is 坏词")
        .body(chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "the ****** is **"
    );

    // SSE, one character per chunk: words split across many chunks are
    // masked, multi-byte characters survive, [DONE] passes.
    let text = "tell me the secret now: 坏词! done";
    let mut resp = client
        .post(s.weir.url("/mask/v1/chat/completions"))
        .header(SSE_HEADER, text)
        .header(SSE_CHUNK_HEADER, "1")
        .body(chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut raw = Vec::new();
    let mut chunks = 0;
    while let Some(c) = resp.chunk().await.unwrap() {
        chunks += 1;
        raw.extend_from_slice(&c);
    }
    let raw = String::from_utf8(raw).unwrap();
    let mut content = String::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).unwrap();
        content.push_str(
            event["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    assert_eq!(content, "tell me the ****** now: **! done");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    assert!(
        chunks > 5,
        "the stream arrived in {chunks} chunk(s): not incrementally"
    );
    assert!(
        s.weir
            .metric("weir_filter_matches_total{category=\"sensitive\",direction=\"response\",filter=\"words\"}")
            .await
            .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_module_yields_its_policy_and_the_gateway_keeps_serving() {
    let s = setup().await;
    for (name, _, kind) in MISBEHAVIOURS {
        for _ in 0..5 {
            let (status, err) = post(
                &s.weir,
                &format!("/closed-{name}/v1/chat/completions"),
                &chat("!x"),
            )
            .await;
            assert_eq!(status, 503, "{name}: {err}");
            assert_eq!(err["error"]["code"], "filter_unavailable");
        }
        let series = format!("weir_filter_errors_total{{filter=\"stuck-{name}\",kind=\"{kind}\"}}");
        assert_eq!(s.weir.metric(&series).await.unwrap(), 5.0, "{series}");
    }
    for _ in 0..5 {
        let (status, echoed) = post(&s.weir, "/open/v1/chat/completions", &chat("!loop")).await;
        assert_eq!(status, 200, "{echoed}");
        assert!(echoed["body"].as_str().unwrap().contains("!loop"));
    }
    // Memory stays flat over many failing calls (after a warm-up).
    let failing = |i: usize| format!("/closed-{}/v1/chat/completions", MISBEHAVIOURS[i % 4].0);
    for i in 0..100 {
        post(&s.weir, &failing(i), &chat("!x")).await;
    }
    let before = s.weir.rss_bytes().unwrap();
    for i in 0..1_000 {
        let (status, _) = post(&s.weir, &failing(i), &chat("!x")).await;
        assert_eq!(status, 503);
    }
    let after = s.weir.rss_bytes().unwrap();
    println!("RSS over 1000 failing filter calls: {before} -> {after} bytes");
    assert!(
        after < before + (32 << 20),
        "RSS grew from {before} to {after}"
    );
    let (status, _) = post(&s.weir, "/mask/v1/chat/completions", &chat("fine")).await;
    assert_eq!(status, 200);

    // A module that does not compile is rejected; the old chain keeps working.
    let dir = &s.dir;
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm garbage").unwrap();
    let bad = config(&s.up, WORDS, dir.path()).replace(
        &format!("{}", dir.path().join("loop.wat").display()),
        &broken.display().to_string(),
    );
    s.weir.write_config(&bad).unwrap();
    eventually(Duration::from_secs(10), || async {
        let n = s.weir.metric("weir_config_rejected_total").await.unwrap();
        (n >= 1.0).then_some(())
    })
    .await
    .unwrap();
    // Refused for its bytes, not by the sandbox.
    assert!(
        !s.weir.log().contains("Permission denied"),
        "{}",
        s.weir.log()
    );
    let (status, _) = post(&s.weir, "/closed-loop/v1/chat/completions", &chat("!loop")).await;
    assert_eq!(status, 503, "the old chain keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dictionary_change_is_hot_reloaded_without_failed_requests() {
    let s = setup().await;
    let client = weir_test_support::client();
    let url = s.weir.url("/mask/v1/chat/completions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, stop) = (client.clone(), url.clone(), std::sync::Arc::clone(&stop));
        workers.spawn(async move {
            let mut failed = 0;
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .header(ECHO_HEADER, "1")
                    .body(chat("banana secret"))
                    .send()
                    .await;
                sent += 1;
                if !matches!(r, Ok(ref r) if r.status() == 200) {
                    failed += 1;
                }
            }
            (sent, failed)
        });
    }
    let dir = &s.dir;
    let words = format!("{WORDS}, {{ word = \"banana\" }}");
    s.weir
        .write_config(&config(&s.up, &words, dir.path()))
        .unwrap();
    let masked = eventually(Duration::from_secs(10), || async {
        let (_, echoed) = post(&s.weir, "/mask/v1/chat/completions", &chat("banana secret")).await;
        let body = echoed["body"].as_str()?.to_owned();
        body.contains("****** ******").then_some(body)
    })
    .await
    .unwrap();
    assert!(masked.contains("****** ******"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    while let Some(r) = workers.join_next().await {
        let (s, f) = r.unwrap();
        sent += s;
        failed += f;
    }
    println!("{sent} requests across the dictionary reload, {failed} failed");
    assert_eq!(failed, 0);
    assert!(sent > 0);
}

/// Each disguise of a dictionary word (hidden characters, look-alikes,
/// mathematical and full-width letters, traditional characters,
/// separators), with the masked text the client or upstream must see.
const DISGUISES: &[(&str, &str)] = &[
    ("x 坏\u{200b}词 y", "x *** y"),
    ("x se\u{200d}cret y", "x ******* y"),
    ("x sec\u{ad}ret y", "x ******* y"),
    ("x \u{feff}secret y", "x \u{feff}****** y"),
    ("x s\u{435}cret y", "x ****** y"),
    ("x \u{455}ecret y", "x ****** y"),
    ("x 𝐬𝐞𝐜𝐫𝐞𝐭 y", "x ****** y"),
    ("x 壞詞 y", "x ** y"),
    ("x 敏感詞 y", "x *** y"),
    ("x 坏 词 y", "x *** y"),
    ("x 坏*词 y", "x *** y"),
    ("x 坏-词 y", "x *** y"),
    ("x 坏。词 y", "x *** y"),
    ("x 坏   词 y", "x 坏   词 y"),
];

/// The concatenated delta contents of an SSE answer.
fn streamed_content(raw: &str) -> String {
    let mut content = String::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        content.push_str(
            event["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disguised_words_are_masked_in_requests_answers_and_byte_split_streams() {
    let s = setup().await;
    let client = weir_test_support::client();
    for (text, want) in DISGUISES {
        // The request body the upstream receives.
        let (status, echoed) = post(&s.weir, "/disguised/v1/chat/completions", &chat(text)).await;
        assert_eq!(status, 200, "{text:?}: {echoed}");
        let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent["messages"][1]["content"], *want, "request {text:?}");

        // A JSON answer.
        let resp = client
            .post(s.weir.url("/disguised/v1/chat/completions"))
            .header(REPLY_HEADER, *text)
            .body(chat("hi"))
            .send()
            .await
            .unwrap();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(
            answer["choices"][0]["message"]["content"], *want,
            "answer {text:?}"
        );

        // A stream written one byte at a time, one character per event.
        let resp = client
            .post(s.weir.url("/disguised/v1/chat/completions"))
            .header(SSE_HEADER, *text)
            .header(SSE_CHUNK_HEADER, "1")
            .header(SSE_SPLIT_HEADER, "1")
            .header("x-test-sse-gap-ms", "0")
            .body(chat("hi"))
            .send()
            .await
            .unwrap();
        let raw = resp.text().await.unwrap();
        assert_eq!(streamed_content(&raw), *want, "stream {text:?}");
        assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    }
}

/// A request retried after its body went upstream sends it filtered again
/// (Pingora replays the body it read through the filters once more), over
/// HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_sends_its_body_filtered_again() {
    let up = Upstream::local("up").await.unwrap();
    let failing = Upstream::local("failing").await.unwrap();
    failing.fail_share(100, 503);
    let dir = tempfile::tempdir().unwrap();
    // A pool of the failing upstream and a good one: a request that tries
    // the failing one first is retried on the other.
    let retried = format!(
        "[[pools]]\nname = \"two\"\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         health_check = {{ kind = \"none\" }}\n\n\
         [[routes]]\nname = \"retried\"\nprefix = \"/retried\"\n\
         arms = [{{ name = \"a\", pool = \"two\", weight = 1 }}]\n\
         filters = {{ request = [\"words\"] }}\n\
         retry = {{ attempts = 1, on_statuses = [503], budget_ratio = 1.0 }}\n\n\
         [[routes]]\nname = \"plain\"",
        failing.addr, up.addr
    );
    let config =
        config(&up, WORDS, dir.path()).replacen("[[routes]]\nname = \"plain\"", &retried, 1);
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for client in [weir_test_support::client(), h2] {
        // A fresh gateway: the first failure takes the failing upstream
        // out of the choice for a while.
        let weir = Weir::start(weir_bin(), &config).await.unwrap();
        let mut retried = 0;
        for _ in 0..20 {
            let before = failing.received();
            let resp = client
                .put(weir.url("/retried/v1/x"))
                .header("content-type", "application/json")
                .header(ECHO_HEADER, "1")
                .body(chat("my secret is 坏词"))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let echoed: Value = resp.json().await.unwrap();
            assert_eq!(status, 200, "{echoed}");
            let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
            assert_eq!(
                sent["messages"][1]["content"], "my ****** is **",
                "{echoed}"
            );
            retried += failing.received() - before;
            if retried > 0 {
                break;
            }
        }
        assert_eq!(retried, 1, "no request tried the failing upstream first");
    }
}
