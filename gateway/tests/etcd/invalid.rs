//! Invalid values put in etcd: named cases and a few hundred generated
//! malformed documents. Each is rejected (counted, logged with its problem),
//! the last good config keeps serving, the gateway never panics, and a later
//! valid value is applied normally.

use weir_conf::etcd::Docs;
use weir_test_support::Etcd;

use crate::support::{self, Arms, PREFIX, put, wait_metric, wait_revision};

/// Generated malformed values.
const GENERATED: usize = 300;

const WEIGHTS: &str = "routes/chat/weights";
const ROUTE: &str = "routes/chat";

/// Mutations of a valid document: truncations, byte flips, wrong types,
/// deleted fields, random JSON.
fn mutate(rng: &mut fastrand::Rng, valid: &str) -> String {
    let bytes = valid.as_bytes();
    match rng.u8(0..7) {
        0 => String::from_utf8_lossy(&bytes[..rng.usize(0..bytes.len())]).into_owned(),
        1 => {
            let mut b = bytes.to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        2 => {
            let wrong = [
                "\"ninety\"",
                "null",
                "[]",
                "{}",
                "-5",
                "1.5",
                "1e400",
                "99999999999999999999",
                "true",
            ];
            valid.replacen("90", wrong[rng.usize(0..wrong.len())], 1)
        }
        3 => {
            let fields = [
                "\"arms\"",
                "\"pool\"",
                "\"name\"",
                "\"weight\"",
                "\"prefix\"",
            ];
            let f = fields[rng.usize(0..fields.len())];
            valid.replacen(f, &format!("\"{}\"", rng.alphanumeric()), 1)
        }
        4 => {
            let junk = [
                "",
                " ",
                "{",
                "}",
                "[1,2]",
                "\"x\"",
                "42",
                "{\"a\":",
                "v1=90",
                "\u{0}",
                "=",
                "[[routes]]",
            ];
            junk[rng.usize(0..junk.len())].to_owned()
        }
        5 => valid.replacen("pool-v2", &format!("pool-{}", rng.alphanumeric()), 1),
        _ => {
            let mut s = valid.to_owned();
            let at = rng.usize(0..s.len());
            if s.is_char_boundary(at) {
                s.insert(at, ['{', '}', '"', ',', ':', '['][rng.usize(0..6)]);
            }
            s
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_are_rejected_and_the_last_good_config_keeps_serving() {
    let etcd = Etcd::start().await.unwrap();
    let arms = Arms::start().await;
    let imported = support::import(&etcd, &arms.config(90, 10)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut weir = support::weir(&etcd.endpoint(), &dir.path().join("cache.json")).await;
    wait_revision(&weir, imported).await;
    let mut client = support::client(&etcd).await;

    // The documents as they are, to tell a generated value that happens to
    // be valid from an invalid one.
    let resp = client
        .get(
            PREFIX,
            Some(weir_conf::etcd::etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let good: Docs = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv
                .key_str()
                .unwrap()
                .strip_prefix(PREFIX)
                .unwrap()
                .to_owned();
            (key, kv.value().to_vec())
        })
        .collect();
    let route_doc = String::from_utf8(good[ROUTE].clone()).unwrap();
    let base = weir_conf::Config::default();
    let invalid = |docs: &Docs, key: &str, value: &str| {
        let mut docs = docs.clone();
        docs.insert(key.to_owned(), value.as_bytes().to_vec());
        weir_conf::etcd::build(&base, &docs, PREFIX).is_err()
    };

    let named: Vec<(&str, String, &str)> = vec![
        (WEIGHTS, "{\"v1\":90,".to_owned(), "invalid JSON"),
        (WEIGHTS, r#"{"v1":-5,"v2":10}"#.to_owned(), "must be >= 0"),
        (
            WEIGHTS,
            r#"{"v1":0,"v2":0}"#.to_owned(),
            "at least one arm needs a weight > 0",
        ),
        (
            WEIGHTS,
            r#"{"v1":"ninety"}"#.to_owned(),
            "is not an integer",
        ),
        (WEIGHTS, r#"{"v3":10}"#.to_owned(), "has no arm named"),
        (
            ROUTE,
            route_doc.replacen("pool-v2", "engine-v3", 1),
            "no pool named",
        ),
        (
            ROUTE,
            route_doc.replacen("\"prefix\"", "\"prefx\"", 1),
            "unknown field",
        ),
        ("pools/pool-v2", "[not toml".to_owned(), "invalid TOML"),
        ("routes/chat/extra/key", "{}".to_owned(), "unknown key"),
        ("timeouts", r#"{"connect_ms":-1}"#.to_owned(), "connect_ms"),
    ];
    let mut rejected = 0.0;
    for (key, value, problem) in &named {
        assert!(
            invalid(&good, key, value),
            "{key} = {value} should be invalid"
        );
        put(&mut client, key, value).await;
        rejected += 1.0;
        wait_metric(&weir, "weir_config_rejected_total", rejected).await;
        assert!(
            weir.log().contains(problem),
            "no {problem:?} in the log for {key} = {value}"
        );
        // Restore the key (a delete for keys that were not there).
        match good.get(*key) {
            Some(v) => {
                put(&mut client, key, std::str::from_utf8(v).unwrap()).await;
            }
            None => {
                support::delete(&mut client, key).await;
            }
        }
    }

    // What etcd holds now, generated values included.
    let mut current = good.clone();
    let mut rng = fastrand::Rng::with_seed(0x5eed_e7cd);
    let mut sent = 0;
    while sent < GENERATED {
        let (key, source) = if rng.bool() {
            (WEIGHTS, r#"{"v1":90,"v2":10}"#)
        } else {
            (ROUTE, route_doc.as_str())
        };
        let value = mutate(&mut rng, source);
        if !invalid(&current, key, &value) {
            continue;
        }
        put(&mut client, key, &value).await;
        current.insert(key.to_owned(), value.into_bytes());
        rejected += 1.0;
        wait_metric(&weir, "weir_config_rejected_total", rejected).await;
        sent += 1;
    }
    assert!(weir.is_running(), "weir exited:\n{}", weir.log());
    assert!(!weir.log().contains("panicked"), "{}", weir.log());

    // Throughout, the last good 90/10 config served.
    support::assert_v2_share(&weir, 2_000, 10.0, "v2 under the last good config").await;
    println!("{} values rejected", rejected);

    // A later valid value is applied normally.
    let rev = put(&mut client, ROUTE, &route_doc).await;
    let rev2 = put(&mut client, WEIGHTS, r#"{"v1":0,"v2":100}"#).await;
    assert!(rev2 > rev);
    wait_revision(&weir, rev2).await;
    assert_eq!(support::v2_share(&weir, 300).await, 100.0);
}
