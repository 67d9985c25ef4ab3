//! Operating weights safely (issue: write API, diff and dry-run, fleet
//! status, audit log), through two real `weir` replicas, a real etcd and
//! the real `weirctl`.

use std::time::Duration;

use serde_json::{Value, json};
use weir_test_support::{Etcd, Weir, client, eventually};

use crate::common::{SERVER, weir_bin};
use crate::support::{self, Arms, Ctl, PREFIX};

/// SHA-256 of `secret`, hex.
fn digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A replica following `etcd` with named admin tokens (`ci` may write,
/// `viewer` may read) and a 2-second status lease.
async fn replica(etcd: &Etcd) -> Weir {
    let config = format!(
        "{SERVER}\
         [[server.admin_tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"read\", \"weights\"]\n\n\
         [[server.admin_tokens]]\nname = \"viewer\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\n\
         [source.etcd]\nendpoints = [\"{}\"]\nstatus_ttl_seconds = 2\n",
        digest("ci-secret"),
        digest("viewer-secret"),
        etcd.endpoint()
    );
    Weir::start(weir_bin(), &config).await.unwrap()
}

async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The weight `arm` has in `weir`'s live config.
async fn live_weight(weir: &Weir, arm: &str) -> Option<i64> {
    let routes = client()
        .get(weir.admin_url("/admin/routes"))
        .bearer_auth("viewer-secret")
        .send()
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()?;
    routes["routes"][0]["arms"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == arm)?["weight"]
        .as_i64()
}

async fn wait_weight(weir: &Weir, arm: &str, weight: i64) {
    eventually(Duration::from_secs(10), || async {
        (live_weight(weir, arm).await == Some(weight)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{arm} never got weight {weight}: {e}\n{}", weir.log()));
}

/// Waits until `weir` serves etcd revision `rev` or newer (`/readyz`: its
/// metrics need a token here).
async fn wait_revision(weir: &Weir, rev: i64) {
    eventually(Duration::from_secs(15), || async {
        let (_, body) = weir.readyz().await.ok()?;
        (body["revision"].as_i64()? >= rev).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("revision {rev} not applied: {e}\n{}", weir.log()));
}

/// A metric of a gateway whose admin API needs a token: the sample of
/// `name` whose labels include every one of `labels`.
async fn metric(weir: &Weir, name: &str, labels: &[&str]) -> f64 {
    let text = client()
        .get(weir.admin_url("/metrics"))
        .bearer_auth("viewer-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    weir_test_support::sample_with(&text, name, labels).unwrap_or(0.0)
}

fn store_revision(etcd: &Etcd) -> i64 {
    let out = etcd
        .etcdctl(&["endpoint", "status", "-w", "json"], false)
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_api_is_followed_by_every_replica_checked_and_audited() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(90, 10)).await;
    let a = replica(&etcd).await;
    let b = replica(&etcd).await;
    wait_revision(&a, imported).await;
    wait_revision(&b, imported).await;
    let weights = |w: &Weir| w.admin_url("/admin/routes/chat/weights");

    // Reading needs a token; the viewer's will do.
    let (status, _) = send(reqwest::Method::GET, weights(&a), None, None).await;
    assert_eq!(status, 401);
    let (status, got) = send(
        reqwest::Method::GET,
        weights(&a),
        Some("viewer-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["weights"], json!({ "v1": 90, "v2": 10 }));
    assert_eq!(got["weights_revision"], 0);

    // The viewer cannot write; nothing changes.
    let canary =
        json!({ "weights": { "v1": 70, "v2": 30 }, "expect_revision": 0, "reason": "canary 30%" });
    let before = store_revision(&etcd);
    let (status, body) = send(
        reqwest::Method::PUT,
        weights(&a),
        Some("viewer-secret"),
        Some(canary.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");

    // A dry run answers what would happen and writes nothing.
    let mut dry = canary.clone();
    dry["dry_run"] = json!(true);
    let (status, body) = send(
        reqwest::Method::PUT,
        weights(&a),
        Some("ci-secret"),
        Some(dry),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["after"], json!({ "v1": 70, "v2": 30 }));
    assert_eq!(store_revision(&etcd), before, "a dry run wrote");

    // The write, through replica A: both replicas follow.
    let (status, body) = send(
        reqwest::Method::PUT,
        weights(&a),
        Some("ci-secret"),
        Some(canary.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["before"], json!({ "v1": 90, "v2": 10 }));
    assert_eq!(body["after"], json!({ "v1": 70, "v2": 30 }));
    assert_eq!(body["audit_seq"], 2, "record 1 is the import");
    let written = body["revision"].as_i64().unwrap();
    wait_revision(&a, written).await;
    wait_revision(&b, written).await;
    wait_weight(&a, "v2", 30).await;
    wait_weight(&b, "v2", 30).await;

    // A stale expect_revision: 409, nothing written.
    let before = store_revision(&etcd);
    let mut stale = canary.clone();
    stale["weights"] = json!({ "v2": 50 });
    let (status, body) = send(
        reqwest::Method::PUT,
        weights(&b),
        Some("ci-secret"),
        Some(stale),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(store_revision(&etcd), before);

    // Bad bodies and unknown routes get clear errors.
    let (status, body) = send(
        reqwest::Method::PUT,
        weights(&a),
        Some("ci-secret"),
        Some(json!({ "weight": 1 })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(
        reqwest::Method::PUT,
        a.admin_url("/admin/routes/nope/weights"),
        Some("ci-secret"),
        Some(json!({ "weights": { "v1": 1 } })),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "route_not_found");

    // Roll back: the weights before the last change.
    let (status, body) = send(
        reqwest::Method::POST,
        b.admin_url("/admin/routes/chat/rollback"),
        Some("ci-secret"),
        Some(json!({ "reason": "error rate up" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["after"], json!({ "v1": 90, "v2": 10 }));
    wait_weight(&a, "v2", 10).await;
    wait_weight(&b, "v2", 10).await;
    assert_eq!(
        metric(
            &a,
            "weir_config_changes_total",
            &["actor_kind=\"token\"", "route=\"chat\""]
        )
        .await,
        1.0
    );

    // A raw etcdctl put, around the tools: unaudited in the history.
    etcd.etcdctl(
        &["put", &format!("{PREFIX}routes/chat/weights"), "{\"v2\":5}"],
        false,
    )
    .unwrap();
    let (status, changes) = send(
        reqwest::Method::GET,
        a.admin_url("/admin/changes?since=0"),
        Some("viewer-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{changes}");
    let list = changes["changes"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{changes}");
    assert_eq!(
        list[0]["audit"]["actor"],
        json!({ "name": "ci", "kind": "token" })
    );
    assert_eq!(list[0]["audit"]["reason"], "canary 30%");
    assert_eq!(list[1]["audit"]["action"], "weights.undo");
    assert_eq!(list[2]["audited"], false);
    assert_eq!(list[2]["weights"], json!({ "v2": 5 }));
    let ctl = Ctl::new(&etcd);
    let out = ctl.ok(&["history", "chat"]);
    assert!(out.stdout.contains("UNAUDITED"), "{}", out.stdout);

    // Fleet status: both replicas, at the newest revision; a killed one
    // disappears when its lease ends.
    let newest = list[2]["revision"].as_i64().unwrap();
    let status = eventually(Duration::from_secs(10), || async {
        let s = ctl.ok(&["--output", "json", "status"]).json();
        let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
        (replicas.len() == 2
            && replicas
                .iter()
                .all(|r| r["revision"].as_i64() >= Some(newest)))
        .then_some(s)
    })
    .await
    .unwrap();
    assert!(
        status["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ready"] == true),
        "{status}"
    );
    b.signal("KILL").unwrap();
    eventually(Duration::from_secs(15), || async {
        let s = ctl.ok(&["--output", "json", "status"]).json();
        (s["replicas"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await
    .unwrap();

    // The audit chain holds, then names what was altered or deleted.
    let out = ctl.ok(&["audit", "verify"]);
    assert!(out.stdout.contains("3 record(s)"), "{}", out.stdout);
    let record2 = format!(
        "{}-audit/records/00000000000000000002",
        PREFIX.trim_end_matches('/')
    );
    let raw = etcd
        .etcdctl(&["get", "--print-value-only", &record2], false)
        .unwrap();
    let altered = raw.trim().replace("canary 30%", "canary 3%");
    etcd.etcdctl(&["put", &record2, &altered], false).unwrap();
    let out = ctl.run(&["audit", "verify"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("record 2 was rewritten"),
        "{}",
        out.stderr
    );
    etcd.etcdctl(&["del", &record2], false).unwrap();
    let out = ctl.run(&["audit", "verify"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("record 2 is missing"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_configured_gateway_refuses_writes_and_says_why() {
    let arms = Arms::start().await;
    let weir = Weir::start(weir_bin(), &arms.config(90, 10)).await.unwrap();
    let (status, got) = send(
        reqwest::Method::GET,
        weir.admin_url("/admin/routes/chat/weights"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["weights"], json!({ "v1": 90, "v2": 10 }));
    let (status, body) = send(
        reqwest::Method::PUT,
        weir.admin_url("/admin/routes/chat/weights"),
        None,
        Some(json!({ "weights": { "v2": 50 } })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "file_source");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("source of truth")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirctl_diffs_dry_runs_steps_undoes_and_exits_with_documented_codes() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, arms.config(100, 0)).unwrap();
    let file = file.to_str().unwrap();
    let ctl = Ctl::new(&etcd);
    ctl.ok(&["config", "import", file]);

    // Canary steps, with a reason and an actor.
    for (pct, v1) in [(5, 95), (25, 75)] {
        let out = ctl
            .ok(&[
                "--output",
                "json",
                "--actor",
                "alice",
                "--reason",
                "canary",
                "weights",
                "step",
                "chat",
                &format!("v2={pct}"),
            ])
            .json();
        assert_eq!(out["weights"], json!({ "v1": v1, "v2": pct }), "{out}");
    }

    // --dry-run writes nothing.
    let before = store_revision(&etcd);
    let out = ctl.ok(&["--dry-run", "weights", "set", "chat", "v2=50"]);
    assert!(out.stdout.contains("dry run"), "{}", out.stdout);
    let out = ctl.ok(&["--dry-run", "undo", "chat"]);
    assert!(out.stdout.contains("dry run"), "{}", out.stdout);
    assert_eq!(store_revision(&etcd), before, "a dry run wrote");

    // diff names the live override that import would delete.
    let out = ctl.ok(&["diff", file]);
    assert!(
        out.stdout.contains("- routes/chat/weights"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("deleted only with --prune"),
        "{}",
        out.stdout
    );
    let diff = ctl.ok(&["--output", "json", "diff", file]).json();
    assert_eq!(diff["diff"][0]["key"], "routes/chat/weights");
    assert_eq!(diff["diff"][0]["after"], Value::Null);
    let out = ctl.ok(&["--dry-run", "config", "import", "--prune", file]);
    assert!(
        out.stdout.contains("would write 0 and delete 1"),
        "{}",
        out.stdout
    );
    assert_eq!(store_revision(&etcd), before);

    // undo: back to the step before (5 %), then to no override at all.
    let out = ctl.ok(&["--output", "json", "undo", "chat"]).json();
    assert_eq!(out["weights"], json!({ "v1": 95, "v2": 5 }), "{out}");
    let out = ctl.ok(&["--output", "json", "undo", "chat"]).json();
    assert_eq!(
        out["weights"],
        json!({ "v1": 75, "v2": 25 }),
        "undo of an undo redoes: {out}"
    );

    // History: every change audited, with who and why.
    let h = ctl.ok(&["--output", "json", "history", "chat"]).json();
    let changes = h["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{h}");
    assert_eq!(changes[0]["audit"]["actor"]["name"], "alice");
    assert!(changes.iter().all(|c| !c["audit"].is_null()), "{h}");

    // Exit codes: 2 bad usage, 3 conflict, 1 refused.
    assert_eq!(ctl.run(&["weights", "step", "chat", "v2"]).code, 2);
    assert_eq!(
        ctl.run(&["weights", "set", "chat", "v2=1", "--expect-revision", "1"])
            .code,
        3
    );
    assert_eq!(ctl.run(&["weights", "step", "chat", "v3=10"]).code, 1);
    assert_eq!(ctl.run(&["weights", "step", "chat", "v2=101"]).code, 1);
    let out = ctl.ok(&["audit", "verify"]);
    assert!(
        out.stdout
            .contains("ok: the audit chain holds: 5 record(s)"),
        "{}",
        out.stdout
    );
}
