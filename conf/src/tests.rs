#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn build(text: &str) -> Result<Snapshot, ConfigError> {
    Snapshot::build(parse_toml(text, "test")?)
}

fn problems(text: &str) -> Vec<String> {
    match build(text) {
        Err(ConfigError::Invalid { problems }) => {
            problems.0.iter().map(|p| p.to_string()).collect()
        }
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn demo_config_is_valid() {
    let s = demo().unwrap();
    assert_eq!(s.server.proxy.to_string(), "127.0.0.1:8080");
    let r = s.route_for(None, "/v1/chat/completions").unwrap();
    assert_eq!(r.name, "chat");
    assert_eq!(r.arms.len(), 2);
    assert_eq!(r.arms[0].weight, 90);
    assert_eq!(r.fallback, Some(0));
    assert_eq!(r.sticky_header.as_deref(), Some("x-user-id"));
}

#[test]
fn validation_lists_every_problem_with_paths() {
    let got = problems(
        r#"
[server]
proxy = "nonsense"
[[pools]]
name = "p1"
backends = [{ address = "127.0.0.1:1", weight = 0 }, { address = "127.0.0.1:1" }]
[[routes]]
name = "chat"
prefix = "v1"
fallback = "v9"
arms = [
  { name = "v1", pool = "p1", weight = -5 },
  { name = "v2", pool = "engine-v3", weight = 10 },
]
"#,
    );
    let want = [
        "server.proxy: \"nonsense\" is not an IP:PORT address",
        "pools[p1].backends[0].weight: 0 must be between 1 and 65535",
        "pools[p1].backends[1].address: 127.0.0.1:1 is listed twice",
        "routes[chat].prefix: must start with '/'",
        "routes[chat].arms[v1].weight: must be >= 0",
        "routes[chat].arms[v2].pool: no pool named \"engine-v3\"",
        "routes[chat].fallback: no arm named \"v9\"",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn unknown_fields_are_rejected() {
    let err = build("[server]\nproxi = \"127.0.0.1:1\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unknown field `proxi`"), "{msg}");
}

#[test]
fn all_zero_weights_and_empty_sets_are_rejected() {
    let got = problems(
        r#"
[[pools]]
name = "p"
backends = []
[[routes]]
name = "r"
arms = [{ name = "a", pool = "p", weight = 0 }]
[[routes]]
name = "r"
prefix = "/x"
arms = []
"#,
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("pools[p].backends: needs at least one backend"))
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("routes[r].arms: at least one arm needs a weight > 0"))
    );
    assert!(got.contains(&"routes[r].name: duplicate route name".to_owned()));
    assert!(got.contains(&"routes[r].arms: needs at least one arm".to_owned()));
}

#[test]
fn routes_match_host_first_then_longest_prefix() {
    let s = build(
        r#"
[[pools]]
name = "p"
backends = [{ address = "127.0.0.1:1" }]
[[routes]]
name = "root"
arms = [{ name = "a", pool = "p", weight = 1 }]
[[routes]]
name = "v2"
prefix = "/v2/"
arms = [{ name = "a", pool = "p", weight = 1 }]
[[routes]]
name = "hosted"
host = "API.example.com"
arms = [{ name = "a", pool = "p", weight = 1 }]
"#,
    )
    .unwrap();
    assert_eq!(s.route_for(None, "/v2/models").unwrap().name, "v2");
    assert_eq!(s.route_for(None, "/v1/models").unwrap().name, "root");
    assert_eq!(
        s.route_for(Some("api.example.com"), "/v2/x").unwrap().name,
        "hosted"
    );
    assert_eq!(s.route_for(Some("other"), "/v2/x").unwrap().name, "v2");
}

#[test]
fn timeouts_inherit_and_override() {
    let s = build(
        r#"
[timeouts]
connect_ms = 250
[[pools]]
name = "p"
backends = [{ address = "127.0.0.1:1" }]
[[routes]]
name = "r"
timeouts = { read_ms = 5 }
arms = [{ name = "a", pool = "p", weight = 1 }]
"#,
    )
    .unwrap();
    let t = s.routes[0].timeouts;
    assert_eq!(t.connect.as_millis(), 250);
    assert_eq!(t.read.as_millis(), 5);
    assert_eq!(t.write, snapshot::DEFAULT_WRITE);
}

#[test]
fn a_pool_of_registered_members_may_start_empty() {
    let s = build(
        r#"
[[pools]]
name = "p"
registered = true
[[routes]]
name = "r"
arms = [{ name = "a", pool = "p", weight = 1 }]
"#,
    )
    .unwrap();
    assert!(s.pools[0].backends.is_empty());
}

#[test]
fn filters_are_validated_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# comment\n坏词\tabuse\n\nsecret\n").unwrap();
    let good = format!(
        r#"
[[pools]]
name = "p"
backends = [{{ address = "127.0.0.1:1" }}]
[[filters]]
name = "w"
words = [{{ word = "bomb", category = "violence" }}]
words_file = "{}"
action = "block"
[[routes]]
name = "r"
arms = [{{ name = "a", pool = "p", weight = 1 }}]
filters = {{ request = ["w"], response = ["w"], non_json = "skip" }}
"#,
        words.display()
    );
    let s = build(&good).unwrap();
    let f = &s.filters[0];
    assert_eq!(
        f.words,
        vec![
            ("bomb".to_owned(), "violence".to_owned()),
            ("坏词".to_owned(), "abuse".to_owned()),
            ("secret".to_owned(), "sensitive".to_owned()),
        ]
    );
    assert_eq!(f.action, crate::filters::FilterAction::Block);
    assert_eq!(s.routes[0].filters.request, vec![0]);
    assert_eq!(s.routes[0].filters.max_body, 1 << 20);

    let got = problems(
        r#"
[[pools]]
name = "p"
backends = [{ address = "127.0.0.1:1" }]
[[filters]]
name = "w"
module = "/nonexistent/x.wasm"
words_file = "/nonexistent/words.txt"
mask_char = "**"
memory_limit_mb = 0
[[filters]]
name = "w"
words = [{ word = " " }]
[[routes]]
name = "r"
arms = [{ name = "a", pool = "p", weight = 1 }]
filters = { request = ["nope"], max_body_bytes = 0 }
"#,
    );
    for want in [
        "filters[w].module: cannot read",
        "filters[w].words_file: cannot read",
        "filters[w].words: needs at least one word",
        "filters[w].mask_char:",
        "filters[w].memory_limit_mb: 0 must be between",
        "filters[w].name: duplicate filter name",
        "filters[w].words[0]: a word must not be blank",
        "routes[r].filters.request[0]: no filter named \"nope\"",
        "routes[r].filters.max_body_bytes: 0 must be between",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "no {want:?} in {got:#?}"
        );
    }
    let err = build("[[filters]]\nname = \"w\"\nwords = []\nactoin = \"mask\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `actoin`"), "{err}");
}
