//! Size limits of etcd values: an oversized header name, path prefix or
//! whole document is reported as an invalid key and never applied, the way
//! the same values in a config file are refused.

use crate::support::{self, Ctl, Following, put, wait_metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_invalid_keys_and_never_applied() {
    let following = Following::start(90, 10).await;
    let Following { etcd, weir, .. } = &following;
    let mut client = support::client(etcd).await;
    let ctl = Ctl::new(etcd);
    let route = ctl.ok(&["--json", "config", "export"]).json()["config"]["routes"][0].clone();

    let long = "a".repeat(200_000);
    let mut with_header = route.clone();
    with_header["ab_header"] = serde_json::json!(format!("x-{long}"));
    let mut with_prefix = route.clone();
    with_prefix["prefix"] = serde_json::json!(format!("/{long}"));
    // A valid weights document padded past the document limit.
    let padded = format!("{{\"v1\":50,\"v2\":50}}{}", " ".repeat(1_100_000));
    let cases = [
        (
            "routes/chat",
            with_header.to_string(),
            "routes/chat: ab_header: ",
        ),
        (
            "routes/chat",
            with_prefix.to_string(),
            "routes/chat: prefix: ",
        ),
        ("routes/chat/weights", padded, "routes/chat/weights: "),
    ];
    let good_route = route.to_string();
    for (i, (key, value, problem)) in cases.iter().enumerate() {
        put(&mut client, key, value).await;
        wait_metric(weir, "weir_config_rejected_total", (i + 1) as f64).await;
        assert!(
            weir.log().contains(problem),
            "no {problem:?} in\n{}",
            weir.log()
        );
        let out = ctl.run(&["config", "check"]);
        assert_eq!(out.code, 1, "{key}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!("/weir/{key}")) && out.stderr.contains(problem),
            "{key}: {}",
            out.stderr
        );
        // The last good 90/10 config serves throughout.
        support::assert_v2_share(weir, 400, 10.0, key).await;
        if *key == "routes/chat" {
            put(&mut client, key, &good_route).await;
        } else {
            support::delete(&mut client, key).await;
        }
    }
    assert!(
        weir.log().lines().all(|l| l.len() < 20_000),
        "a value was logged whole"
    );
}
