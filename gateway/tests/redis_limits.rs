//! Cluster-wide tenant limits in a real Redis: two gateways share one
//! request-rate and token allowance; with Redis gone they keep serving on
//! local limits and say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{SERVER, weir_bin};
use sha2::{Digest, Sha256};
use weir_test_support::upstream::{REPLY_HEADER, USAGE_HEADER};
use weir_test_support::{Redis, Upstream, Weir, eventually};

fn config(up: &Upstream, redis: &str, tenant_limits: &str) -> String {
    let digest = hex::encode(Sha256::digest(b"acme-key"));
    format!(
        "{SERVER}[limits]\nredis = \"{redis}\"\nredis_timeout_ms = 200\n\n\
         [[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\n\
         [[tenants]]\nname = \"acme\"\napi_keys = [\"{digest}\"]\n{tenant_limits}\n\
         [[routes]]\nname = \"chat\"\nauth = \"required\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n",
        up.addr
    )
}

/// Sends GETs from `clients` clients to the gateways in turn for `secs`;
/// returns (admitted, refused, elapsed seconds).
async fn hammer(gateways: &[&Weir], clients: usize, secs: u64) -> (u64, u64, f64) {
    let client = weir_test_support::client();
    let urls: Vec<String> = gateways
        .iter()
        .map(|w| w.url("/v1/chat/completions"))
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, urls) = (client.clone(), urls.clone());
        tasks.spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            let mut i = c;
            while started.elapsed() < Duration::from_secs(secs) {
                let resp = client
                    .get(&urls[i % urls.len()])
                    .bearer_auth("acme-key")
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => ok += 1,
                    429 => refused += 1,
                    s => assert_eq!(s, 200, "unexpected status"),
                }
                i += 1;
            }
            (ok, refused)
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, r) = r.unwrap();
        ok += o;
        refused += r;
    }
    (ok, refused, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_allowance_and_fall_back_to_local_limits() {
    let mut redis = Redis::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    // A burst of 5: a stall of the test machine shorter than 5 intervals
    // (125 ms) in which no request reaches Redis loses no allowance (with a
    // burst of 1, any stall over 25 ms did, and the count fell short).
    let burst = 5.0;
    let cfg = config(&up, &redis.url(), "requests_per_second = 40\nburst = 5\n");
    let a = Weir::start(weir_bin(), &cfg).await.unwrap();
    let b = Weir::start(weir_bin(), &cfg).await.unwrap();
    let local_decisions = || async {
        let mut n = 0.0;
        for w in [&a, &b] {
            n += w
                .metric("weir_ratelimit_local_fallbacks_total")
                .await
                .unwrap_or(0.0);
        }
        n
    };

    let (ok, refused, secs) = hammer(&[&a, &b], 8, 5).await;
    let expected = burst + 40.0 * secs;
    // A decision Redis answers later than `redis_timeout_ms` (a starved
    // machine) is made locally and may admit one request more.
    let local = local_decisions().await;
    eprintln!(
        "two gateways, shared: admitted {ok} in {secs:.2} s (expected {expected:.0}), refused {refused}, {local} decided locally"
    );
    assert!(
        ok as f64 >= expected * 0.95 && ok as f64 <= expected * 1.05 + local,
        "admitted {ok}, expected {expected:.0} - 5 % to + 5 % + {local} decided locally"
    );
    eventually(Duration::from_secs(20), || async {
        hammer(&[&a], 1, 1).await;
        (a.metric("weir_ratelimit_redis_up").await.unwrap() == 1.0).then_some(())
    })
    .await
    .unwrap();

    // Redis gone: requests are still served, each gateway on its own limit.
    redis.stop();
    let (ok, _, secs) = hammer(&[&a, &b], 8, 3).await;
    let local = 2.0 * (burst + 40.0 * secs);
    eprintln!(
        "two gateways, Redis down: admitted {ok} in {secs:.2} s (local limits allow {local:.0})"
    );
    assert!(
        ok as f64 > local * 0.6,
        "only {ok} admitted with Redis down"
    );
    assert!(
        ok as f64 <= local * 1.05,
        "{ok} admitted: beyond the local limits"
    );
    for w in [&a, &b] {
        assert_eq!(w.metric("weir_ratelimit_redis_up").await.unwrap(), 0.0);
        assert!(
            w.metric("weir_ratelimit_local_fallbacks_total")
                .await
                .unwrap()
                > 0.0
        );
    }

    // Back: the shared limit holds again.
    redis.resume().await.unwrap();
    eventually(Duration::from_secs(20), || async {
        hammer(&[&a], 1, 1).await;
        (a.metric("weir_ratelimit_redis_up").await.unwrap() == 1.0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_spent_on_one_gateway_count_on_the_other() {
    let redis = Redis::start().await.unwrap();
    let up = Upstream::local("v1").await.unwrap();
    let cfg = config(&up, &redis.url(), "tokens_per_minute = 100\n");
    let a = Weir::start(weir_bin(), &cfg).await.unwrap();
    let b = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    let ask = |w: &Weir| {
        client
            .post(w.url("/v1/chat/completions"))
            .bearer_auth("acme-key")
            .header(REPLY_HEADER, "a".repeat(30))
            .header(USAGE_HEADER, "1")
            .body("{}")
            .send()
    };
    // A request whose answer reports no usage: spends nothing, shows what is left.
    let remaining = |w: &Weir| {
        let req = client
            .get(w.url("/v1/chat/completions"))
            .bearer_auth("acme-key")
            .send();
        async move {
            let resp = req.await.unwrap();
            let left = resp
                .headers()
                .get("x-ratelimit-remaining-tokens")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (resp.status().as_u16(), left)
        }
    };
    // 31 tokens each, alternately spent on a and b; the other gateway sees
    // them (the writes go in the background: wait until each is counted).
    for (i, (spend, other)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        assert_eq!(ask(spend).await.unwrap().status(), 200);
        let want = 100 - 31 * (i as u64 + 1);
        eventually(Duration::from_secs(10), || async {
            (remaining(other).await == (200, Some(want))).then_some(())
        })
        .await
        .unwrap();
    }
    // 93 spent: one more is admitted, then the budget is gone on both.
    assert_eq!(ask(&b).await.unwrap().status(), 200);
    eventually(Duration::from_secs(10), || async {
        let (sa, sb) = (remaining(&a).await.0, remaining(&b).await.0);
        (sa == 429 && sb == 429).then_some(())
    })
    .await
    .unwrap();
}
