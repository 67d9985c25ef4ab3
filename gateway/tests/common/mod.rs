//! Shared helpers of the gateway's black-box tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use futures::StreamExt;
use weir_test_support::{Upstream, Weir};

/// The `[server]` table every test config starts with: OS-chosen ports, no grace period.
pub const SERVER: &str = "[server]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nthreads = 2\ngrace_period_seconds = 0\n\n";

/// Two upstreams `v1` and `v2` behind a `weir` splitting `chat` by `w1`/`w2`.
pub async fn two_arms(w1: u32, w2: u32) -> (Upstream, Upstream, Weir) {
    let v1 = Upstream::local("v1").await.unwrap();
    let v2 = Upstream::local("v2").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&[("v1", &v1, w1), ("v2", &v2, w2)], ""))
        .await
        .unwrap();
    (v1, v2, weir)
}

pub fn weir_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

/// A config with one route `chat` on `/` and one single-backend pool per arm.
/// `arms` = (arm name, upstream, weight).
pub fn config(arms: &[(&str, &Upstream, u32)], extra_route: &str) -> String {
    let mut s = String::from(SERVER);
    for (name, up, _) in arms {
        s.push_str(&format!(
            "[[pools]]\nname = \"pool-{name}\"\nbackends = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"tcp\", interval_ms = 100 }}\n\n",
            up.addr
        ));
    }
    s.push_str(
        "[[routes]]\nname = \"chat\"\nprefix = \"/\"\nsticky_header = \"x-user-id\"\nfallback = \"",
    );
    s.push_str(arms[0].0);
    s.push_str("\"\narms = [\n");
    for (name, _, w) in arms {
        s.push_str(&format!(
            "  {{ name = \"{name}\", pool = \"pool-{name}\", weight = {w} }},\n"
        ));
    }
    s.push_str("]\n");
    s.push_str(extra_route);
    s
}

/// Sends `n` GETs with `concurrency` in flight; counts `x-weir-arm` values.
/// Panics on any non-200 answer or transport error.
pub async fn split(
    weir: &Weir,
    n: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let client = weir_test_support::client();
    let url = weir.url("/v1/chat/completions");
    let results = futures::stream::iter(0..n)
        .map(|_| {
            let mut req = client.get(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            async move {
                let resp = req.send().await.expect("request failed");
                assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
                let arm = resp.headers()["x-weir-arm"].to_str().unwrap().to_owned();
                let upstream = resp.headers()["x-upstream"].to_str().unwrap().to_owned();
                assert_eq!(
                    arm, upstream,
                    "arm header and the upstream that answered disagree"
                );
                arm
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut counts = HashMap::new();
    for arm in results {
        *counts.entry(arm).or_insert(0) += 1;
    }
    counts
}

/// Asserts that `share` (percent of `n` independent weighted picks) fits a
/// route weight of `expected` percent: within five standard deviations of
/// the binomial draw (`5 * sqrt(p * (1 - p) / n)`). A correct split falls
/// outside about once in 1.7 million runs (a fixed band of three or four
/// deviations failed now and then across the suite's many draws); a
/// config that did not apply (10 % against 50 or 90) stays far outside.
pub fn assert_share(share: f64, n: usize, expected: f64, what: &str) {
    let p = expected / 100.0;
    let band = 5.0 * (p * (1.0 - p) / n as f64).sqrt() * 100.0;
    assert!(
        (share - expected).abs() <= band,
        "{what}: {share:.2}% over {n} requests, expected {expected}% +- {band:.2}"
    );
}

pub async fn generation(weir: &Weir) -> f64 {
    weir.metric("weir_config_generation").await.unwrap()
}

/// Route `chat` split 80/20 between `stable` (the fallback arm) and
/// `canary` (no breaker, no health checks), with a `rollback` line for the route.
pub fn canary_config(stable: &Upstream, canary: &Upstream, rollback: &str) -> String {
    format!(
        "{SERVER}[[pools]]\nname = \"stable\"\nbackends = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n\
         [[pools]]\nname = \"canary\"\nbackends = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\nbreaker = {{ enabled = false }}\n\
         [[routes]]\nname = \"chat\"\nfallback = \"stable\"\n{rollback}\n\
         arms = [{{ name = \"stable\", pool = \"stable\", weight = 80 }}, {{ name = \"canary\", pool = \"canary\", weight = 20 }}]\n",
        stable.addr, canary.addr
    )
}

/// Runs `weir check` on `config` and asserts it is refused with every one of
/// `wanted` in its problem list.
pub fn assert_check_refuses(config: &str, wanted: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(weir_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "weir check accepted:\n{config}");
    let text = String::from_utf8_lossy(&out.stderr);
    for want in wanted {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

/// Whether `/admin/routes` shows the arm `arm` of the first route as rolled back.
pub async fn rolled_back(weir: &Weir, arm: &str) -> Option<bool> {
    let routes = weir.admin_json("/admin/routes").await.ok()?;
    routes["routes"][0]["arms"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == arm)
        .and_then(|a| a["rolled_back"].as_bool())
}
