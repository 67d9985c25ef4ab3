//! A real etcd with TLS and authentication: `weir` configured by a
//! `[source.etcd]` table (CA file, user, password) follows it, `weirctl`
//! writes to it with `--cacert` and `--user`, and a wrong password or a
//! missing CA is a clear failure, never a silent one.

use std::time::Duration;

use weir_test_support::etcd::SECURE_USER;
use weir_test_support::{Etcd, Weir, eventually};

use crate::common::{SERVER, weir_bin};
use crate::support::{self, Arms, wait_revision};

fn source(etcd: &Etcd, password: &str) -> String {
    format!(
        "{SERVER}[source.etcd]\nendpoints = [\"{}\"]\nusername = \"{}\"\npassword = \"{password}\"\ntls = {{ ca = \"{}\" }}\n",
        etcd.endpoint(),
        SECURE_USER.0,
        etcd.ca().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_authentication_to_etcd() {
    let etcd = Etcd::start_secure().await.unwrap();
    let arms = Arms::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, arms.config(100, 0)).unwrap();
    let user = format!("{}:{}", SECURE_USER.0, SECURE_USER.1);
    let ca = etcd.ca();
    let ctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weirctl"))
            .args([
                "--etcd",
                &etcd.endpoint(),
                "--cacert",
                ca.to_str().unwrap(),
                "--user",
                &user,
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["config", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let weir = Weir::start_with(weir_bin(), &source(&etcd, SECURE_USER.1), &[])
        .await
        .unwrap();
    assert_eq!(support::v2_share(&weir, 200).await, 0.0);
    let out = ctl(&["--json", "weights", "set", "chat", "v1=0", "v2=100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    wait_revision(&weir, set["revision"].as_i64().unwrap()).await;
    assert_eq!(support::v2_share(&weir, 200).await, 100.0);

    // Without credentials, weirctl is refused by etcd and says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weirctl"))
        .args(["--etcd", &etcd.endpoint(), "--cacert", ca.to_str().unwrap()])
        .args(["weights", "get", "chat"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user name is empty"));

    // A gateway with a wrong password stays unready and names the failure.
    let wrong = Weir::spawn(weir_bin(), &source(&etcd, "wrong"), &[])
        .await
        .unwrap();
    let body = eventually(Duration::from_secs(15), || async {
        let (status, body) = wrong.readyz().await.ok()?;
        (status == 503
            && body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("authentication failed"))
        .then_some(body)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", wrong.log()));
    assert_eq!(body["ready"], false);
}
