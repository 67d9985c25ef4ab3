//! `--register-etcd URL --pool NAME`: the engine puts its address under the
//! pool's members prefix with a lease, removes it on a clean shutdown, and
//! after a SIGKILL the key goes when the lease expires. Real etcd.

use std::time::Duration;

use weir_conf::etcd::etcd_client::{Client, GetOptions};
use weir_test_support::{Etcd, eventually};

use crate::common::{Engine, TempRepo, run_to_exit, start_engine};

const MEMBERS: &str = "/weir/pools/engines/members/";

/// (key, value, lease) of every registered member.
async fn members(client: &mut Client) -> Vec<(String, String, i64)> {
    let resp = client
        .get(MEMBERS, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.value_str().unwrap().to_owned(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_register_with_a_lease_and_leave_on_exit_or_expiry() {
    let etcd = Etcd::start().await.unwrap();
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let repo = TempRepo::with(&[("mlp", "1")]);
    let flags = [
        "--register-etcd",
        &etcd.endpoint(),
        "--pool",
        "engines",
        "--register-ttl",
        "2",
    ];
    let mut a = start_engine(&repo, &flags).await;
    let mut b = start_engine(&repo, &flags).await;

    // Both are members, each under its own lease, before the listening line.
    let now = members(&mut client).await;
    assert_eq!(now.len(), 2, "{now:?}");
    for (engine, name) in [(&a, "a"), (&b, "b")] {
        let addr = engine.http.to_string();
        let (key, value, lease) = now
            .iter()
            .find(|(k, _, _)| k.ends_with(&addr))
            .unwrap_or_else(|| panic!("{name} not registered: {now:?}"));
        assert_eq!(key, &format!("{MEMBERS}{addr}"));
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["address"], addr);
        assert_eq!(v["weight"], 1);
        assert_ne!(*lease, 0, "{name} has no lease");
    }

    // A clean shutdown removes the member at once.
    a.signal("TERM").unwrap();
    let code = a.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code.unwrap(), Some(0), "{}", a.log());
    let now = members(&mut client).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(now[0].0.ends_with(&b.http.to_string()));

    // SIGKILL: the member stays until the lease (2 s) expires, then goes.
    b.kill();
    assert_eq!(members(&mut client).await.len(), 1);
    eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move { members(&mut client).await.is_empty().then_some(()) }
    })
    .await
    .unwrap();
}

#[test]
fn registration_flags_are_checked() {
    // --pool is required with --register-etcd.
    let (ok, stderr) = run_to_exit(
        &["--models", "/tmp", "--register-etcd", "http://127.0.0.1:1"],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("--pool"), "{stderr}");
    // A wildcard listen address needs --advertise; an unreachable etcd
    // stops the start with a clear error.
    let repo = TempRepo::with(&[("mlp", "1")]);
    let repo_dir = repo.repo();
    let ort = Engine::ort_lib();
    for (http, error) in [
        ("0.0.0.0:0", "--advertise"),
        ("127.0.0.1:0", "--register-etcd"),
    ] {
        let (ok, stderr) = run_to_exit(
            &[
                "--models",
                repo_dir.to_str().unwrap(),
                "--http",
                http,
                "--grpc",
                "127.0.0.1:0",
                "--register-etcd",
                "http://127.0.0.1:1",
                "--pool",
                "engines",
            ],
            &[("ORT_DYLIB_PATH", ort.to_str().unwrap())],
        );
        assert!(!ok);
        assert!(stderr.contains(error), "{stderr}");
    }
}
