//! Gateway-made errors are OpenAI-shaped JSON with the right status, and
//! `weir check` lists every problem of a bad file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::weir_bin;
use weir_test_support::{Upstream, Weir};

async fn error_of(resp: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = resp.status().as_u16();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    (status, ctype, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_no_backend_connect_failure_and_timeout_are_json_errors() {
    let slow = Upstream::local("slow").await.unwrap();
    // A port nothing listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        r#"
{}
[[pools]]
name = "slow"
backends = [{{ address = "{slow}" }}]

[[pools]]
name = "dead-unchecked"
backends = [{{ address = "{dead}" }}]
health_check = {{ kind = "none" }}

[[pools]]
name = "dead-checked"
backends = [{{ address = "{dead}" }}]
health_check = {{ kind = "tcp", interval_ms = 50 }}

[[routes]]
name = "slow"
prefix = "/slow"
timeouts = {{ read_ms = 200 }}
arms = [{{ name = "a", pool = "slow", weight = 1 }}]

[[routes]]
name = "refused"
prefix = "/refused"
arms = [{{ name = "a", pool = "dead-unchecked", weight = 1 }}]

[[routes]]
name = "down"
prefix = "/down"
arms = [{{ name = "a", pool = "dead-checked", weight = 1 }}]
"#,
        common::SERVER,
        slow = slow.addr
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();

    let (status, ctype, body) =
        error_of(client.get(weir.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(ctype, "application/json");
    assert_eq!(body["error"]["code"], "route_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nowhere")
    );

    let (status, _, body) = error_of(client.get(weir.url("/refused")).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_connect_failed");

    // The checked pool's only backend is marked down by the health check.
    let resp = weir_test_support::eventually(std::time::Duration::from_secs(10), || {
        let req = client.get(weir.url("/down")).send();
        async move { req.await.ok().filter(|r| r.status() == 503) }
    })
    .await
    .unwrap();
    let (_, _, body) = error_of(resp).await;
    assert_eq!(body["error"]["code"], "no_healthy_backend");

    let resp = client
        .get(weir.url("/slow"))
        .header(weir_test_support::upstream::DELAY_HEADER, "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-weir-route"], "slow");
    let (status, _, body) = error_of(resp).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");

    // The gateway is still serving normally afterwards.
    let ok = client.get(weir.url("/slow/ok")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[test]
fn check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[pools]]
name = "p"
backends = [{ address = "nope" }]
[[routes]]
name = "chat"
arms = [{ name = "v1", pool = "p", weight = -1 }, { name = "v2", pool = "engine-v3", weight = 1 }]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "3 problem(s)",
        "pools[p].backends[0].address: \"nope\" is not an IP:PORT or HOST:PORT address",
        "routes[chat].arms[v1].weight: must be >= 0",
        "routes[chat].arms[v2].pool: no pool named \"engine-v3\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[[routes]\nname = ").unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&syntax)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));

    let good = std::process::Command::new(weir_bin())
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/demo.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("5 route(s), 4 pool(s)"));
}

/// An upstream that answers every request with `answer`, whatever it was.
async fn broken_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_never_name_a_backend() {
    let bad_header = broken_upstream(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n").await;
    let bad_chunk = broken_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        "{}[[pools]]\nname = \"header\"\nbackends = [{{ address = \"{bad_header}\" }}]\n\
         [[pools]]\nname = \"chunk\"\nbackends = [{{ address = \"{bad_chunk}\" }}]\n\
         [[pools]]\nname = \"dead\"\nbackends = [{{ address = \"{dead}\" }}]\n\
         [[routes]]\nname = \"header\"\nprefix = \"/header\"\narms = [{{ name = \"a\", pool = \"header\", weight = 1 }}]\n\
         [[routes]]\nname = \"chunk\"\nprefix = \"/chunk\"\narms = [{{ name = \"a\", pool = \"chunk\", weight = 1 }}]\n\
         [[routes]]\nname = \"dead\"\nprefix = \"/dead\"\narms = [{{ name = \"a\", pool = \"dead\", weight = 1 }}]\n",
        common::SERVER
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    let mut answered = 0;
    for path in ["/header", "/chunk", "/dead"] {
        let Ok(resp) = client.get(weir.url(path)).send().await else {
            continue;
        };
        let status = resp.status().as_u16();
        let Ok(body) = resp.text().await else {
            continue;
        };
        answered += 1;
        for secret in [
            bad_header.to_string(),
            bad_chunk.to_string(),
            dead.to_string(),
            "127.0.0.1".to_owned(),
            "Peer".to_owned(),
        ] {
            assert!(
                !body.contains(&secret),
                "{path}: {status} names {secret:?}: {body}"
            );
        }
    }
    assert!(answered >= 2, "the error answers were not readable");
    // The log keeps the detail for the operator.
    assert!(weir.log().contains(&dead.to_string()), "{}", weir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_port_another_process_listens_on_stops_the_start() {
    let up = Upstream::local("v1").await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = common::config(&[("v1", &up, 1)], "").replacen(
        "proxy = \"127.0.0.1:0\"",
        &format!("proxy = \"{addr}\""),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = tokio::process::Command::new(weir_bin())
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // It must give up on its own; 20 s is only the test's bound.
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("weir kept running on a taken port")
        .unwrap();
    assert!(!status.success());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stderr.contains(&format!("cannot bind {addr}")), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_counted_as_499_and_not_logged_as_an_error() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &common::config(&[("v1", &up, 1)], ""))
        .await
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(weir.proxy).await.unwrap();
    let req = format!(
        "GET /v1/x HTTP/1.1\r\nhost: t\r\n{}: 3000\r\n\r\n",
        weir_test_support::upstream::DELAY_HEADER
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    weir_test_support::eventually(std::time::Duration::from_secs(10), || async {
        (up.received() == 1).then_some(())
    })
    .await
    .unwrap();
    // The client gives up while the upstream is still working.
    drop(conn);
    let series = |status: &str| {
        format!("weir_requests_total{{arm=\"v1\",route=\"chat\",status=\"{status}\"}}")
    };
    let closed = weir_test_support::eventually(std::time::Duration::from_secs(10), || {
        let s = series("499");
        let weir = &weir;
        async move { weir.metric_sample(&s).await.filter(|v| *v >= 1.0) }
    })
    .await
    .unwrap();
    assert_eq!(closed, 1.0);
    assert_eq!(weir.metric(&series("400")).await.unwrap(), 0.0);
    let log = weir.log();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(log.contains("the client closed the connection"), "{log}");
}

#[test]
fn check_refuses_a_config_without_routes() {
    let refused = "holds no routes: every request would get 404 no_route";
    common::assert_check_refuses("", &[refused]);
    common::assert_check_refuses(common::SERVER, &[refused]);
}

#[test]
fn a_missing_pool_on_a_grpc_route_is_the_only_problem_reported() {
    // Before the fix the missing pool's arm pointed at the first pool, and
    // a second problem said that "web" must speak h2c.
    let config = concat!(
        "pools = [{ name = \"web\", backends = [{ address = \"127.0.0.1:9001\" }] }]\n",
        "routes = [{ name = \"infer\", grpc = \"inference.GRPCInferenceService\", ",
        "arms = [{ name = \"a\", pool = \"engine-v3\", weight = 1 }] }]\n",
    );
    common::assert_check_refuses(
        config,
        &[
            "1 problem(s)",
            "routes[infer].arms[a].pool: no pool named \"engine-v3\"",
        ],
    );
}
