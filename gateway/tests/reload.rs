//! Config file reloads: applied under load without a failed request; an
//! invalid rewrite is rejected and the old split keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{config, generation, split, weir_bin};
use weir_test_support::upstream::DELAY_HEADER;
use weir_test_support::{Upstream, Weir, eventually};

/// Clients kept in flight across the reload.
const IN_FLIGHT: usize = 1_200;

/// Rewrites the config file with these arms and waits until the gateway
/// runs config generation `want`.
async fn rewrite(weir: &Weir, arms: &[(&str, &Upstream, u32)], want: f64) {
    weir.write_config(&config(arms, "")).unwrap();
    eventually(Duration::from_secs(10), || async {
        (generation(weir).await == want).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_under_load_fails_no_request_and_applies_the_new_split() {
    let (v1, v2, weir) = common::two_arms(90, 10).await;
    assert_eq!(generation(&weir).await, 1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let client = weir_test_support::client();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (client, url) = (client.clone(), weir.url("/v1/chat/completions"));
        let (stop, sent, started) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&started));
        workers.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                started.fetch_add(1, Ordering::Relaxed);
                // Each request holds its slot for 300 ms, so ~IN_FLIGHT are
                // in flight at any moment, including the moment of the swap.
                let resp = client.get(&url).header(DELAY_HEADER, "300").send().await;
                sent.fetch_add(1, Ordering::Relaxed);
                match resp {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        });
    }
    // Wait until every client has a request in flight, then swap the config.
    eventually(Duration::from_secs(30), || {
        let n = started.load(Ordering::Relaxed);
        async move { (n >= IN_FLIGHT).then_some(()) }
    })
    .await
    .unwrap();
    let in_flight_at_swap = started.load(Ordering::Relaxed) - sent.load(Ordering::Relaxed);
    rewrite(&weir, &[("v1", &v1, 50), ("v2", &v2, 50)], 2.0).await;
    // Let every client finish at least one more request on the new config.
    let after_swap = sent.load(Ordering::Relaxed);
    eventually(Duration::from_secs(30), || {
        let n = sent.load(Ordering::Relaxed);
        async move { (n >= after_swap + IN_FLIGHT).then_some(()) }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(r) = workers.join_next().await {
        failures.extend(r.unwrap());
    }
    let total = sent.load(Ordering::Relaxed);
    println!(
        "{total} requests, {in_flight_at_swap} in flight at the swap, {} failed",
        failures.len()
    );
    assert!(
        in_flight_at_swap >= 1_000,
        "only {in_flight_at_swap} in flight at the swap"
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let counts = split(&weir, 10_000, 64, &[]).await;
    let v2_share = counts.get("v2").copied().unwrap_or(0) as f64 / 100.0;
    println!("split after reload: {counts:?}");
    common::assert_share(v2_share, 10_000, 50.0, "v2 after the reload");
    assert_eq!(
        weir.metric("weir_config_reloads_total{result=\"applied\"}")
            .await
            .unwrap(),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rewrites_are_rejected_and_the_old_split_keeps_serving() {
    let (v1, v2) = (
        Upstream::local("v1").await.unwrap(),
        Upstream::local("v2").await.unwrap(),
    );
    let good = config(&[("v1", &v1, 90), ("v2", &v2, 10)], "");
    let weir = Weir::start(weir_bin(), &good).await.unwrap();

    // A valid document with an invalid value, then one that is not TOML at all.
    let bad_pool = good.replace("pool = \"pool-v2\"", "pool = \"engine-v3\"");
    for (i, bad) in [bad_pool, "[[routes]\nname = ".to_owned()]
        .iter()
        .enumerate()
    {
        weir.write_config(bad).unwrap();
        let want = (i + 1) as f64;
        eventually(Duration::from_secs(10), || async {
            let n = weir
                .metric("weir_config_reloads_total{result=\"rejected\"}")
                .await
                .unwrap();
            (n >= want).then_some(())
        })
        .await
        .unwrap();
        assert_eq!(generation(&weir).await, 1.0);
        let counts = split(&weir, 2_000, 32, &[]).await;
        let v2_share = counts.get("v2").copied().unwrap_or(0) as f64 / 20.0;
        common::assert_share(v2_share, 2_000, 10.0, "the old 90/10 split");
    }
    assert!(
        weir.log()
            .contains("routes[chat].arms[v2].pool: no pool named \\\"engine-v3\\\"")
            || weir.log().contains("no pool named")
    );

    // A later valid rewrite is applied normally.
    rewrite(&weir, &[("v1", &v1, 0), ("v2", &v2, 100)], 2.0).await;
    let counts = split(&weir, 500, 32, &[]).await;
    assert_eq!(counts.get("v2"), Some(&500));
}

/// Voluntary context switches of each thread of `pid`, by thread id.
fn wakeups(pid: u32) -> std::collections::HashMap<String, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let tid = task.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(tid, (comm.trim().to_owned(), switches));
    }
    out
}

/// Watching the config file costs nothing while it does not change: no
/// thread of an idle gateway wakes up to poll (a polling debouncer woke
/// 133 times a second, on the proxy's CPU). Pingora's timer thread ticks
/// every 10 ms by design and is left out; the health checks of this config
/// (every 100 ms, two pools) stay far below the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_watching_its_file_does_not_poll() {
    let (v1, v2, weir) = common::two_arms(90, 10).await;
    assert_eq!(generation(&weir).await, 1.0);
    let window = Duration::from_secs(2);
    let before = wakeups(weir.pid());
    // A measuring window, not a wait for an event.
    tokio::time::sleep(window).await;
    let after = wakeups(weir.pid());
    let busiest: Vec<(String, u64)> = after
        .iter()
        .filter(|(_, (comm, _))| comm != "Timer thread")
        .map(|(tid, (comm, n))| (comm.clone(), n - before.get(tid).map_or(0, |b| b.1)))
        .filter(|(_, n)| *n as f64 / window.as_secs_f64() > 50.0)
        .collect();
    assert!(
        busiest.is_empty(),
        "threads waking > 50 times a second while idle: {busiest:?}"
    );

    // And the watch still sees a change.
    rewrite(&weir, &[("v1", &v1, 50), ("v2", &v2, 50)], 2.0).await;
}
