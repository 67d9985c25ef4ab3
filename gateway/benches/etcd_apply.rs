//! Put → first request routed by the new weights, through a real etcd and
//! the real `weir` binary, over 100 weight changes.
//!
//! ```sh
//! cargo bench -p weir-gateway --bench etcd_apply
//! ```
//!
//! Each change flips route `chat` between all-`v1` and all-`v2`, so the first
//! response from the other arm is the first request routed by the new
//! weights. One request is in flight at a time; the time is taken from just
//! before the put to the arrival of that response. Prints P50, P90, P99 and
//! the maximum, and the gateway's own `weir_config_apply_seconds` (watch
//! event received → snapshot live).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use weir_conf::etcd::etcd_client::{Client, PutOptions};
use weir_conf::etcd::{EtcdSettings, Store};
use weir_test_support::{Etcd, Upstream, Weir};

const CHANGES: usize = 100;

fn config(v1: &Upstream, v2: &Upstream) -> String {
    format!(
        "[server]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nthreads = 1\ngrace_period_seconds = 0\naccess_log = false\n\n\
         [[pools]]\nname = \"pool-v1\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[pools]]\nname = \"pool-v2\"\nbackends = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/\"\narms = [\n  {{ name = \"v1\", pool = \"pool-v1\", weight = 100 }},\n  {{ name = \"v2\", pool = \"pool-v2\", weight = 0 }},\n]\n",
        v1.addr, v2.addr
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("etcd_apply: run with `cargo bench -p weir-gateway --bench etcd_apply`");
        return;
    }
    let etcd = Etcd::start().await.unwrap();
    let v1 = Upstream::local("v1").await.unwrap();
    let v2 = Upstream::local("v2").await.unwrap();
    let text = config(&v1, &v2);
    let settings = EtcdSettings::new(vec![etcd.endpoint()], "/weir/");
    let mut store = Store::connect(settings).await.unwrap();
    store
        .import(
            &weir_conf::parse_toml(&text, "bench").unwrap(),
            weir_conf::etcd::Prune::Delete,
            &weir_conf::etcd::Write::by(weir_conf::etcd::audit::Actor::cli("bench")),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let server_only = text.split("[[pools]]").next().unwrap();
    let weir = Weir::start_with(
        Path::new(env!("CARGO_BIN_EXE_weir")),
        server_only,
        &[
            "--etcd",
            &etcd.endpoint(),
            "--etcd-cache",
            cache.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let http = weir_test_support::client();
    let url = weir.url("/v1/chat/completions");
    let arm = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-weir-arm")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // Warm the connection pool.
    for _ in 0..100 {
        http.get(&url).send().await.unwrap();
    }
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    let mut samples = Vec::with_capacity(CHANGES);
    let mut requests = 0usize;
    for i in 0..CHANGES {
        let (value, want) = if i % 2 == 0 {
            (r#"{"v1":0,"v2":100}"#, "v2")
        } else {
            (r#"{"v1":100,"v2":0}"#, "v1")
        };
        let start = Instant::now();
        client
            .put("/weir/routes/chat/weights", value, None::<PutOptions>)
            .await
            .unwrap();
        loop {
            let resp = http.get(&url).send().await.unwrap();
            requests += 1;
            assert_eq!(resp.status(), 200);
            if arm(&resp) == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "change {i} never applied"
            );
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let sum = weir.metric("weir_config_apply_seconds_sum").await.unwrap();
    let count = weir
        .metric("weir_config_apply_seconds_count")
        .await
        .unwrap();
    println!(
        "etcd put -> first request on the new weights, {CHANGES} changes ({requests} requests):\n  \
         P50 {:.2} ms  P90 {:.2} ms  P99 {:.2} ms  max {:.2} ms\n  \
         gateway apply (event -> live), mean over {count} applies: {:.3} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        sum * 1e3 / count.max(1.0),
    );
}
