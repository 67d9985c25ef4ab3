//! Circuit breakers, retries with their budget, fallback and the total
//! timeout, through the real gateway and real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{SERVER, weir_bin};
use weir_test_support::{Load, Upstream, Weir, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// A port nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One route `chat` over one pool `p` of `backends`, no health checks (so
/// only breakers and retries act), with `pool_extra` and `route_extra`
/// lines added to the pool and the route.
fn one_pool(backends: &[SocketAddr], pool_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "{SERVER}[[pools]]\nname = \"p\"\nbackends = [{}]\nhealth_check = {{ kind = \"none\" }}\n{pool_extra}\n\
         [[routes]]\nname = \"chat\"\narms = [{{ name = \"v1\", pool = \"p\", weight = 1 }}]\n{route_extra}\n",
        list.join(", ")
    )
}

async fn breaker_state(weir: &Weir, addr: SocketAddr) -> Option<f64> {
    weir.metric_sample(&format!(
        "weir_breaker_state{{backend=\"{addr}\",pool=\"p\"}}"
    ))
    .await
}

async fn transitions(weir: &Weir, addr: SocketAddr, to: &str) -> f64 {
    weir.metric(&format!(
        "weir_breaker_transitions_total{{backend=\"{addr}\",pool=\"p\",to=\"{to}\"}}"
    ))
    .await
    .unwrap()
}

async fn wait_breaker(weir: &Weir, addr: SocketAddr, state: f64) {
    eventually(WAIT, || async move {
        (breaker_state(weir, addr).await == Some(state)).then_some(())
    })
    .await
    .map_err(|e| {
        format!(
            "breaker of {addr} never reached {state}: {e}\n{}",
            weir.log()
        )
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_trips_its_breaker_and_half_open_probes_bring_it_back() {
    let mut a = Upstream::local("a").await.unwrap();
    let b = Upstream::local("b").await.unwrap();
    let a_addr = a.addr;
    let cfg = one_pool(
        &[a.addr, b.addr],
        "breaker = { consecutive_failures = 3, open_ms = 200, max_open_ms = 400, half_open_probes = 1 }",
        "",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    assert_eq!(breaker_state(&weir, a_addr).await, Some(0.0));

    let load = Load::start(&weir, 8);
    load.advance(200).await.unwrap();
    assert!(load.served_by("a") > 0 && load.served_by("b") > 0);

    // Kill a: connect failures open its breaker; each failed connect is
    // retried on b, so the transition costs (almost) nothing.
    a.stop().await;
    wait_breaker(&weir, a_addr, 1.0).await;
    let transition_errors = load.failed();
    eprintln!("client errors while the breaker opened: {transition_errors}");
    assert!(transition_errors <= 8, "{transition_errors} errors");

    // Open (and re-opened by failing half-open probes): b serves everything,
    // without errors. A request a client sent to a before the breaker
    // opened may still be answered by a (eight clients): count a's answers
    // once those have landed; errors count from now.
    let failed = load.failed();
    load.advance(20).await.unwrap();
    let from_a = load.served_by("a");
    load.advance(1_000).await.unwrap();
    assert_eq!(load.failed(), failed, "errors while a was cut off");
    assert_eq!(load.served_by("a"), from_a);
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    let backends = routes["pools"][0]["backends"].as_array().unwrap();
    let a_view = backends
        .iter()
        .find(|x| x["address"] == a_addr.to_string())
        .unwrap();
    assert!(
        matches!(a_view["breaker"].as_str(), Some("open" | "half_open")),
        "{a_view}"
    );

    // a comes back on its address: a probe succeeds, the breaker closes and
    // a takes traffic again.
    let a = Upstream::start("a", a_addr).await.unwrap();
    wait_breaker(&weir, a_addr, 0.0).await;
    load.advance(400).await.unwrap();
    let report = load.finish().await;
    assert!(
        a.hits() > 50,
        "a got {} requests after recovering",
        a.hits()
    );
    assert_eq!(
        report.failures.len(),
        transition_errors,
        "{:?}",
        report.failures
    );
    let opened = transitions(&weir, a_addr, "open").await;
    let closed = transitions(&weir, a_addr, "closed").await;
    assert!(
        opened >= 1.0 && closed == 1.0,
        "opened {opened}, closed {closed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_on_another_backend_within_the_budget() {
    let live = Upstream::local("v1").await.unwrap();
    let dead = dead_addr();
    // No breaker and round robin: every other request picks the dead
    // backend and needs a retry.
    let generous = one_pool(
        &[dead, live.addr],
        "balance = \"round_robin\"\nbreaker = { enabled = false }",
        "retry = { attempts = 1, budget_ratio = 1.0 }",
    );
    let weir = Weir::start(weir_bin(), &generous).await.unwrap();
    let served = common::split(&weir, 400, 8, &[]).await;
    assert_eq!(served["v1"], 400);
    assert_eq!(live.hits(), 400);
    let retried = weir
        .metric("weir_retries_total{cause=\"connect\",outcome=\"retried\",route=\"chat\"}")
        .await
        .unwrap();
    assert!(retried >= 150.0, "{retried} retries");
    drop(weir);

    // A tight budget: 1 retry a second (10 in the window) and no share.
    let tight = one_pool(
        &[dead, live.addr],
        "balance = \"round_robin\"\nbreaker = { enabled = false }",
        "retry = { attempts = 1, budget_ratio = 0.0, min_per_second = 1 }",
    );
    let weir = Weir::start(weir_bin(), &tight).await.unwrap();
    let client = weir_test_support::client();
    let mut failed = 0;
    for _ in 0..200 {
        let resp = client.get(weir.url("/")).send().await.unwrap();
        if resp.status() != 200 {
            assert_eq!(resp.status(), 502);
            failed += 1;
        }
    }
    let exhausted = weir
        .metric("weir_retries_total{cause=\"connect\",outcome=\"budget_exhausted\",route=\"chat\"}")
        .await
        .unwrap();
    let retried = weir
        .metric("weir_retries_total{cause=\"connect\",outcome=\"retried\",route=\"chat\"}")
        .await
        .unwrap();
    assert!(retried <= 10.0, "{retried} retries beyond the budget");
    assert_eq!(exhausted, f64::from(failed), "every refused retry is a 502");
    assert!(
        failed > 50,
        "only {failed} failures: the budget did not bind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_statuses_are_retried_for_idempotent_requests_only() {
    let failing = Upstream::local("failing").await.unwrap();
    failing.fail_share(100, 503);
    let good = Upstream::local("good").await.unwrap();
    // Round robin and no breaker: half the first attempts meet the failing
    // backend, whatever it answered before.
    let cfg = one_pool(
        &[failing.addr, good.addr],
        "balance = \"round_robin\"\nbreaker = { enabled = false }",
        "retry = { attempts = 1, on_statuses = [503], budget_ratio = 1.0 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    for _ in 0..100 {
        let resp = client.get(weir.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "good");
    }
    let mut passed_through = 0;
    for _ in 0..100 {
        let resp = client
            .post(weir.url("/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(matches!(status, 200 | 503), "status {status}");
        if status == 503 {
            assert_eq!(resp.headers()["x-upstream"], "failing");
            passed_through += 1;
        }
    }
    assert!(
        (30..=70).contains(&passed_through),
        "POSTs are never retried: {passed_through} of 100 reached the failing backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_with_every_backend_down_is_served_by_the_fallback_arm() {
    let stable = Upstream::local("stable").await.unwrap();
    let mut canary = Upstream::local("canary").await.unwrap();
    let canary_addr = canary.addr;
    let cfg = format!(
        "{SERVER}[[pools]]\nname = \"stable\"\nbackends = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n\
         [[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n\
         breaker = {{ consecutive_failures = 2, open_ms = 60000, max_open_ms = 60000 }}\n\
         [[routes]]\nname = \"chat\"\nfallback = \"v1\"\n\
         arms = [{{ name = \"v1\", pool = \"stable\", weight = 50 }}, {{ name = \"v2\", pool = \"p\", weight = 50 }}]\n",
        stable.addr, canary.addr
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    canary.stop().await;
    let load = Load::start(&weir, 4);
    wait_breaker(&weir, canary_addr, 1.0).await;
    let failed = load.failed();
    load.advance(400).await.unwrap();
    let report = load.finish().await;
    assert_eq!(report.failures.len(), failed, "{:?}", report.failures);
    assert_eq!(report.served.get("canary"), None);
    // Half the traffic is weighted to the canary; all of it fell back.
    assert!(
        report.fallbacks > report.sent / 4,
        "{} of {} fell back",
        report.fallbacks,
        report.sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_bounds_the_whole_exchange() {
    let slow = Upstream::local("slow").await.unwrap();
    let cfg = one_pool(
        &[slow.addr],
        "breaker = { enabled = false }",
        "timeouts = { total_ms = 300, read_ms = 10000 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    let resp = client
        .get(weir.url("/"))
        .header("x-test-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    // A fast answer is untouched.
    let resp = client.get(weir.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// A backend that accepts connections and never answers; it holds what it
/// accepted until the returned task is aborted. The counter says how many
/// connections it took: one per request sent to it, since none is answered.
async fn blackhole() -> (
    SocketAddr,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&taken);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(conn);
        }
    });
    (addr, task, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_backend_is_cut_off_by_its_breaker_within_the_route_budget() {
    let (hole, task, _) = blackhole().await;
    let good = Upstream::local("good").await.unwrap();
    // Round robin keeps sending to the blackhole: the breaker is what stops it
    // here (least request, the default, stops it sooner: the next test).
    let cfg = one_pool(
        &[hole, good.addr],
        "balance = \"round_robin\"\nbreaker = { consecutive_failures = 3, open_ms = 60000, max_open_ms = 60000 }",
        "timeouts = { total_ms = 300 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    let timeouts = &routes["routes"][0]["timeouts"];
    assert_eq!(timeouts["total_ms"], 300, "{timeouts}");
    assert_eq!(timeouts["read_ms"], 30_000, "the built-in read budget");
    let client = weir_test_support::client();
    // POSTs: never retried once sent, so every request the blackhole takes
    // is one the client sees fail.
    let mut timeouts_seen = 0;
    for _ in 0..40 {
        let started = std::time::Instant::now();
        let resp = client.post(weir.url("/")).body("{}").send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(status == 200 || status == 504, "unexpected {status}");
        if status == 504 {
            timeouts_seen += 1;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "held {:?}, past the 300 ms budget",
                started.elapsed()
            );
        }
        if breaker_state(&weir, hole).await == Some(1.0) {
            break;
        }
    }
    assert_eq!(
        breaker_state(&weir, hole).await,
        Some(1.0),
        "the blackhole's breaker never opened\n{}",
        weir.log()
    );
    assert_eq!(timeouts_seen, 3, "one failure per request past the budget");
    // Open: the good backend serves everything, at once.
    for _ in 0..10 {
        let resp = client.post(weir.url("/")).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_gets_almost_no_new_requests_under_least_request() {
    let (hole, task, taken) = blackhole().await;
    let good = Upstream::local("good").await.unwrap();
    // No breaker: the balancer alone keeps traffic off the hung backend.
    let cfg = one_pool(
        &[hole, good.addr],
        "breaker = { enabled = false }",
        "timeouts = { read_ms = 3000 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    // 16 closed-loop clients: blind round robin would leave 8 of them
    // waiting on the blackhole at any time.
    let load = Load::start(&weir, 16);
    // The first burst finds two backends with no history and splits; from
    // then on the blackhole's waiting requests make it the costly one.
    load.advance(200).await.unwrap();
    let early = taken.load(std::sync::atomic::Ordering::Relaxed);
    load.advance(2_000).await.unwrap();
    let later = taken.load(std::sync::atomic::Ordering::Relaxed) - early;
    assert!(
        later <= 2,
        "the blackhole took {later} new requests after the first burst ({early})"
    );
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    let pool = &routes["pools"][0];
    assert_eq!(pool["balance"], "least_request");
    // The admin view shows what the balancer sees: the blackhole holds
    // what it took and looks slow.
    let hole_view = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == hole.to_string())
        .unwrap();
    assert!(hole_view["in_flight"].as_u64().unwrap() >= 1, "{hole_view}");
    assert!(
        hole_view["latency_ms"].as_f64().unwrap() > 1.0,
        "{hole_view}"
    );
    let report = load.finish().await;
    assert_eq!(
        report.failures.len(),
        early + later,
        "{:?}",
        report.failures
    );
    assert!(report.served.get("good").copied().unwrap_or(0) >= 2_000);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_running_past_the_route_budget_counts_as_a_breaker_failure() {
    let slow = Upstream::local("slow").await.unwrap();
    let cfg = one_pool(
        &[slow.addr],
        "breaker = { consecutive_failures = 2, open_ms = 60000, max_open_ms = 60000 }",
        "timeouts = { total_ms = 400 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    let client = weir_test_support::client();
    for _ in 0..2 {
        // Lively (a chunk every 50 ms) but 3 s long: cut at the budget.
        let resp = client
            .post(weir.url("/v1/chat/completions"))
            .header(weir_test_support::upstream::SSE_HEADER, "x".repeat(60))
            .header(weir_test_support::upstream::SSE_GAP_HEADER, "50")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err(), "the stream was not cut");
    }
    wait_breaker(&weir, slow.addr, 1.0).await;
    let resp = client.post(weir.url("/")).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 503, "the open breaker admits nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_health_check_marks_a_blackhole_down() {
    let (hole, task, _) = blackhole().await;
    let cfg = one_pool(&[hole], "", "").replace(
        "health_check = { kind = \"none\" }",
        "health_check = { kind = \"http\", path = \"/healthz\", interval_ms = 100, timeout_ms = 200, unhealthy_threshold = 2 }",
    );
    let weir = Weir::start(weir_bin(), &cfg).await.unwrap();
    eventually(WAIT, || async {
        let routes = weir.admin_json("/admin/routes").await.ok()?;
        (routes["pools"][0]["backends"][0]["healthy"] == false).then_some(())
    })
    .await
    .unwrap();
    task.abort();
}

#[test]
fn bad_resilience_values_are_refused_with_their_paths() {
    let cfg = one_pool(
        &["127.0.0.1:1".parse().unwrap()],
        "breaker = { failure_ratio = 2.0, half_open_probes = 0, failures = [\"6xx\"] }",
        "retry = { attempts = 10, on_statuses = [404] }\ntimeouts = { total_ms = 0 }",
    );
    common::assert_check_refuses(
        &cfg,
        &[
            "pools[p].breaker.failure_ratio",
            "pools[p].breaker.half_open_probes",
            "pools[p].breaker.failures[0]",
            "routes[chat].retry.attempts",
            "routes[chat].retry.on_statuses[0]",
            "routes[chat].timeouts.total_ms",
        ],
    );
}
