#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use super::layout::{Docs, KeyKind, Members, assemble, explode};
use super::{CacheFile, EtcdSettings, RegisterFlags};
use crate::error::{ConfigError, Problems};
use crate::model::{Config, EtcdConfig};

const PREFIX: &str = "/weir/";

fn demo_config() -> Config {
    crate::parse_toml(crate::DEMO_CONFIG, "demo").unwrap()
}

fn docs(config: &Config) -> Docs {
    explode(config)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

fn problems(docs: &Docs) -> Vec<String> {
    match assemble(&Config::default(), docs, PREFIX, Members::Merge)
        .and_then(crate::Snapshot::build)
    {
        Err(ConfigError::Invalid { problems }) => {
            problems.0.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn explode_then_assemble_gives_the_config_back() {
    let config = demo_config();
    let got = assemble(&Config::default(), &docs(&config), PREFIX, Members::Merge).unwrap();
    assert_eq!(got.pools, config.pools);
    assert_eq!(got.routes, config.routes);
    assert_eq!(got.timeouts, config.timeouts);
    crate::Snapshot::build(got).unwrap();
}

#[test]
fn filters_travel_as_their_own_keys() {
    let mut config = demo_config();
    config.filters = crate::parse_toml(
        "[[filters]]\nname = \"words\"\nwords = [{ word = \"坏词\" }]\n",
        "t",
    )
    .unwrap()
    .filters;
    let d = docs(&config);
    assert!(d.contains_key("filters/words"));
    let got = assemble(&Config::default(), &d, PREFIX, Members::Merge).unwrap();
    assert_eq!(got.filters, config.filters);
}

#[test]
fn tenants_and_auth_travel_as_their_own_keys() {
    let mut config = demo_config();
    let extra = crate::parse_toml(
        "[[tenants]]\nname = \"acme\"\napi_keys = [\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\nrequests_per_second = 5\n\n\
         [[auth.jwt]]\nname = \"idp\"\nalgorithm = \"RS256\"\njwks_file = \"jwks.json\"\n",
        "t",
    )
    .unwrap();
    config.tenants = extra.tenants;
    config.auth = extra.auth;
    let d = docs(&config);
    assert!(d.contains_key("tenants/acme") && d.contains_key("auth"));
    let got = assemble(&Config::default(), &d, PREFIX, Members::Merge).unwrap();
    assert_eq!(got.tenants, config.tenants);
    assert_eq!(got.auth, config.auth);
    assert_eq!(
        KeyKind::parse("tenants/acme"),
        Some(KeyKind::Tenant("acme"))
    );
    assert_eq!(KeyKind::parse("auth"), Some(KeyKind::Auth));
    assert_eq!(KeyKind::parse("tenants/"), None);
}

#[test]
fn keys_are_classified() {
    assert_eq!(KeyKind::parse("timeouts"), Some(KeyKind::Timeouts));
    assert_eq!(KeyKind::parse("pools/a"), Some(KeyKind::Pool("a")));
    assert_eq!(
        KeyKind::parse("pools/a/members/10.0.0.1:80"),
        Some(KeyKind::Member {
            pool: "a",
            addr: "10.0.0.1:80"
        })
    );
    assert_eq!(KeyKind::parse("routes/r"), Some(KeyKind::Route("r")));
    assert_eq!(
        KeyKind::parse("routes/r/weights"),
        Some(KeyKind::Weights("r"))
    );
    for bad in [
        "",
        "pools",
        "pools/",
        "routes/r/x",
        "pools/a/members/",
        "other/x",
        "routes//weights",
    ] {
        assert_eq!(KeyKind::parse(bad), None, "{bad}");
    }
}

#[test]
fn weights_override_and_their_problems_name_the_full_key() {
    let config = demo_config();
    let route = &config.routes[0];
    let mut d = docs(&config);
    let arms: Vec<&str> = route.arms.iter().map(|a| a.name.as_str()).collect();
    let key = format!("routes/{}/weights", route.name);
    d.insert(key.clone(), format!("{{\"{}\":7}}", arms[0]).into_bytes());
    let got = assemble(&Config::default(), &d, PREFIX, Members::Merge).unwrap();
    assert_eq!(got.routes[0].arms[0].weight, 7);
    assert_eq!(
        got.routes[0].arms[1].weight, route.arms[1].weight,
        "unnamed arms keep theirs"
    );

    d.insert(key.clone(), b"{\"nope\":1,\"x\":\"y\"}".to_vec());
    let got = problems(&d);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(&format!("{PREFIX}{key}: weights must be integers")),
        "{got:?}"
    );
    d.insert(key.clone(), b"{\"nope\":1}".to_vec());
    let got = problems(&d);
    assert!(got[0].contains("has no arm named \"nope\""), "{got:?}");
    d.insert(key, b"{}".to_vec());
    assert!(problems(&d)[0].contains("names no arm"));
}

#[test]
fn values_may_be_toml_and_names_must_match_their_key() {
    let mut d = docs(&demo_config());
    d.insert("timeouts".into(), b"connect_ms = 250\n".to_vec());
    let got = assemble(&Config::default(), &d, PREFIX, Members::Merge).unwrap();
    assert_eq!(got.timeouts.connect_ms, Some(250));
    let (key, value) = d.iter().find(|(k, _)| k.starts_with("pools/")).unwrap();
    let (key, value) = (key.clone(), String::from_utf8(value.clone()).unwrap());
    d.insert(
        key.clone(),
        value
            .replacen("\"name\":\"", "\"name\":\"x", 1)
            .into_bytes(),
    );
    assert!(
        problems(&d)
            .iter()
            .any(|p| p.contains("differs from the key"))
    );
    d.insert(key, b"\xff\xfe".to_vec());
    assert!(problems(&d).iter().any(|p| p.contains("not UTF-8")));
}

#[test]
fn unknown_keys_and_an_empty_prefix_are_errors() {
    let mut d = docs(&demo_config());
    d.insert("rotues/chat".into(), b"{}".to_vec());
    assert!(
        problems(&d)
            .iter()
            .any(|p| p.starts_with("/weir/rotues/chat: unknown key"))
    );
    let got = problems(&Docs::new());
    assert!(got[0].contains("holds no routes"), "{got:?}");
}

#[test]
fn registered_members_join_their_pool() {
    let config = demo_config();
    let pool = config.pools[0].name.clone();
    let existing = config.pools[0].backends[0].address.clone();
    let mut d = docs(&config);
    let add = |d: &mut Docs, pool: &str, addr: &str, value: &str| {
        d.insert(
            format!("pools/{pool}/members/{addr}"),
            value.as_bytes().to_vec(),
        );
    };
    add(
        &mut d,
        &pool,
        "10.9.9.9:1",
        r#"{"address":"10.9.9.9:1","weight":3}"#,
    );
    add(
        &mut d,
        &pool,
        &existing,
        &format!(r#"{{"address":"{existing}"}}"#),
    );
    add(&mut d, "gone", "10.9.9.8:1", r#"{"address":"10.9.9.8:1"}"#);
    let got = assemble(&Config::default(), &d, PREFIX, Members::Merge).unwrap();
    let backends = &got.pools[0].backends;
    assert_eq!(backends.len(), config.pools[0].backends.len() + 1);
    assert!(
        backends
            .iter()
            .any(|b| b.address == "10.9.9.9:1" && b.weight == 3)
    );
    // Export leaves members out.
    let got = assemble(&Config::default(), &d, PREFIX, Members::Ignore).unwrap();
    assert_eq!(got.pools[0].backends, config.pools[0].backends);
    // A member whose value names another address is an error.
    add(&mut d, &pool, "10.9.9.7:1", r#"{"address":"10.9.9.6:1"}"#);
    assert!(
        problems(&d)
            .iter()
            .any(|p| p.contains("differs from the key"))
    );
}

/// Thousands of generated malformed documents: every one gives a result
/// (valid or a problem list), never a panic.
#[test]
fn generated_malformed_documents_never_panic() {
    let base = docs(&demo_config());
    let keys: Vec<String> = base.keys().cloned().collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut invalid = 0;
    for _ in 0..5_000 {
        let mut d = base.clone();
        let key = keys[(next() % keys.len() as u64) as usize].clone();
        let mut value = d[&key].clone();
        match next() % 4 {
            0 => value.truncate((next() % (value.len() as u64 + 1)) as usize),
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let i = (next() % value.len().max(1) as u64) as usize;
                    if let Some(b) = value.get_mut(i) {
                        *b = (next() & 0xff) as u8;
                    }
                }
            }
            2 => {
                let i = (next() % (value.len() as u64 + 1)) as usize;
                value.splice(i..i, b"{\"weight\":-1,[".iter().copied());
            }
            _ => {
                d.insert(format!("{key}/weights"), value.clone());
            }
        }
        d.insert(key, value);
        let result = assemble(&Config::default(), &d, PREFIX, Members::Merge)
            .and_then(crate::Snapshot::build);
        if let Err(e) = result {
            assert!(!e.to_string().is_empty());
            invalid += 1;
        }
    }
    assert!(
        invalid > 4_000,
        "only {invalid} of 5000 mutations were invalid"
    );
}

#[test]
fn the_cache_round_trips_and_refuses_other_prefixes_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let d = docs(&demo_config());
    CacheFile::new(PREFIX, 42, &d).write(&path).unwrap();
    let back = CacheFile::read(&path, PREFIX).unwrap();
    assert_eq!(back.revision, 42);
    assert_eq!(back.docs(), d);
    let err = CacheFile::read(&path, "/other/").unwrap_err().to_string();
    assert!(err.contains("written for prefix"), "{err}");
    std::fs::write(&path, "{\"format\":1,").unwrap();
    assert!(
        CacheFile::read(&path, PREFIX)
            .unwrap_err()
            .to_string()
            .contains("not a usable cache")
    );
    assert!(CacheFile::read(&dir.path().join("none"), PREFIX).is_err());
    // No temp file is left behind.
    CacheFile::new(PREFIX, 43, &d).write(&path).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Writers that share a process id (gateways in containers are all PID 1
/// on a shared cache volume; here, threads of one process) never rename
/// each other's half-written file over the cache.
#[test]
fn concurrent_writers_never_leave_a_torn_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let d = docs(&demo_config());
    CacheFile::new(PREFIX, 1, &d).write(&path).unwrap();
    std::thread::scope(|s| {
        for writer in 0..4i64 {
            let (path, d) = (&path, &d);
            s.spawn(move || {
                for i in 0..100 {
                    CacheFile::new(PREFIX, writer * 1000 + i, d)
                        .write(path)
                        .unwrap();
                }
            });
        }
        let path = &path;
        s.spawn(move || {
            for _ in 0..400 {
                let cache = CacheFile::read(path, PREFIX);
                assert!(cache.is_ok(), "a torn cache: {:?}", cache.err());
            }
        });
    });
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn settings_report_every_bad_value() {
    let mut problems = Problems::default();
    let config = EtcdConfig {
        prefix: "weir".into(),
        password: Some("p".into()),
        tls: Some(Default::default()),
        connect_timeout_ms: 0,
        ..EtcdConfig::new(vec!["127.0.0.1:2379".into(), "http://ok:1".into()])
    };
    let s = EtcdSettings::from_config(&config, "source.etcd", &mut problems);
    assert_eq!(s.prefix, "/weir/", "the prefix is normalised");
    let got: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    for want in [
        "source.etcd.password: needs username",
        "source.etcd.connect_timeout_ms: 0 must be between 1 and 600000",
        "source.etcd.endpoints[0]: \"127.0.0.1:2379\" must look like",
        "source.etcd.endpoints[1]: TLS options need https:// endpoints",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "no {want:?} in {got:#?}"
        );
    }
}

#[test]
fn register_flags_resolve_to_a_registration() {
    let bound: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    assert!(RegisterFlags::default().resolve(bound).unwrap().is_none());
    let flags = RegisterFlags {
        register_etcd: vec!["http://127.0.0.1:2379".into()],
        pool: Some("engine-v1".into()),
        advertise: None,
        register_weight: 2,
        register_ttl: 5,
        register_prefix: "/weir/".into(),
        ..RegisterFlags::default()
    };
    let (settings, options) = flags.resolve(bound).unwrap().unwrap();
    assert_eq!(settings.prefix, "/weir/");
    assert_eq!(options.address, "127.0.0.1:9001");
    assert_eq!(options.weight, 2);
    let wildcard: SocketAddr = "0.0.0.0:9001".parse().unwrap();
    let err = flags.resolve(wildcard).unwrap_err().to_string();
    assert!(err.contains("--advertise"), "{err}");
    let advertised = RegisterFlags {
        advertise: Some("10.0.0.7:9001".parse().unwrap()),
        ..flags.clone()
    };
    assert_eq!(
        advertised.resolve(wildcard).unwrap().unwrap().1.address,
        "10.0.0.7:9001"
    );
    let bad = RegisterFlags {
        pool: Some("no spaces".into()),
        ..flags.clone()
    };
    assert!(
        bad.resolve(bound)
            .unwrap_err()
            .to_string()
            .contains("not a pool name")
    );
    let bad = RegisterFlags {
        register_ttl: 0,
        ..flags
    };
    assert!(bad.resolve(bound).unwrap_err().to_string().contains("TTL"));
}

#[test]
fn register_flags_take_tls_files_and_a_password_from_a_file() {
    let bound: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let flags = RegisterFlags {
        register_etcd: vec!["https://etcd.weir.svc:2379".into()],
        pool: Some("engine-v1".into()),
        register_cacert: Some("/etc/etcd/ca.crt".into()),
        register_cert: Some("/etc/etcd/tls.crt".into()),
        register_key: Some("/etc/etcd/tls.key".into()),
        register_tls_domain: Some("weir-etcd".into()),
        register_user: Some(format!("engine:${{file:{}}}", secret.display())),
        ..RegisterFlags::default()
    };
    let (settings, _) = flags.resolve(bound).unwrap().unwrap();
    assert_eq!(settings.user, Some(("engine".into(), "s3cret".into())));
    let tls = settings.tls.unwrap();
    assert_eq!(
        tls.ca.as_deref(),
        Some(std::path::Path::new("/etc/etcd/ca.crt"))
    );
    assert_eq!(tls.domain.as_deref(), Some("weir-etcd"));
    assert!(tls.identity.is_some());
    let half = RegisterFlags {
        register_key: None,
        ..flags.clone()
    };
    let err = half.resolve(bound).unwrap_err().to_string();
    assert!(err.contains("--register-key"), "{err}");
    let missing = RegisterFlags {
        register_user: Some("engine:${file:/nonexistent/password}".into()),
        ..flags
    };
    let err = missing.resolve(bound).unwrap_err().to_string();
    assert!(err.contains("cannot read secret file"), "{err}");
}

#[test]
fn every_problem_names_the_key_of_its_document() {
    let config = demo_config();
    let route = &config.routes[0];
    let mut d = docs(&config);
    let key = format!("routes/{}", route.name);
    let pool = format!("\"pool\":\"{}\"", route.arms[0].pool);
    let value = String::from_utf8(d[&key].clone()).unwrap();
    d.insert(
        key.clone(),
        value
            .replacen(&pool, "\"pool\":\"engine-v3\"", 1)
            .into_bytes(),
    );
    let padded = format!("{{}}{}", " ".repeat(crate::model::MAX_DOCUMENT));
    d.insert("timeouts".into(), padded.into_bytes());
    d.insert("rotues/x".into(), b"{}".to_vec());
    let Err(ConfigError::Invalid { problems }) = super::build(&Config::default(), &d, PREFIX)
    else {
        panic!("expected invalid");
    };
    let got: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    for want in [
        format!(
            "/weir/{key}: arms[{}].pool: no pool named \"engine-v3\"",
            route.arms[0].name
        ),
        "/weir/rotues/x: unknown key".to_owned(),
        "/weir/timeouts: the document is".to_owned(),
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(&want)),
            "missing {want:?} in {got:#?}"
        );
    }
    let keys = super::invalid_keys(&problems);
    assert_eq!(keys.len(), 3, "{keys:?}");
    let line = super::summary(&problems, 80);
    assert!(line.starts_with("3 invalid key(s): /weir/"), "{line}");
    assert!(line.len() <= 80 && line.ends_with("..."), "{line}");
}

#[test]
fn negative_weights_are_a_problem_of_the_weights_key() {
    let config = demo_config();
    let mut d = docs(&config);
    let route = &config.routes[0];
    let key = format!("routes/{}/weights", route.name);
    d.insert(
        key.clone(),
        format!("{{\"{}\":-5}}", route.arms[0].name).into_bytes(),
    );
    let got = problems(&d);
    assert!(
        got[0].starts_with(&format!("/weir/{key}: weights must be integers >= 0")),
        "{got:?}"
    );
}
