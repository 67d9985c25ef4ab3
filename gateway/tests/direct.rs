//! `[server] http1_engine = "direct"` (the default): plain HTTP/1.x
//! requests are served by the gateway's own loop
//! (`weir_http1_direct_total{outcome="served"}`), and a connection whose
//! next request the loop does not take (a chunked body here) goes on under
//! Pingora, answered the same. These tests pin the direct path; the rest of
//! the suite runs under both (`scripts/test` runs it again with
//! `WEIR_HTTP1_ENGINE=pingora`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::weir_bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::{Upstream, Weir};

const SERVED: &str = "weir_http1_direct_total{outcome=\"served\"}";
const HANDED_OVER: &str = "weir_http1_direct_total{outcome=\"handed_over\"}";

/// weir on the direct path, whatever `WEIR_HTTP1_ENGINE` the suite runs
/// under.
async fn start_direct(up: &Upstream) -> anyhow::Result<Weir> {
    Weir::start_with_env(
        weir_bin(),
        &direct_config(up),
        &[("WEIR_HTTP1_ENGINE", "direct")],
    )
    .await
}

fn direct_config(up: &Upstream) -> String {
    common::config(&[("v1", up, 1)], "").replacen(
        "[server]\n",
        "[server]\nhttp1_engine = \"direct\"\n",
        1,
    )
}

/// One answer (status, fields, `Content-Length` body) read off `conn`,
/// with `buf` holding what was read past it.
async fn answer(conn: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(head) = resp.parse(buf).unwrap() {
            let status = resp.code.unwrap();
            let fields: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let length: usize = fields
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .expect("a Content-Length answer");
            while buf.len() < head + length {
                let mut chunk = [0u8; 4096];
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed within the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head..head + length].to_vec();
            buf.drain(..head + length);
            return (status, fields, body);
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_requests_take_the_direct_path_and_a_chunked_body_goes_on_under_pingora() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    let mut buf = Vec::new();

    conn.write_all(b"GET /v1/models/x?q=1 HTTP/1.1\r\nhost: t\r\nx-request-id: first\r\n\r\n")
        .await
        .unwrap();
    let (status, fields, body) = answer(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(field(&fields, "x-weir-route"), Some("chat"));
    assert_eq!(field(&fields, "x-request-id"), Some("first"));
    assert_eq!(field(&fields, "x-upstream"), Some("v1"));
    let seen = json(&body);
    assert_eq!(seen["path"], "/v1/models/x");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["request_id"], "first");
    assert_eq!(weir.metric(SERVED).await.unwrap(), 1.0);
    assert_eq!(weir.metric(HANDED_OVER).await.unwrap(), 0.0);

    // A chunked body: Pingora serves it, on the same connection.
    conn.write_all(b"POST /v1/x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (status, fields, body) = answer(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(field(&fields, "x-weir-route"), Some("chat"));
    assert_eq!(json(&body)["body_bytes"], 5);
    assert_eq!(weir.metric(HANDED_OVER).await.unwrap(), 1.0);

    // The connection stays usable, under Pingora.
    conn.write_all(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = answer(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/again");
    assert_eq!(weir.metric(SERVED).await.unwrap(), 1.0);
    assert_eq!(up.received(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nhost: t\r\n\r\nHEAD /c HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (_, _, first) = answer(&mut conn, &mut buf).await;
    let (_, _, second) = answer(&mut conn, &mut buf).await;
    assert_eq!(json(&first)["path"], "/a");
    assert_eq!(json(&second)["path"], "/b");
    // HEAD: the fields of the answer, no body.
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(buf.len(), end + 4, "a HEAD answer has no body");
            break;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(weir.metric(SERVED).await.unwrap(), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_is_answered_and_its_connection_closed() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"path\":\"/old\""), "{text}");
    assert_eq!(weir.metric(SERVED).await.unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_relayed_chunk_by_chunk() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/stream", weir.proxy))
        .header(weir_test_support::upstream::SSE_HEADER, "hello there")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    let said: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            json(d.as_bytes())["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(said, "hello there");
    assert_eq!(weir.metric(SERVED).await.unwrap(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_to_an_http_1_0_client_ends_with_the_connection() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    let req = format!(
        "GET /v1/stream HTTP/1.0\r\n{}: hi\r\n\r\n",
        weir_test_support::upstream::SSE_HEADER
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    conn.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.starts_with("data: "), "not chunk-framed: {body:?}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body:?}");
    assert_eq!(weir.metric(SERVED).await.unwrap(), 1.0);
}

#[test]
fn an_unknown_engine_is_refused() {
    let config = format!(
        "{}{}",
        common::SERVER.replacen("[server]\n", "[server]\nhttp1_engine = \"fast\"\n", 1),
        "[[pools]]\nname = \"p\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n\n\
         [[routes]]\nname = \"r\"\nprefix = \"/\"\narms = [{ name = \"a\", pool = \"p\", weight = 1 }]\n",
    );
    common::assert_check_refuses(&config, &["http1_engine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_body_is_read_whole_and_relayed_on_the_direct_path() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    let echo = weir_test_support::upstream::ECHO_HEADER;
    // The head, then the body in two later writes.
    let head = format!("POST /v1/x HTTP/1.1\r\nhost: t\r\n{echo}: 1\r\ncontent-length: 11\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    conn.write_all(b" world").await.unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = answer(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    let seen = json(&body);
    assert_eq!(seen["body"], "hello world");
    assert_eq!(seen["content_length"], "11");

    // Pipelined: a body, then a request without one, in one write; the
    // body's end is where the next request begins.
    let two = format!(
        "PUT /v1/y HTTP/1.1\r\nhost: t\r\n{echo}: 1\r\ncontent-length: 3\r\n\r\nabcGET /v1/z HTTP/1.1\r\nhost: t\r\n\r\n"
    );
    conn.write_all(two.as_bytes()).await.unwrap();
    let (_, _, first) = answer(&mut conn, &mut buf).await;
    let (_, _, second) = answer(&mut conn, &mut buf).await;
    assert_eq!(json(&first)["body"], "abc");
    assert_eq!(json(&first)["method"], "PUT");
    assert_eq!(json(&second)["path"], "/v1/z");
    assert_eq!(json(&second)["body_bytes"], 0);
    assert_eq!(weir.metric(SERVED).await.unwrap(), 3.0);
    assert_eq!(weir.metric(HANDED_OVER).await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_quiet_stream_stops_it_at_once() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = start_direct(&up).await.unwrap();
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    // The upstream waits a minute before its first event.
    let req = format!(
        "GET /v1/stream HTTP/1.1\r\nhost: t\r\n{}: hi\r\n{}: 60000\r\n\r\n",
        weir_test_support::upstream::SSE_HEADER,
        weir_test_support::upstream::SSE_GAP_HEADER,
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let wait = std::time::Duration::from_secs(10);
    weir_test_support::eventually(wait, || async { (up.received() == 1).then_some(()) })
        .await
        .unwrap();
    drop(conn);
    // The upstream's stream is dropped well before its first event.
    weir_test_support::eventually(wait, || async { (up.streams() == (0, 1)).then_some(()) })
        .await
        .unwrap_or_else(|e| panic!("{e}: streams {:?}\n{}", up.streams(), weir.log()));
}
