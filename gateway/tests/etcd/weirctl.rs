//! `weirctl` against a real etcd: import, weights get/set round trip (and a
//! live gateway following it), validation refusals, compare-and-swap
//! conflicts, export → import round trip, check.

use std::process::Command;

use serde_json::Value;
use weir_test_support::Etcd;

use crate::support::{self, Arms, wait_revision};

struct Ctl {
    endpoint: String,
}

/// One run: (exit code, stdout, stderr).
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
            .arg("--etcd")
            .arg(&self.endpoint)
            .args(args)
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "weirctl {args:?}: {}{}",
            out.stdout, out.stderr
        );
        out
    }
}

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
    let rev = got["revision"].as_i64().unwrap();
    wait_revision(&weir, rev).await;
    let share = support::v2_share(&weir, 1_000).await;
    assert!((share - 80.0).abs() <= 5.0, "v2 got {share}%");

    // Refusals: nothing written, a clear message, exit 1.
    for (args, message) in [
        (vec!["weights", "set", "chat", "v3=10"], "has no arm \"v3\""),
        (vec!["weights", "set", "chat", "v1=-1"], "must be >= 0"),
        (
            vec!["weights", "set", "chat", "v1=0", "v2=0"],
            "at least one arm needs a weight > 0",
        ),
        (vec!["weights", "set", "chat", "v1=lots"], "whole number"),
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
        .ok(&["--json", "config", "import", again.to_str().unwrap()])
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

    // etcd unreachable: a clear error, not a hang.
    let dead = Ctl {
        endpoint: "http://127.0.0.1:1".to_owned(),
    };
    let out = dead.run(&["weights", "get", "chat"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("etcd"), "{}", out.stderr);
}
