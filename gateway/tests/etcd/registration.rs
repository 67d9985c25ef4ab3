//! Backends registering themselves: two registered upstreams of one pool
//! both get traffic; one that dies (its keep-alives stop and its socket
//! closes, as with SIGKILL) leaves the pool when its lease expires, and no
//! client request fails meanwhile; one that deregisters leaves at once.

use std::time::Duration;

use weir_conf::etcd::{Registration, RegistrationOptions};
use weir_test_support::{Etcd, Upstream, eventually};

use crate::common::SERVER;
use crate::support::{self, Load, settings, wait_revision};

/// A pool of registered members only, and a route to it.
fn config() -> String {
    format!(
        "{SERVER}[[pools]]\nname = \"engines\"\nregistered = true\n\
         health_check = {{ kind = \"tcp\", interval_ms = 100 }}\n\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/\"\narms = [{{ name = \"v1\", pool = \"engines\", weight = 1 }}]\n"
    )
}

async fn register(etcd: &Etcd, up: &Upstream, ttl_secs: u64) -> Registration {
    let options = RegistrationOptions::new("engines", &up.addr.to_string())
        .with_ttl(Duration::from_secs(ttl_secs));
    Registration::start(settings(&etcd.endpoint()), options)
        .await
        .unwrap()
}

/// The status of a request routed to pool `engines`.
async fn status(weir: &weir_test_support::Weir) -> u16 {
    let resp = weir_test_support::client()
        .get(weir.url("/"))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// Backend addresses of pool `engines` in `/admin/routes`.
async fn members(weir: &weir_test_support::Weir) -> Vec<String> {
    let routes = weir.admin_json("/admin/routes").await.unwrap();
    let pools = routes["pools"].as_array().unwrap();
    let pool = pools.iter().find(|p| p["name"] == "engines").unwrap();
    let mut out: Vec<String> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_members_get_traffic_and_a_dead_one_leaves_when_its_lease_expires() {
    let etcd = Etcd::start().await.unwrap();
    let imported = support::import(&etcd, &config()).await;
    let dir = tempfile::tempdir().unwrap();
    let weir = support::weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;
    wait_revision(&weir, imported).await;
    // No member yet: the pool is valid and empty, requests get a 503.
    assert_eq!(status(&weir).await, 503);

    let mut a = Upstream::local("a").await.unwrap();
    let b = Upstream::local("b").await.unwrap();
    let reg_a = register(&etcd, &a, 2).await;
    let reg_b = register(&etcd, &b, 2).await;
    let want = {
        let mut v = vec![a.addr.to_string(), b.addr.to_string()];
        v.sort();
        v
    };
    eventually(Duration::from_secs(15), || async {
        (members(&weir).await == want).then_some(())
    })
    .await
    .unwrap();
    let before = (a.hits(), b.hits());
    let load = Load::start(&weir, 8);
    load.advance(400).await.unwrap();
    let failures = load.finish().await.failures;
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(
        a.hits() > before.0 && b.hits() > before.1,
        "both members serve"
    );

    // `a` dies: no keep-alives, listener and connections closed. Once the
    // health check has noticed, no request fails, while `a` waits for its
    // lease to expire and then leaves the pool.
    drop(reg_a);
    a.stop().await;
    let series = format!(
        "weir_backend_healthy{{backend=\"{}\",pool=\"engines\"}}",
        a.addr
    );
    eventually(Duration::from_secs(10), || async {
        (weir.metric_sample(&series).await == Some(0.0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", weir.log()));
    let load = Load::start(&weir, 8);
    eventually(Duration::from_secs(20), || async {
        (members(&weir).await == vec![b.addr.to_string()]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", weir.log()));
    let b_hits = b.hits();
    load.advance(400).await.unwrap();
    let weir_test_support::load::Report { sent, failures, .. } = load.finish().await;
    println!(
        "{sent} requests while a dead member waited for its lease, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(
        b.hits() >= b_hits + 400,
        "b takes all traffic once a has left"
    );

    // A clean exit leaves at once (no TTL wait): the pool is empty again.
    reg_b.deregister().await.unwrap();
    eventually(Duration::from_secs(10), || async {
        members(&weir).await.is_empty().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(status(&weir).await, 503);
}
