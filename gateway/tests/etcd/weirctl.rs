//! `weirctl` against a real etcd: import, weights get/set round trip (and a
//! live gateway following it), validation refusals, compare-and-swap
//! conflicts, export → import round trip, check.

use weir_test_support::Etcd;

use crate::support::{self, Arms, Ctl, wait_revision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirctl_round_trips_refuses_bad_writes_and_reports_conflicts() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let ctl = Ctl {
        endpoint: etcd.endpoint(),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, arms.config(90, 10)).unwrap();

    // Import, then a gateway following etcd.
    let out = ctl.ok(&["config", "import", file.to_str().unwrap()]);
    assert!(out.stdout.contains("3 written"), "{}", out.stdout);
    let weir = support::weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;

    // get, for people and for scripts.
    let out = ctl.ok(&["weights", "get", "chat"]);
    assert!(
        out.stdout.contains("v1") && out.stdout.contains("90"),
        "{}",
        out.stdout
    );
    let got = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(got["weights"]["v1"], 90);
    assert_eq!(got["weights"]["v2"], 10);
    assert_eq!(got["overridden"], false);
    assert_eq!(got["mod_revision"], 0);

    // set → get round trip, and the gateway applies it.
    let set = ctl
        .ok(&["--json", "weights", "set", "chat", "v1=20", "v2=80"])
        .json();
    assert_eq!(set["result"], "set");
    assert_eq!(set["weights"]["v2"], 80);
    let got = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(got["weights"]["v1"], 20);
    assert_eq!(got["overridden"], true);
    // The weights key's revision: the store's own moves on as gateways
    // report their status (beside the config prefix).
    let rev = got["mod_revision"].as_i64().unwrap();
    wait_revision(&weir, rev).await;
    support::assert_v2_share(&weir, 1_000, 80.0, "v2 after the override").await;

    // Refusals: nothing written, a clear message, exit 1.
    for (args, message) in [
        (vec!["weights", "set", "chat", "v3=10"], "has no arm \"v3\""),
        (vec!["weights", "set", "chat", "v1=-1"], "must be >= 0"),
        (
            vec!["weights", "set", "chat", "v1=0", "v2=0"],
            "at least one arm needs a weight > 0",
        ),
        (
            vec!["weights", "set", "nope", "v1=1"],
            "no route named \"nope\"",
        ),
        (vec!["weights", "get", "nope"], "no route named \"nope\""),
    ] {
        let out = ctl.run(&args);
        assert_eq!(out.code, 1, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    let json = ctl.run(&["--json", "weights", "set", "chat", "v3=10"]);
    assert_eq!(json.json()["error"]["kind"], "refused");
    let unchanged = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(unchanged["mod_revision"], got["mod_revision"]);

    // Compare-and-swap: a write expecting the revision just read succeeds;
    // a second one expecting that same (now stale) revision is a conflict.
    let expect = got["mod_revision"].as_i64().unwrap().to_string();
    ctl.ok(&[
        "weights",
        "set",
        "chat",
        "v1=30",
        "--expect-revision",
        &expect,
    ]);
    let out = ctl.run(&[
        "weights",
        "set",
        "chat",
        "v1=40",
        "--expect-revision",
        &expect,
    ]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("conflict"), "{}", out.stderr);
    let out = ctl.run(&[
        "--json",
        "weights",
        "set",
        "chat",
        "v1=40",
        "--expect-revision",
        &expect,
    ]);
    assert_eq!(out.code, 3);
    let err = out.json();
    assert_eq!(err["error"]["kind"], "conflict");
    assert_eq!(
        err["error"]["expected"].as_i64().unwrap().to_string(),
        expect
    );
    assert_eq!(
        ctl.ok(&["--json", "weights", "get", "chat"]).json()["weights"]["v1"],
        30
    );

    // export → import round trip: nothing to write but the folded weights.
    let exported = ctl.ok(&["config", "export"]).stdout;
    assert!(exported.contains("[[routes]]"), "{exported}");
    let again = dir.path().join("exported.toml");
    std::fs::write(&again, format!("{}\n{exported}", crate::common::SERVER)).unwrap();
    let report = ctl
        .ok(&[
            "--json",
            "config",
            "import",
            "--prune",
            again.to_str().unwrap(),
        ])
        .json();
    assert_eq!(
        report["import"]["written"],
        serde_json::json!(["routes/chat"])
    );
    assert_eq!(
        report["import"]["deleted"],
        serde_json::json!(["routes/chat/weights"])
    );
    let got = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(got["weights"]["v1"], 30);
    assert_eq!(got["overridden"], false);
    let report = ctl
        .ok(&["--json", "config", "import", again.to_str().unwrap()])
        .json();
    assert_eq!(report["import"]["written"], serde_json::json!([]));

    // check: etcd, a good file, a bad file (every problem listed).
    assert!(ctl.ok(&["config", "check"]).stdout.starts_with("ok:"));
    assert!(
        ctl.ok(&["config", "check", file.to_str().unwrap()])
            .stdout
            .starts_with("ok:")
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        arms.config(90, 10)
            .replace("pool = \"pool-v2\"", "pool = \"engine-v3\"")
            .replace("weight = 90", "weight = -1"),
    )
    .unwrap();
    let out = ctl.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no pool named \"engine-v3\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("must be >= 0"), "{}", out.stderr);
    let out = ctl.run(&["config", "import", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "an invalid file is not imported");

    // etcd unreachable: one clear line, not a hang.
    let dead = Ctl {
        endpoint: "http://127.0.0.1:1".to_owned(),
    };
    let out = dead.run(&["weights", "get", "chat"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "weirctl: cannot reach etcd at http://127.0.0.1:1: connection refused",
    );
    let out = dead.run(&["--json", "weights", "get", "chat"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.json()["error"]["kind"], "etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_deletes_only_with_prune_and_weirctl_exits_as_documented() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let ctl = Ctl::new(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, arms.config(91, 9)).unwrap();
    let file = file.to_str().unwrap();
    ctl.ok(&["config", "import", file]);
    ctl.ok(&["weights", "set", "chat", "v1=50", "v2=50"]);
    let before = ctl.ok(&["--json", "weights", "get", "chat"]).json();

    // Re-importing the file would delete the live weights override: refused,
    // with the key named, and nothing written.
    let out = ctl.run(&["config", "import", file]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("routes/chat/weights"), "{}", out.stderr);
    assert!(out.stderr.contains("--prune"), "{}", out.stderr);
    let out = ctl.run(&["--json", "config", "import", file]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.json()["error"]["deletes"],
        serde_json::json!(["routes/chat/weights"])
    );
    let after = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(after["weights"], before["weights"]);
    assert_eq!(
        after["revision"], before["revision"],
        "something was written"
    );

    // With --prune it goes ahead and says what it deleted.
    let out = ctl.ok(&["config", "import", "--prune", file]);
    assert!(out.stdout.contains("routes/chat/weights"), "{}", out.stdout);
    let after = ctl.ok(&["--json", "weights", "get", "chat"]).json();
    assert_eq!(after["weights"]["v1"], 91);

    // Usage errors exit 2.
    for args in [
        vec!["weights", "set", "chat", "v1:80"],
        vec!["weights", "set", "chat", "v1=lots"],
        vec!["weights", "set", "chat", "=5"],
    ] {
        let out = ctl.run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("ARM=WEIGHT"),
            "{args:?}: {}",
            out.stderr
        );
    }

    // A reader that goes away early is not an error.
    let mut child = ctl
        .command()
        .args(["config", "export"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
