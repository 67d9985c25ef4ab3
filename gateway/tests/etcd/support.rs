//! Helpers of the etcd tests: a two-arm config imported into a real etcd,
//! a `weir` following it, raw puts, and a load that records every failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weir_conf::etcd::audit::Actor;
use weir_conf::etcd::etcd_client::{Client, PutOptions};
use weir_conf::etcd::{EtcdSettings, Prune, Store, Write};
pub use weir_test_support::Load;
use weir_test_support::{Etcd, Upstream, Weir, eventually};

use crate::common::{SERVER, config, weir_bin};

/// The config prefix the tests use.
pub const PREFIX: &str = "/weir/";

/// Two upstreams and their 2-arm config (route `chat`, pools `pool-v1`, `pool-v2`).
pub struct Arms {
    pub v1: Upstream,
    pub v2: Upstream,
}

impl Arms {
    pub async fn start() -> Self {
        Self {
            v1: Upstream::local("v1").await.unwrap(),
            v2: Upstream::local("v2").await.unwrap(),
        }
    }

    /// The config text with weights `w1`/`w2`.
    pub fn config(&self, w1: u32, w2: u32) -> String {
        config(&[("v1", &self.v1, w1), ("v2", &self.v2, w2)], "")
    }
}

/// Settings for `etcd` (or another endpoint) under [`PREFIX`].
pub fn settings(endpoint: &str) -> EtcdSettings {
    EtcdSettings::new(vec![endpoint.to_owned()], PREFIX)
}

/// Replaces the config in etcd with `text` (validated, like `weirctl config import`).
pub async fn import(etcd: &Etcd, text: &str) -> i64 {
    let config = weir_conf::parse_toml(text, "test config").unwrap();
    let mut store = Store::connect(settings(&etcd.endpoint())).await.unwrap();
    let write = Write::by(Actor::cli("test"));
    store
        .import(&config, Prune::Delete, &write)
        .await
        .unwrap()
        .revision
}

/// A raw etcd client.
pub async fn client(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint()], None).await.unwrap()
}

/// Puts `PREFIX + key`; returns the new store revision.
pub async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let resp = client
        .put(format!("{PREFIX}{key}"), value, None::<PutOptions>)
        .await
        .unwrap();
    resp.header().unwrap().revision()
}

/// Deletes `PREFIX + key`; returns the new store revision.
pub async fn delete(client: &mut Client, key: &str) -> i64 {
    let resp = client.delete(format!("{PREFIX}{key}"), None).await.unwrap();
    resp.header().unwrap().revision()
}

/// `weir` with only a `[server]` table in its file, following `endpoint`,
/// with its last-good cache at `cache`; waits until it is ready.
pub async fn weir(endpoint: &str, cache: &Path) -> Weir {
    Weir::start_with(weir_bin(), SERVER, &weir_args(endpoint, cache))
        .await
        .unwrap()
}

pub fn weir_args<'a>(endpoint: &'a str, cache: &'a Path) -> [&'a str; 4] {
    ["--etcd", endpoint, "--etcd-cache", cache.to_str().unwrap()]
}

/// A real etcd holding the two-arm config, and a `weir` following it (its
/// last-good cache in `dir`) with that config applied.
pub struct Following {
    pub etcd: Etcd,
    /// The upstreams, kept running.
    pub _arms: Arms,
    pub weir: Weir,
    /// The revision of the import.
    pub imported: i64,
    pub dir: tempfile::TempDir,
}

impl Following {
    /// Weights `w1`/`w2` imported, the gateway at that revision.
    pub async fn start(w1: u32, w2: u32) -> Self {
        let etcd = Etcd::start().await.unwrap();
        let arms = Arms::start().await;
        let imported = import(&etcd, &arms.config(w1, w2)).await;
        let dir = tempfile::tempdir().unwrap();
        let weir = weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;
        wait_revision(&weir, imported).await;
        Self {
            etcd,
            _arms: arms,
            weir,
            imported,
            dir,
        }
    }

    /// The gateway's last-good cache file.
    pub fn cache(&self) -> std::path::PathBuf {
        self.dir.path().join("cache.json")
    }
}

/// Waits until the live config is at etcd revision `rev` or newer.
pub async fn wait_revision(weir: &Weir, rev: i64) {
    eventually(Duration::from_secs(15), || async {
        let live = weir.metric("weir_config_revision").await.unwrap_or(0.0) as i64;
        (live >= rev).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("revision {rev} not applied: {e}\n{}", weir.log()));
}

/// Waits until `series` reaches at least `n`.
pub async fn wait_metric(weir: &Weir, series: &str, n: f64) {
    eventually(Duration::from_secs(15), || async {
        let v = weir.metric(series).await.unwrap_or(0.0);
        (v >= n).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{series} did not reach {n}: {e}\n{}", weir.log()));
}

/// v2's share in percent over `n` requests.
pub async fn v2_share(weir: &Weir, n: usize) -> f64 {
    let counts = crate::common::split(weir, n, 32, &[]).await;
    counts.get("v2").copied().unwrap_or(0) as f64 * 100.0 / n as f64
}

/// Asserts v2's share over `n` requests fits a weight of `expected` percent
/// ([`crate::common::assert_share`]).
pub async fn assert_v2_share(weir: &Weir, n: usize, expected: f64, what: &str) {
    let share = v2_share(weir, n).await;
    crate::common::assert_share(share, n, expected, what);
}

/// `weirctl` against one etcd.
pub struct Ctl {
    pub endpoint: String,
}

/// One run: (exit code, stdout, stderr).
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Ctl {
    pub fn new(etcd: &Etcd) -> Self {
        Self {
            endpoint: etcd.endpoint(),
        }
    }

    /// `weirctl --etcd ENDPOINT`, to add arguments to.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weirctl"));
        cmd.arg("--etcd").arg(&self.endpoint);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let out = self.command().args(args).output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "weirctl {args:?}: {}{}",
            out.stdout, out.stderr
        );
        out
    }
}
