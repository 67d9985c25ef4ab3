//! Access control through the real gateway: API keys, JWTs (RS256, ES256,
//! HS256), tenant allow-lists, the admin token, request, token and
//! concurrency limits, and the request body limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{SERVER, weir_bin};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_test_support::upstream::{DELAY_HEADER, REPLY_HEADER, SSE_HEADER, USAGE_HEADER};
use weir_test_support::{Upstream, Weir, eventually};

fn digest(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Key pairs for RS256 and ES256 and an HS256 secret, in `dir`.
struct Keys {
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    ec_private: Vec<u8>,
    hs_secret: Vec<u8>,
    /// A second RSA key, published in `jwks.json` with `kid` "k1".
    jwks_private: Vec<u8>,
}

fn keys(dir: &Path) -> Keys {
    let p = |n: &str| dir.join(n).display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p("ec.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("ec.pem"),
        "-pubout",
        "-out",
        &p("ec.pub.pem"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("jwks.pem"),
    ]);
    let jwks_private = std::fs::read(dir.join("jwks.pem")).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(&jwks_private).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = jsonwebtoken::jwk::JwkSet { keys: vec![jwk] };
    std::fs::write(dir.join("jwks.json"), serde_json::to_string(&set).unwrap()).unwrap();
    let hs_secret = b"an-hs256-secret-of-at-least-32-bytes!".to_vec();
    std::fs::write(dir.join("hs.secret"), &hs_secret).unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    Keys {
        rsa_private: read("rsa.pem"),
        rsa_public: read("rsa.pub.pem"),
        ec_private: read("ec.pem"),
        hs_secret,
        jwks_private,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str, aud: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "sub": "user-1", "tenant": tenant, "iss": "https://idp.test", "aud": aud,
        "exp": exp, "nbf": now() - 10,
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn config(upstream: &Upstream, dir: &Path, extra: &str) -> String {
    let f = |n: &str| dir.join(n).display().to_string();
    format!(
        r#"{SERVER_NO_NL}
admin_token_sha256 = "{admin}"

[[pools]]
name = "p"
backends = [{{ address = "{up}" }}]

[[tenants]]
name = "acme"
api_keys = ["{acme}"]

[[tenants]]
name = "beta"
api_keys = ["{beta}"]

[[auth.jwt]]
name = "idp"
algorithm = "RS256"
public_key_file = "{rsa}"
issuer = "https://idp.test"
audience = ["weir"]

[[auth.jwt]]
name = "es"
algorithm = "ES256"
public_key_file = "{ec}"
audience = ["weir"]

[[auth.jwt]]
name = "hs"
algorithm = "HS256"
secret_file = "{hs}"
audience = ["weir"]

[[auth.jwt]]
name = "keys"
algorithm = "RS256"
jwks_file = "{jwks}"
audience = ["weir"]

[[routes]]
name = "chat"
prefix = "/v1"
auth = "required"
tenants = ["acme"]
arms = [{{ name = "v1", pool = "p", weight = 1 }}]

[[routes]]
name = "open"
prefix = "/open"
arms = [{{ name = "v1", pool = "p", weight = 1 }}]
{extra}"#,
        SERVER_NO_NL = SERVER.trim_end(),
        admin = digest("admin-secret"),
        up = upstream.addr,
        acme = digest("acme-key"),
        beta = digest("beta-key"),
        rsa = f("rsa.pub.pem"),
        ec = f("ec.pub.pem"),
        hs = f("hs.secret"),
        jwks = f("jwks.json"),
    )
}

/// An upstream and a gateway on [`config`] with each `(from, to)` replaced;
/// the key dir must outlive the gateway.
async fn gateway(changes: &[(&str, &str)]) -> (Upstream, Weir, tempfile::TempDir) {
    let up = Upstream::local("v1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    keys(dir.path());
    let mut cfg = config(&up, dir.path(), "");
    for (from, to) in changes {
        assert!(cfg.contains(from), "{from:?} is not in the config");
        cfg = cfg.replace(from, to);
    }
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    (up, weir, dir)
}

async fn call(
    weir: &Weir,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = weir_test_support::client().get(weir.url(path));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, h, body)
}

/// (what, request headers, expected status, expected error code).
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_matrix_gives_the_right_status_and_the_upstream_sees_only_tenants() {
    let up = Upstream::local("v1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = keys(dir.path());
    let weir = Weir::start(weir_bin(), &config(&up, dir.path(), ""))
        .await
        .unwrap();
    let rsa = EncodingKey::from_rsa_pem(&k.rsa_private).unwrap();
    let ec = EncodingKey::from_ec_pem(&k.ec_private).unwrap();
    let hs = EncodingKey::from_secret(&k.hs_secret).unwrap();
    let jwks = EncodingKey::from_rsa_pem(&k.jwks_private).unwrap();
    let with_kid = |kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims("acme", "weir", now() + 600), &jwks).unwrap()
    };
    let later = now() + 600;

    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("acme", "weir", later))
    );
    // HS256 "signed" with the RS256 public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&k.rsa_public).unwrap(),
        &claims("acme", "weir", later),
    );

    let cases: Vec<Case> = vec![
        ("no credentials", vec![], 401, "missing_credentials"),
        ("wrong key", bearer("nope"), 401, "invalid_credentials"),
        (
            "not bearer",
            vec![("authorization", "Basic YWNtZTprZXk=".into())],
            401,
            "invalid_credentials",
        ),
        ("right key", bearer("acme-key"), 200, ""),
        ("x-api-key", vec![("x-api-key", "acme-key".into())], 200, ""),
        (
            "tenant not allowed",
            bearer("beta-key"),
            403,
            "tenant_not_allowed",
        ),
        (
            "RS256",
            bearer(&sign(
                Algorithm::RS256,
                &rsa,
                &claims("acme", "weir", later),
            )),
            200,
            "",
        ),
        (
            "ES256",
            bearer(&sign(Algorithm::ES256, &ec, &claims("acme", "weir", later))),
            200,
            "",
        ),
        (
            "HS256",
            bearer(&sign(Algorithm::HS256, &hs, &claims("acme", "weir", later))),
            200,
            "",
        ),
        ("JWKS key by kid", bearer(&with_kid("k1")), 200, ""),
        (
            "JWKS unknown kid",
            bearer(&with_kid("k9")),
            401,
            "invalid_credentials",
        ),
        (
            "expired",
            bearer(&sign(
                Algorithm::RS256,
                &rsa,
                &claims("acme", "weir", now() - 3600),
            )),
            401,
            "invalid_credentials",
        ),
        (
            "wrong audience",
            bearer(&sign(
                Algorithm::RS256,
                &rsa,
                &claims("acme", "other", later),
            )),
            401,
            "invalid_credentials",
        ),
        ("alg none", bearer(&alg_none), 401, "invalid_credentials"),
        (
            "HS256 with the RS256 public key",
            bearer(&confused),
            401,
            "invalid_credentials",
        ),
        (
            "unknown tenant",
            bearer(&sign(
                Algorithm::RS256,
                &rsa,
                &claims("ghost", "weir", later),
            )),
            403,
            "unknown_tenant",
        ),
        (
            "JWT tenant not allowed",
            bearer(&sign(
                Algorithm::RS256,
                &rsa,
                &claims("beta", "weir", later),
            )),
            403,
            "tenant_not_allowed",
        ),
    ];
    let mut admitted = 0;
    for (what, headers, want, code) in &cases {
        let (status, h, body) = call(&weir, "/v1/chat/completions", headers).await;
        assert_eq!(status, *want, "{what}: {body}");
        if *want == 200 {
            admitted += 1;
            assert_eq!(
                body["tenant"], "acme",
                "{what}: the upstream learns the tenant"
            );
            assert_eq!(
                body["credentials"], false,
                "{what}: credentials are not forwarded"
            );
        } else {
            assert_eq!(body["error"]["code"], *code, "{what}: {body}");
            if *want == 401 {
                assert!(h.contains_key("www-authenticate"), "{what}");
            }
        }
    }
    let (expired, ..) = call(
        &weir,
        "/v1/x",
        &bearer(&sign(
            Algorithm::RS256,
            &rsa,
            &claims("acme", "weir", now() - 3600),
        )),
    )
    .await;
    assert_eq!(expired, 401);
    assert_eq!(
        up.hits(),
        admitted,
        "the upstream saw a request the gateway refused"
    );

    // A route without auth needs nothing.
    let (status, _, body) = call(&weir, "/open/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["tenant"], serde_json::Value::Null);

    // The admin API needs the admin token, but for health and readiness.
    let admin = |path: &str, token: Option<&str>| {
        let mut req = weir_test_support::client().get(weir.admin_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(admin("/healthz", None).await, 200);
    assert_eq!(admin("/readyz", None).await, 200);
    for path in ["/metrics", "/admin/routes"] {
        assert_eq!(admin(path, None).await, 401, "{path}");
        assert_eq!(admin(path, Some("wrong")).await, 401, "{path}");
        assert_eq!(admin(path, Some("admin-secret")).await, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_digest_can_come_from_a_secret_file() {
    // As a Kubernetes Secret mounted as files gives it.
    let secret = tempfile::tempdir().unwrap();
    let file = secret.path().join("token.sha256");
    std::fs::write(&file, format!("{}\n", digest("from-a-file"))).unwrap();
    let line = format!("admin_token_sha256 = \"${{file:{}}}\"", file.display());
    let admin_line = format!("admin_token_sha256 = \"{}\"", digest("admin-secret"));
    let (_up, weir, _dir) = gateway(&[(&admin_line, &line)]).await;
    let status = |token: Option<&'static str>| {
        let mut req = weir_test_support::client().get(weir.admin_url("/admin/routes"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("admin-secret")).await, 401);
    assert_eq!(status(Some("from-a-file")).await, 200);

    // A missing file, or one holding the token itself, is refused by name.
    let missing = secret.path().join("absent");
    let cfg = format!(
        "{SERVER}admin_token_sha256 = \"${{file:{}}}\"\n\
         [[server.admin_tokens]]\nname = \"ci\"\nsha256 = \"${{file:{}}}\"\nscopes = [\"read\"]\n\
         [[pools]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n",
        missing.display(),
        secret.path().join("plain").display(),
    );
    std::fs::write(secret.path().join("plain"), "the-token-itself").unwrap();
    common::assert_check_refuses(
        &cfg,
        &[
            "server.admin_token_sha256: cannot read secret file",
            "server.admin_tokens[0].sha256: must be the token's SHA-256",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_limit_admits_the_configured_rate() {
    let (up, weir, _dir) = gateway(&[(
        "name = \"acme\"\n",
        "name = \"acme\"\nrequests_per_second = 50\nburst = 5\n",
    )])
    .await;
    let client = weir_test_support::client();
    let started = Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    let mut seen_429 = None;
    // Eight clients as fast as they go for ten seconds.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), weir.url("/v1/chat/completions"));
        tasks.spawn(async move {
            let (mut ok, mut limited, mut sample) = (0u64, 0u64, None);
            while started.elapsed() < Duration::from_secs(10) {
                let resp = client
                    .get(&url)
                    .bearer_auth("acme-key")
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        if sample.is_none() {
                            sample = Some(resp.headers().clone());
                        }
                    }
                    s => assert_eq!(s, 200, "unexpected status"),
                }
            }
            (ok, limited, sample)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (o, l, s) = r.unwrap();
        ok += o;
        limited += l;
        seen_429 = seen_429.or(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 5.0 + 50.0 * elapsed;
    eprintln!("admitted {ok} in {elapsed:.2} s (expected {expected:.0}), limited {limited}");
    assert!(
        (ok as f64 - expected).abs() <= expected * 0.05,
        "admitted {ok}, expected {expected:.0} ± 5%"
    );
    assert!(limited > ok, "the load did not exceed the limit");
    let h = seen_429.unwrap();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-ratelimit-limit-requests"], "50");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(up.hits(), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_limit_counts_plain_and_streamed_usage() {
    let (up, weir, _dir) = gateway(&[
        (
            "name = \"acme\"\n",
            "name = \"acme\"\ntokens_per_minute = 100\n",
        ),
        ("tenants = [\"acme\"]\n", "tenants = [\"acme\", \"beta\"]\n"),
        (
            "name = \"beta\"\n",
            "name = \"beta\"\ntokens_per_minute = 100\n",
        ),
    ])
    .await;
    let client = weir_test_support::client();
    let url = weir.url("/v1/chat/completions");

    // Plain answers: 30 characters = 31 tokens each; the fifth is refused.
    let reply = "a".repeat(30);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = client
            .post(&url)
            .bearer_auth("acme-key")
            .header(REPLY_HEADER, &reply)
            .header(USAGE_HEADER, "1")
            .body(r#"{"messages":[]}"#)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert_eq!(resp.headers()["x-ratelimit-limit-tokens"], "100");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);

    // Streams whose client did not ask for usage: the gateway asks, counts
    // the usage chunk and keeps it from the client.
    let text = "b".repeat(40);
    let mut streamed = Vec::new();
    for _ in 0..4 {
        let resp = client
            .post(&url)
            .bearer_auth("beta-key")
            .header(SSE_HEADER, &text)
            .header("x-test-sse-chunk", "8")
            .body(r#"{"stream":true,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        if status == 200 {
            assert!(
                !body.contains("usage"),
                "the added usage chunk reached the client: {body}"
            );
            assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        }
        streamed.push(status);
    }
    // 41 tokens each: 0, 41, 82 admitted, then 123 > 100.
    assert_eq!(streamed, [200, 200, 200, 429]);

    // A client that asks for usage itself gets the chunk.
    let dir2 = tempfile::tempdir().unwrap();
    keys(dir2.path());
    let cfg = config(&up, dir2.path(), "").replace(
        "name = \"acme\"\n",
        "name = \"acme\"\ntokens_per_minute = 1000\n",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let body = client
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth("acme-key")
        .header(SSE_HEADER, "hello")
        .body(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"usage\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_a_tenant_are_capped() {
    let (up, weir, _dir) =
        gateway(&[("name = \"acme\"\n", "name = \"acme\"\nmax_concurrent = 2\n")]).await;
    let client = weir_test_support::client();
    let url = weir.url("/v1/chat/completions");
    let slow = |client: reqwest::Client, url: String| async move {
        client
            .get(&url)
            .bearer_auth("acme-key")
            .header(DELAY_HEADER, "1500")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let a = tokio::spawn(slow(client.clone(), url.clone()));
    let b = tokio::spawn(slow(client.clone(), url.clone()));
    eventually(Duration::from_secs(10), || async {
        (up.received() == 2).then_some(())
    })
    .await
    .unwrap();
    let (status, h, body) = call(&weir, "/v1/chat/completions", &bearer("acme-key")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_concurrent_requests");
    assert!(h.contains_key("retry-after"));
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200, 200));
    let (status, ..) = call(&weir, "/v1/chat/completions", &bearer("acme-key")).await;
    assert_eq!(status, 200, "slots come back when requests end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_without_being_read() {
    let (_up, weir, _dir) = gateway(&[(
        "name = \"open\"\nprefix = \"/open\"\n",
        "name = \"open\"\nprefix = \"/open\"\nmax_body_bytes = 4096\n",
    )])
    .await;

    // A declared gigabyte: answered after the header, the body never sent.
    let mut conn = tokio::net::TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"POST /open/x HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = conn.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");

    // Chunked, no length: refused once it passes the limit.
    let client = weir_test_support::client();
    let chunks = futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024])));
    let resp = client
        .post(weir.url("/open/x"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // Within the limit it passes.
    let resp = client
        .post(weir.url("/open/x"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_header_is_cut_off() {
    let (up, weir, _dir) = gateway(&[(
        "grace_period_seconds = 0\n",
        "grace_period_seconds = 0\nheader_read_timeout_ms = 300\n",
    )])
    .await;
    let mut conn = tokio::net::TcpStream::connect(weir.proxy).await.unwrap();
    conn.write_all(b"GET /open/x HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    // The header never ends: the gateway closes the connection (Pingora's
    // own limit would be 60 s; the test gives up after 10).
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the connection stayed open: {closed:?}"
    );
    assert_eq!(up.received(), 0);
    // A complete request on a new connection is served.
    let (status, ..) = call(&weir, "/open/x", &[]).await;
    assert_eq!(status, 200);
}

#[test]
fn bad_access_values_are_refused_with_their_paths() {
    let cfg = format!(
        "{SERVER}admin_token_sha256 = \"letmein\"\n\
         [[pools]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n\
         [[tenants]]\nname = \"acme\"\napi_keys = [\"plaintext-key\"]\n\
         [[auth.jwt]]\nname = \"idp\"\nalgorithm = \"none\"\n\
         [[routes]]\nname = \"chat\"\ntenants = [\"ghost\"]\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n"
    );
    common::assert_check_refuses(
        &cfg,
        &[
            "server.admin_token_sha256: must be the token's SHA-256",
            "tenants[acme].api_keys[0]: must be the key's SHA-256",
            "auth.jwt[idp].algorithm: \"none\" must be",
            "routes[chat].tenants: an allow-list needs auth = \"required\"",
            "routes[chat].tenants[0]: no tenant named \"ghost\"",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_name_its_own_tenant() {
    let (_up, weir, _dir) = gateway(&[]).await;
    let spoof = || vec![("x-weir-tenant", "acme".to_owned())];
    // A route without auth: the client's header never reaches the upstream.
    let (status, _, body) = call(&weir, "/open/x", &spoof()).await;
    assert_eq!(status, 200);
    assert_eq!(body["tenant"], serde_json::Value::Null, "{body}");
    // A route with auth: only the authenticated tenant is sent.
    let mut headers = spoof();
    headers.push(("x-api-key", "acme-key".into()));
    headers[0].1 = "beta".into();
    let (status, _, body) = call(&weir, "/v1/x", &headers).await;
    assert_eq!(status, 200);
    assert_eq!(body["tenant"], "acme", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_without_a_required_claim_is_refused() {
    let (up, weir, dir) = gateway(&[]).await;
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(dir.path().join("rsa.pem")).unwrap()).unwrap();
    let later = now() + 600;
    // Issuer "idp" names both an issuer and an audience: both are required.
    for missing in ["aud", "iss"] {
        let mut c = claims("acme", "weir", later);
        c.as_object_mut().unwrap().remove(missing);
        let token = sign(Algorithm::RS256, &rsa, &c);
        let (status, _, body) = call(&weir, "/v1/x", &bearer(&token)).await;
        assert_eq!(
            status, 401,
            "a token without {missing:?} was accepted: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_credentials", "{body}");
    }
    // With every claim it is accepted.
    let token = sign(Algorithm::RS256, &rsa, &claims("acme", "weir", later));
    let (status, _, body) = call(&weir, "/v1/x", &bearer(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.hits(), 1);
}
