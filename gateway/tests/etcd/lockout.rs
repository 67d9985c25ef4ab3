//! One invalid key under the prefix: operators can still read and change
//! the valid keys with `weirctl`, which names the invalid one; a gateway
//! restarted meanwhile serves its last-good cache and says which key is
//! invalid and which revisions it serves and etcd holds.

use std::time::Duration;

use weir_test_support::{Weir, eventually};

use crate::common::{SERVER, weir_bin};
use crate::support::{self, Ctl, Following, put, wait_metric, wait_revision};

const BAD: &str = "routes/chat/wieghts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_neither_locks_operators_out_nor_blocks_a_restart() {
    let following = Following::start(90, 10).await;
    let cache = following.cache();
    let Following {
        etcd,
        weir,
        imported,
        ..
    } = following;
    eventually(Duration::from_secs(15), || async {
        let text = std::fs::read_to_string(&cache).ok()?;
        text.contains(&format!("\"revision\": {imported}"))
            .then_some(())
    })
    .await
    .unwrap();

    // A raw write of a mistyped key: rejected, counted, named.
    let mut client = support::client(&etcd).await;
    let bad_rev = put(&mut client, BAD, r#"{"v1":50,"v2":50}"#).await;
    wait_metric(&weir, "weir_config_invalid_keys", 1.0).await;
    let (status, body) = weir.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains(BAD), "{body}");
    assert!(detail.contains(&format!("revision {imported}")), "{body}");
    assert!(detail.contains(&format!("revision {bad_rev}")), "{body}");

    // weirctl reads and changes the valid keys, and names the invalid one.
    let ctl = Ctl::new(&etcd);
    let out = ctl.ok(&["weights", "get", "chat"]);
    assert!(out.stdout.contains("90"), "{}", out.stdout);
    assert!(out.stderr.contains(BAD), "{}", out.stderr);
    let got = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(
        got["invalid_keys"][0]["key"],
        format!("/weir/{BAD}"),
        "{got}"
    );
    let out = ctl.ok(&["weights", "set", "chat", "v1=50", "v2=50"]);
    assert!(out.stderr.contains(BAD), "{}", out.stderr);
    let out = ctl.ok(&["config", "export"]);
    assert!(out.stdout.contains("[[routes]]"), "{}", out.stdout);
    assert!(out.stderr.contains(BAD), "{}", out.stderr);
    // A write that adds a problem is still refused.
    let out = ctl.run(&["weights", "set", "chat", "v3=1"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    // check lists the invalid key and fails.
    let out = ctl.run(&["config", "check"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("/weir/{BAD}")),
        "{}",
        out.stderr
    );
    let etcd_rev = ctl.ok(&["--json", "weights", "get", "chat"]).json()["revision"]
        .as_i64()
        .unwrap();

    // A restart in this state serves the last-good cache, and says why.
    drop(weir);
    let endpoint = etcd.endpoint();
    let args = support::weir_args(&endpoint, &cache);
    let weir = Weir::spawn(weir_bin(), SERVER, &args).await.unwrap();
    weir.wait_ready()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", weir.log()));
    wait_metric(&weir, "weir_config_invalid_keys", 1.0).await;
    let (status, body) = weir.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "etcd-cache", "{body}");
    assert_eq!(body["revision"], imported, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains(BAD), "{body}");
    // etcd's revision as the new gateway read it: at least the one read
    // above (a replica's status, beside the prefix, may have moved it on).
    let seen: i64 = detail
        .split("; etcd revision ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no etcd revision in {body}"));
    assert!(seen >= etcd_rev, "{body}");
    support::assert_v2_share(&weir, 400, 10.0, "v2 after the restart").await;

    // Deleting the invalid key applies what etcd holds: the 50/50 set above.
    let fixed = support::delete(&mut client, BAD).await;
    wait_revision(&weir, fixed).await;
    eventually(Duration::from_secs(15), || async {
        let (status, body) = weir.readyz().await.ok()?;
        (status == 200 && body["source"] == "etcd" && body.get("detail").is_none()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", weir.log()));
    assert_eq!(weir.metric("weir_config_invalid_keys").await.unwrap(), 0.0);
    support::assert_v2_share(&weir, 400, 50.0, "v2 after the fix").await;
}
