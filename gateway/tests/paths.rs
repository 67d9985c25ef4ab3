//! Routes match normalised paths and hosts: no spelling of a guarded path
//! reaches an open route, the upstream gets the normalised path, and paths
//! and hosts that could be read two ways are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::weir_bin;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_test_support::{Upstream, Weir};

/// Sends `GET target` with `host` as it is (no client-side normalising)
/// and returns the status and body.
async fn raw_get(weir: &Weir, target: &str, host: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(weir.proxy).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_paths_and_hosts_cannot_be_spelled_around() {
    let admin = Upstream::local("admin").await.unwrap();
    let open = Upstream::local("open").await.unwrap();
    let api = Upstream::local("api").await.unwrap();
    let key = hex::encode(Sha256::digest(b"acme-key"));
    let cfg = format!(
        "{}[[pools]]\nname = \"admin\"\nbackends = [{{ address = \"{}\" }}]\n\
         [[pools]]\nname = \"open\"\nbackends = [{{ address = \"{}\" }}]\n\
         [[pools]]\nname = \"api\"\nbackends = [{{ address = \"{}\" }}]\n\
         [[tenants]]\nname = \"acme\"\napi_keys = [\"{key}\"]\n\
         [[routes]]\nname = \"api\"\nhost = \"api.example.com\"\nprefix = \"/\"\narms = [{{ name = \"a\", pool = \"api\", weight = 1 }}]\n\
         [[routes]]\nname = \"admin\"\nprefix = \"/admin/\"\nauth = \"required\"\narms = [{{ name = \"a\", pool = \"admin\", weight = 1 }}]\n\
         [[routes]]\nname = \"open\"\nprefix = \"/\"\narms = [{{ name = \"a\", pool = \"open\", weight = 1 }}]\n",
        common::SERVER,
        admin.addr,
        open.addr,
        api.addr
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();

    // Every spelling of /admin/x is the guarded route (401 without a key)
    // or refused (400); none reaches the open route.
    for target in [
        "/admin/x",
        "/x/../admin/x",
        "/x/%2e%2e/admin/x",
        "/%61dmin/x",
        "//admin/x",
        "/./admin/x",
        "/admin%2Fx",
        "/admin;/x",
        "/admin\\x",
        "/admin%5cx",
    ] {
        let (status, body) = raw_get(&weir, target, "t").await;
        assert!(status == 401 || status == 400, "{target}: {status} {body}");
    }
    assert_eq!(
        open.hits(),
        0,
        "a spelling of /admin/ reached the open route"
    );
    assert_eq!(admin.hits(), 0);

    // The upstream receives the normalised path (the query as it came).
    let (status, body) = raw_get(&weir, "/v1/./models//x/../y?a=%2F", "t").await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/v1/models/y", "{echo}");

    // Host routes see the host lower-cased, without port or trailing dot.
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "api.example.com:8080",
    ] {
        let (status, body) = raw_get(&weir, "/v1/x", host).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    assert_eq!(api.hits(), 4);
    // A host no host name looks like is refused; none skips the host route
    // (a trailing tab is white space the HTTP parser may trim: then the host
    // is the host route's).
    let before = api.hits();
    for host in [
        "api.example.com\t",
        "api\t.example.com",
        "api example.com",
        "a@api.example.com",
    ] {
        let (status, body) = raw_get(&weir, "/v1/x", host).await;
        let upstream = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["upstream"].as_str().map(str::to_owned));
        assert!(
            status == 400 || (status == 200 && upstream.as_deref() == Some("api")),
            "{host:?}: {status} {body}"
        );
    }
    assert!(api.hits() - before <= 1, "only a trimmed tab may pass");
    assert_eq!(open.hits(), 1);
}
