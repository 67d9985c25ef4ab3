//! Pools in front of what people run: backends by host name (the system
//! resolver for `localhost`, a hosts file whose answer changes under load),
//! TLS to the backends (a certificate authority made here with `openssl`; a
//! second `weir` with a TLS listener is the TLS server), HTTP/2 over TLS,
//! and credentials the pool adds from the environment or a file, never
//! shown in logs, `/admin/routes` or errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{SERVER, weir_bin};
use weir_test_support::upstream::ECHO_HEADER;
use weir_test_support::{Load, Upstream, Weir};

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (scripts/deps.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// `NAME-ca.pem` (a CA) in `dir`; with `server`, also `server.pem` and
/// `server-key.pem` signed by it for `upstream.test` and 127.0.0.1.
fn authority(dir: &Path, name: &str, server: bool) {
    let (key, ca) = (format!("{name}-ca-key.pem"), format!("{name}-ca.pem"));
    let subject = format!("/CN=weir test CA {name}");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &ca,
        ],
        dir,
    );
    if server {
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:upstream.test,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=upstream.test",
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &ca,
                "-CAkey",
                &key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ],
            dir,
        );
    }
}

/// A `weir` with a TLS listener (the certificate of `dir`) in front of `up`:
/// the TLS server the tests' pools talk to.
async fn tls_server(dir: &Path, up: &Upstream) -> Weir {
    let cfg = format!(
        "{SERVER}[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[pools]]\nname = \"up\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"all\"\narms = [{{ name = \"a\", pool = \"up\", weight = 1 }}]\n",
        dir.join("server.pem").display(),
        dir.join("server-key.pem").display(),
        up.addr
    );
    // Its access log says which HTTP version each request came in.
    Weir::start_with_env(weir_bin(), &cfg, &[("WEIR_LOG", "info")])
        .await
        .unwrap()
}

/// A gateway whose one route goes to `pool` (the `[[pools]]` table's lines
/// after its name).
async fn gateway(pool: &str) -> Weir {
    let cfg = format!(
        "{SERVER}[[pools]]\nname = \"p\"\n{pool}\n\n\
         [[routes]]\nname = \"chat\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n"
    );
    Weir::start(weir_bin(), &cfg).await.unwrap()
}

async fn echo(weir: &Weir) -> (u16, serde_json::Value) {
    let resp = weir_test_support::client()
        .get(weir.url("/v1/models"))
        .header(ECHO_HEADER, "1")
        .header("authorization", "Bearer client-own-key")
        .header("x-internal", "secret-route")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backends_are_verified_with_the_pools_ca() {
    let dir = tempfile::tempdir().unwrap();
    authority(dir.path(), "good", true);
    authority(dir.path(), "other", false);
    let up = Upstream::local("behind-tls").await.unwrap();
    let server = tls_server(dir.path(), &up).await;
    let tls_addr = server.tls.expect("tls listener");
    let ca = dir.path().join("good-ca.pem");

    // Verified against the right CA, by name and by IP address.
    for (protocol, sni) in [
        ("http1", "sni = \"upstream.test\", "),
        ("http1", ""),
        ("h2", "sni = \"upstream.test\", "),
    ] {
        let gw = gateway(&format!(
            "protocol = \"{protocol}\"\nbackends = [{{ address = \"{tls_addr}\" }}]\n\
             tls = {{ {sni}ca_file = \"{}\" }}",
            ca.display()
        ))
        .await;
        let (status, body) = echo(&gw).await;
        assert_eq!(status, 200, "{protocol} {sni}: {body}\n{}", gw.log());
        assert_eq!(body["upstream"], "behind-tls");
        if !sni.is_empty() {
            assert_eq!(body["headers"]["host"], "upstream.test", "Host is the sni");
        }
        let routes = gw.admin_json("/admin/routes").await.unwrap();
        assert_eq!(routes["pools"][0]["protocol"], protocol);
        assert_eq!(routes["pools"][0]["tls"]["verify"], true);
    }
    // The TLS server saw HTTP/2 from the h2 pool: its access log says so.
    assert!(
        server.log().contains("version=HTTP/2.0"),
        "no HTTP/2 request reached the TLS server:\n{}",
        server.log()
    );

    // A CA that did not sign the backend's certificate: refused, 502, a
    // clear code, the log says why, the answer names no address.
    let other = dir.path().join("other-ca.pem");
    let gw = gateway(&format!(
        "backends = [{{ address = \"{tls_addr}\" }}]\ntls = {{ sni = \"upstream.test\", ca_file = \"{}\" }}",
        other.display()
    ))
    .await;
    let resp = weir_test_support::client()
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&tls_addr.to_string()), "{text}");
    assert!(text.contains("upstream_"), "{text}");
    let log = gw.log();
    assert!(
        log.to_lowercase().contains("cert"),
        "the log does not say the certificate was refused:\n{log}"
    );
    // verify = false connects anyway, with a warning at load.
    let gw = gateway(&format!(
        "backends = [{{ address = \"{tls_addr}\" }}]\ntls = {{ sni = \"upstream.test\", verify = false }}"
    ))
    .await;
    let (status, _) = echo(&gw).await;
    assert_eq!(status, 200);
    assert!(gw.log().contains("NOT verified"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_credentials_come_from_env_and_files_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "sk-from-file-1\n").unwrap();
    let up = Upstream::local("provider").await.unwrap();
    let pool = format!(
        "backends = [{{ address = \"{}\" }}]\n\
         headers = {{ set = {{ authorization = \"Bearer ${{env:WEIR_TEST_PROVIDER_KEY}}\", x-api-key = \"${{file:{}}}\" }}, remove = [\"x-internal\"] }}",
        up.addr,
        key_file.display()
    );
    let cfg = format!(
        "{SERVER}[[pools]]\nname = \"p\"\n{pool}\n\n\
         [[routes]]\nname = \"chat\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n"
    );
    let weir = Weir::start_with_env(
        weir_bin(),
        &cfg,
        &[("WEIR_TEST_PROVIDER_KEY", "sk-from-env")],
    )
    .await
    .unwrap();
    let (status, body) = echo(&weir).await;
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["authorization"], "Bearer sk-from-env", "{headers}");
    assert_eq!(headers["x-api-key"], "sk-from-file-1");
    assert!(headers.get("x-internal").is_none(), "{headers}");

    // A rotated key file is read at the next reload.
    std::fs::write(&key_file, "sk-from-file-2\n").unwrap();
    weir.write_config(&format!("{cfg}\n# rotated\n")).unwrap();
    weir_test_support::eventually(std::time::Duration::from_secs(20), || async {
        let (_, body) = echo(&weir).await;
        (body["headers"]["x-api-key"] == "sk-from-file-2").then_some(())
    })
    .await
    .unwrap();

    // Never shown: admin view, log.
    let routes = weir.admin_json("/admin/routes").await.unwrap().to_string();
    assert!(routes.contains("authorization"), "{routes}");
    let log = weir.log();
    for secret in ["sk-from-env", "sk-from-file-1", "sk-from-file-2"] {
        assert!(!routes.contains(secret), "{secret} in /admin/routes");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn check_reports_a_missing_secret_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "{SERVER}[[pools]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             headers = {{ set = {{ authorization = \"Bearer ${{env:WEIR_TEST_UNSET_KEY}}\" }} }}\n\
             protocol = \"h2\"\n\n\
             [[routes]]\nname = \"chat\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n"
        ),
    )
    .unwrap();
    let out = Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("pools[p].headers.set.authorization: environment variable \"WEIR_TEST_UNSET_KEY\" is not set"),
        "{text}"
    );
    assert!(
        text.contains("pools[p].protocol: \"h2\" is HTTP/2 over TLS"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_by_name_follow_their_addresses_without_a_failed_request() {
    let a = Upstream::local("a").await.unwrap();
    let port = a.addr.port();
    // The same port on another loopback address.
    let _b = Upstream::start("b", format!("127.0.0.2:{port}").parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 upstream.test\n").unwrap();
    let cfg = format!(
        "{SERVER}hosts_file = \"{}\"\n\n[[pools]]\nname = \"p\"\n\
         backends = [{{ address = \"upstream.test:{port}\" }}]\nresolve = {{ refresh_ms = 100 }}\n\n\
         [[routes]]\nname = \"chat\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n",
        hosts.display()
    )
    .replacen("grace_period_seconds = 0\n\n", "grace_period_seconds = 0\n", 1);
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let (status, body) = echo(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "a");
    assert_eq!(body["headers"]["host"], format!("upstream.test:{port}"));
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    assert_eq!(
        routes["pools"][0]["names"][0]["addresses"][0],
        format!("127.0.0.1:{port}"),
        "{routes}"
    );

    let load = Load::start(&weir, 4);
    load.advance(200).await.unwrap();
    // The name moves to b.
    let tmp = dir.path().join("hosts.new");
    std::fs::write(&tmp, "127.0.0.2 upstream.test\n").unwrap();
    std::fs::rename(&tmp, &hosts).unwrap();
    weir_test_support::eventually(std::time::Duration::from_secs(20), || async {
        (load.served_by("b") > 0).then_some(())
    })
    .await
    .unwrap();
    // A request a client sent before the move may still be on its way to a
    // (four clients, each one request in flight): let them land first.
    load.advance(20).await.unwrap();
    let from_a = load.served_by("a");
    load.advance(200).await.unwrap();
    assert_eq!(load.served_by("a"), from_a, "a still served after the move");
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // A name that stops resolving keeps its last good address: counted,
    // logged, still served.
    std::fs::write(&tmp, "# nothing\n").unwrap();
    std::fs::rename(&tmp, &hosts).unwrap();
    weir_test_support::eventually(std::time::Duration::from_secs(20), || async {
        let n = weir
            .metric_sample("weir_resolve_failures_total{name=\"upstream.test\",pool=\"p\"}")
            .await?;
        (n >= 1.0).then_some(())
    })
    .await
    .map_err(|e| format!("{e}\n{}", weir.log()))
    .unwrap();
    let (status, body) = echo(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "b");
    assert!(weir.log().contains("keeping its last good addresses"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_resolves_through_the_system_resolver() {
    let up = Upstream::local("local").await.unwrap();
    let weir = gateway(&format!(
        "backends = [{{ address = \"localhost:{}\" }}]",
        up.addr.port()
    ))
    .await;
    for _ in 0..20 {
        let (status, body) = echo(&weir).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["upstream"], "local");
    }
}
