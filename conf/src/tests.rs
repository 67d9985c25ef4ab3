#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn build(text: &str) -> Result<Snapshot, ConfigError> {
    Snapshot::build(parse_toml(text, "test")?)
}

fn req<'a>(host: Option<&'a str>, path: &'a str) -> matching::Request<'a> {
    matching::Request {
        host,
        path,
        ..Default::default()
    }
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
    let chat = matching::Request {
        model: Some("smollm2-135m-instruct"),
        ..req(None, "/v1/chat/completions")
    };
    let r = s.route_for(&chat).unwrap();
    assert_eq!(r.name, "chat");
    assert_eq!(r.arms.len(), 2);
    assert_eq!(r.arm_for_model("smollm2-135m-instruct:2"), Some(1));
    let embed = matching::Request {
        model: Some("all-minilm-l6-v2"),
        ..req(None, "/v1/embeddings")
    };
    assert_eq!(s.route_for(&embed).unwrap().name, "embeddings");
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
    assert_eq!(s.route_for(&req(None, "/v2/models")).unwrap().name, "v2");
    assert_eq!(s.route_for(&req(None, "/v1/models")).unwrap().name, "root");
    assert_eq!(
        s.route_for(&req(Some("api.example.com"), "/v2/x"))
            .unwrap()
            .name,
        "hosted"
    );
    assert_eq!(
        s.route_for(&req(Some("other"), "/v2/x")).unwrap().name,
        "v2"
    );
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
folds = { case = false }
[[filters]]
name = "w"
words = [{ word = " " }]
folds = { traditional = "maybe", separators = "commas", max_gap = 17 }
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
        "filters[w].folds: only the bundled sensitive-words module folds",
        "filters[w].folds.traditional: \"maybe\" is not auto, on or off",
        "filters[w].folds.separators: \"commas\" is not none",
        "filters[w].folds.max_gap: 17 must be between 0 and 16",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "no {want:?} in {got:#?}"
        );
    }
    let err = build("[[filters]]\nname = \"w\"\nwords = []\nactoin = \"mask\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `actoin`"), "{err}");
}

const GRPC_AND_MODELS: &str = r#"
[[pools]]
name = "http"
backends = [{ address = "127.0.0.1:1" }]
[[pools]]
name = "grpc"
protocol = "h2c"
backends = [{ address = "127.0.0.1:2" }]
[[routes]]
name = "any"
arms = [{ name = "a", pool = "http", weight = 1 }]
[[routes]]
name = "lm"
models = ["tiny-lm"]
arms = [{ name = "a", pool = "http", weight = 1 }]
[[routes]]
name = "mlp"
models = ["mlp"]
arms = [{ name = "a", pool = "http", weight = 1 }]
[[routes]]
name = "oip-grpc"
grpc = "inference.GRPCInferenceService"
arms = [{ name = "a", pool = "grpc", weight = 1 }]
[[routes]]
name = "infer-grpc"
grpc = "inference.GRPCInferenceService/ModelInfer"
arms = [{ name = "a", pool = "grpc", weight = 1 }]
"#;

#[test]
fn routes_choose_by_grpc_service_method_and_model() {
    let s = build(GRPC_AND_MODELS).unwrap();
    let pick = |path, grpc, model| {
        s.route_for(&matching::Request {
            host: None,
            path,
            grpc,
            model,
        })
        .map(|r| r.name.as_str())
    };
    let live = "/inference.GRPCInferenceService/ServerLive";
    assert_eq!(
        pick("/inference.GRPCInferenceService/ModelInfer", true, None),
        Some("infer-grpc")
    );
    assert_eq!(
        pick("/inference.GRPCInferenceService/ModelInferX", true, None),
        Some("oip-grpc")
    );
    assert_eq!(pick(live, true, None), Some("oip-grpc"));
    // Not gRPC: the service's path falls to the general route.
    assert_eq!(pick(live, false, None), Some("any"));
    assert_eq!(pick("/other.Service/Call", true, None), Some("any"));
    assert_eq!(
        pick("/v1/chat/completions", false, Some("tiny-lm")),
        Some("lm")
    );
    assert_eq!(
        pick("/v1/chat/completions", false, Some("tiny-lm:2")),
        Some("lm")
    );
    assert_eq!(
        pick("/v1/chat/completions", false, Some("tiny-lmx")),
        Some("any")
    );
    assert_eq!(
        pick("/v2/models/mlp/infer", false, Some("mlp")),
        Some("mlp")
    );
    assert_eq!(pick("/v1/chat/completions", false, None), Some("any"));
}

#[test]
fn grpc_and_model_mistakes_are_reported() {
    let text = GRPC_AND_MODELS
        .replace(
            r#"pool = "grpc", weight = 1 }]
[[routes]]
name = "infer-grpc""#,
            r#"pool = "http", weight = 1 }]
[[routes]]
name = "infer-grpc""#,
        )
        .replace(
            r#"models = ["mlp"]"#,
            r#"models = ["tiny-lm", "", "x", "x"]"#,
        )
        .replace(
            r#"grpc = "inference.GRPCInferenceService/ModelInfer""#,
            r#"grpc = "bad name/Model.Infer"
prefix = "/v2/"
models = ["m"]"#,
        );
    let got = problems(&text);
    for want in [
        r#"routes[oip-grpc].arms[a].pool: gRPC needs HTTP/2: pool "http" must have protocol = "h2c" (or "h2" with tls)"#,
        r#"routes[mlp].models[1]: "" must be 1-256 characters without spaces"#,
        r#"routes[mlp].models[3]: "x" is listed twice"#,
        r#"routes[infer-grpc].grpc: a gRPC route matches by service or method, not by prefix: drop `prefix`"#,
        r#"routes[infer-grpc].grpc: "bad name/Model.Infer" must be a gRPC service (`package.Service`) or method (`package.Service/Method`)"#,
        "routes[infer-grpc].models: gRPC routes cannot choose by model (it is inside the protobuf body)",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "missing {want:?} in {got:#?}"
        );
    }
    assert!(
        got.iter().any(|g| g.starts_with("routes[")
            && g.ends_with(r#"already serves model "tiny-lm" on this host and prefix"#)),
        "{got:#?}"
    );
}

#[test]
fn tracing_settings_are_checked() {
    let s =
        build("[server.tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 0.25\n")
            .unwrap();
    let t = s.server.tracing.unwrap();
    assert_eq!(
        (t.endpoint.as_str(), t.service_name.as_str(), t.sample_ratio),
        ("http://127.0.0.1:4317", "weir", 0.25)
    );
    assert!(build("").unwrap().server.tracing.is_none());
    let got = problems(
        "[server.tracing]\notlp_endpoint = \"localhost:4317\"\nsample_ratio = 2.0\nservice_name = \"\"\n",
    );
    assert_eq!(
        got,
        [
            "server.tracing.sample_ratio: 2 must be between 0.0 and 1.0",
            "server.tracing.service_name: must not be empty",
            "server.tracing.otlp_endpoint: \"localhost:4317\" must be an http:// or https:// URL of an OTLP/gRPC collector",
        ]
    );
}

#[test]
fn a_tls_listener_needs_an_address_and_readable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "x").unwrap();
    let text = format!(
        "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        dir.join("missing.pem").display().to_string()
    );
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("server.tls.key: cannot read"), "{got:?}");
    let bad =
        problems("[server.tls]\nlisten = \"nowhere\"\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n");
    assert_eq!(
        bad,
        ["server.tls.listen: \"nowhere\" is not an IP:PORT address"]
    );
    let ok = build(
        "[server.tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n",
    )
    .unwrap();
    assert_eq!(ok.server.tls.unwrap().listen.port(), 8443);
}

#[test]
fn long_values_are_refused_and_never_repeated_whole() {
    let long = "a".repeat(5_000);
    let text = DEMO_CONFIG
        .replacen("prefix = \"/\"", &format!("prefix = \"/{long}\""), 1)
        .replacen("\"x-ab-group\"", &format!("\"x-{long}\""), 1)
        .replacen(
            "name = \"chat\"",
            &format!("name = \"chat\"\nhost = \"{long}\""),
            1,
        )
        .replacen("name = \"tasks\"", &format!("name = \"{long}\""), 1);
    let got = problems(&text);
    for want in [
        "routes[chat].prefix: 5001 bytes, longer than the limit of 1024",
        "routes[chat].ab_header: 5002 bytes, longer than the limit of 128",
        "routes[chat].host: 5000 bytes, longer than the limit of 253",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "missing {want:?} in {got:#?}"
        );
    }
    assert!(
        got.iter()
            .any(|g| g.contains("… (5000 bytes) must be 1-64")),
        "{got:#?}"
    );
    assert!(got.iter().all(|g| g.len() < 600), "{got:#?}");

    let huge = format!("# {}\n{DEMO_CONFIG}", " ".repeat(model::MAX_DOCUMENT));
    let err = parse_toml(&huge, "big.toml").unwrap_err().to_string();
    assert!(err.starts_with("big.toml: the document is"), "{err}");
    assert!(
        err.contains("larger than the limit of 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn a_file_without_routes_is_refused_unless_routes_come_from_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[server]\nproxy = \"127.0.0.1:0\"\n").unwrap();
    let err = load_file(&path).unwrap_err().to_string();
    assert!(err.contains("routes: the config holds no routes"), "{err}");
    std::fs::write(
        &path,
        "[source.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .unwrap();
    assert!(load_file(&path).unwrap().routes.is_empty());
}

#[test]
fn a_missing_pool_on_a_grpc_route_is_reported_once() {
    let text = GRPC_AND_MODELS.replacen(
        r#"pool = "grpc", weight = 1 }]"#,
        r#"pool = "engine-v3", weight = 1 }]"#,
        1,
    );
    assert_eq!(
        problems(&text),
        ["routes[oip-grpc].arms[a].pool: no pool named \"engine-v3\""]
    );
}

#[test]
fn arm_models_are_checked_and_served() {
    let base = r#"
[[pools]]
name = "p"
backends = [{ address = "127.0.0.1:1" }]
"#;
    let bad = format!(
        r#"{base}
[[routes]]
name = "chat"
models = ["chat"]
arms = [
  {{ name = "a", pool = "p", weight = 1, model = "up:1" }},
  {{ name = "b", pool = "p", weight = 1, model = "up:1" }},
  {{ name = "c", pool = "p", weight = 1, model = "has space" }},
]

[[routes]]
name = "grpc"
grpc = "inference.GRPCInferenceService"
arms = [{{ name = "a", pool = "p", weight = 1, model = "m" }}]
"#
    );
    let found = problems(&bad);
    for want in [
        "routes[chat].arms[b].model: \"up:1\" is another arm's model",
        "routes[chat].arms[c].model: \"has space\" must be 1-256 characters without spaces",
        "routes[grpc].arms[a].model: gRPC routes cannot rename models",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "{want} not in {found:#?}"
        );
    }
    let good = format!(
        r#"{base}
[[routes]]
name = "chat"
models = ["chat"]
arms = [
  {{ name = "a", pool = "p", weight = 9, model = "vendor/up-a" }},
  {{ name = "b", pool = "p", weight = 1 }},
]
"#
    );
    let snap = build(&good).unwrap();
    let route = &snap.routes[0];
    assert!(route.renames_model());
    assert_eq!(route.arm_for_model("vendor/up-a"), Some(0));
    assert_eq!(route.arm_for_model("chat"), None);
    assert!(route.serves_model(Some("vendor/up-a")));
    assert!(route.serves_model(Some("chat:2")));
    assert!(!route.serves_model(Some("vendor/up-b")));
    assert_eq!(
        route.catalogue().collect::<Vec<_>>(),
        ["chat", "vendor/up-a"]
    );
}
