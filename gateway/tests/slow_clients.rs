//! Clients that send little or nothing cannot hold the proxy port: a short
//! HTTP/1.0 request is answered, connections that send nothing, part of the
//! HTTP/2 preface or part of a header are closed within the header timeout,
//! a client trickling its header a byte at a time is cut off, and the memory
//! they took comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::weir_bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::{Upstream, Weir, eventually};

/// Connections opened at once by the flood.
const FLOOD: usize = 1_000;
/// Long enough for any bounded wait; a connection still open after this is
/// held forever.
const GIVE_UP: Duration = Duration::from_secs(20);

async fn gateway(up: &Upstream) -> Weir {
    let cfg = common::config(&[("v1", up, 1)], "").replacen(
        "grace_period_seconds = 0\n",
        "grace_period_seconds = 0\nheader_read_timeout_ms = 500\n",
        1,
    );
    Weir::start(weir_bin(), &cfg).await.unwrap()
}

/// Reads until the server closes the connection; `None` if it never does.
async fn read_to_close(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let read = tokio::time::timeout(GIVE_UP, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http10_request_is_answered() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    // 18 bytes: fewer than the 24 of the HTTP/2 preface.
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut conn).await.expect("never answered");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "{text}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_connections_are_closed_and_memory_comes_back() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    let client = weir_test_support::client();
    for _ in 0..50 {
        let resp = client.get(weir.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let rss_before = weir.rss_bytes().expect("rss");

    let openers: [&[u8]; 4] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"GET /x HTTP/1.1\r\nhost: t\r\n",
        b"G",
    ];
    let mut conns = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
        conn.write_all(openers[i % openers.len()]).await.unwrap();
        conns.push(conn);
    }
    // While they hang on, the gateway serves others.
    let resp = client.get(weir.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let rss_flood = weir.rss_bytes().unwrap_or(0);

    let waits = conns
        .into_iter()
        .map(|mut conn| tokio::spawn(async move { read_to_close(&mut conn).await.is_some() }));
    let closed = futures::future::join_all(waits).await;
    let open = closed.iter().filter(|c| !matches!(c, Ok(true))).count();
    assert_eq!(open, 0, "{open} of {FLOOD} connections were never closed");

    // Nothing of theirs stays: RSS returns near where it was.
    let limit = rss_before + 24 * 1024 * 1024;
    let settled = eventually(GIVE_UP, || {
        let rss = weir.rss_bytes().unwrap_or(u64::MAX);
        async move { (rss <= limit).then_some(rss) }
    })
    .await;
    assert!(
        settled.is_ok(),
        "RSS stayed at {:?} (before the flood: {rss_before})",
        weir.rss_bytes()
    );
    eprintln!(
        "RSS before {rss_before} B, with {FLOOD} connections open {rss_flood} B, after {:?} B",
        settled.ok()
    );
    let resp = client.get(weir.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_a_byte_at_a_time_is_cut_off() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = gateway(&up).await;
    let mut conn = TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nx-slow: ")
        .await
        .unwrap();
    // One byte every 100 ms: each read finishes well within the header
    // timeout, the header never does. The gateway must close the connection.
    let trickle = async {
        for _ in 0..(GIVE_UP.as_millis() / 100) {
            if conn.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(trickle.await, "a trickled header held the connection");
    assert_eq!(up.received(), 0);
}
