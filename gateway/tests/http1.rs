//! HTTP/1.1 on the wire, written by hand: pipelined requests are all
//! answered, in order; a body over the route's `max_body_bytes` with
//! `Expect: 100-continue` is refused with 413 (before any `100 Continue`
//! when its length is declared, after it when the body is chunked).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::weir_bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::{Upstream, Weir};

/// Long enough for any answer; a read still waiting after this never ends.
const GIVE_UP: Duration = Duration::from_secs(20);

async fn gateway(up: &Upstream) -> Weir {
    let cfg = common::config(&[("v1", up, 1)], "max_body_bytes = 1024\n");
    Weir::start(weir_bin(), &cfg).await.unwrap()
}

/// Reads until `done` says the bytes so far are enough, or the connection
/// closes; panics after [`GIVE_UP`].
async fn read_until(conn: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    let read = tokio::time::timeout(GIVE_UP, async {
        loop {
            if done(&String::from_utf8_lossy(&all)) {
                return;
            }
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&all).into_owned();
    assert!(
        read.is_ok(),
        "no complete answer within {GIVE_UP:?}: {text:?}"
    );
    text
}

/// The statuses of the answers in `text`, in order (an answer's status line
/// may follow the previous answer's body on the same line).
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    // Three requests in one write: two GETs and a POST with a body, the
    // last one asking to close.
    conn.write_all(
        b"GET /first HTTP/1.1\r\nhost: t\r\nx-request-id: one\r\n\r\n\
          GET /second HTTP/1.1\r\nhost: t\r\nx-request-id: two\r\n\r\n\
          POST /third HTTP/1.1\r\nhost: t\r\nx-request-id: three\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    let text = read_until(&mut conn, |_| false).await;
    assert_eq!(statuses(&text), ["200", "200", "200"], "{text}");
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("x-request-id: "))
        .map(str::trim_end)
        .collect();
    assert_eq!(ids, ["one", "two", "three"], "{text}");
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_100_continue() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(
        b"POST /v1/chat HTTP/1.1\r\nhost: t\r\ncontent-length: 4096\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The body is never sent: the answer must come from the header alone.
    let text = read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_after_100_continue_gets_413() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(
        b"POST /v1/chat HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
    // 2 KiB in 512-byte chunks, over the route's 1 KiB.
    let chunk = format!("200\r\n{}\r\n", "a".repeat(512));
    for _ in 0..4 {
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let text = read_until(&mut conn, |t| t.contains("\r\n\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("body_too_large"), "{text}");
}
