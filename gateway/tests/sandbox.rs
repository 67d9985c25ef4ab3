//! The gateway's sandbox (`weir --sandbox`, on by default where the kernel
//! allows): visible in `/proc/<pid>/status`, the metrics and `/readyz`; a
//! reloaded config naming a file outside what the sandbox allows is
//! refused (and accepted with the folder in `[server.sandbox] read`, or
//! without the sandbox). Every other gateway test runs sandboxed too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{SERVER, generation, weir_bin};
use weir_test_support::{Upstream, Weir, client, eventually};

fn status(weir: &Weir) -> Option<(u32, u32)> {
    weir_conf::sandbox::proc_status(&weir.pid().to_string())
}

/// One route to `up`, with the bundled word filter reading `words_file`
/// when given; `sandbox` is a `[server.sandbox]` table or nothing.
fn config(up: &Upstream, words_file: Option<&std::path::Path>, sandbox: &str) -> String {
    let mut s = String::from(SERVER);
    s.push_str(sandbox);
    s.push_str(&format!(
        "\n[[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\" }}]\n\n",
        up.addr
    ));
    s.push_str("[[routes]]\nname = \"chat\"\nprefix = \"/\"\narms = [{ name = \"a\", pool = \"p\", weight = 100 }]\n");
    if let Some(file) = words_file {
        s.push_str("filters = { request = [\"words\"] }\n\n");
        s.push_str(&format!(
            "[[filters]]\nname = \"words\"\nmodule = \"sensitive-words\"\nwords_file = \"{}\"\naction = \"block\"\n",
            file.display()
        ));
    }
    s
}

async fn chat(weir: &Weir, text: &str) -> u16 {
    client()
        .post(weir.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_gateway_sandboxes_itself_by_default_and_serves() {
    let up = Upstream::local("v1").await.unwrap();
    let weir = Weir::start(weir_bin(), &config(&up, None, ""))
        .await
        .unwrap();
    assert_eq!(status(&weir), Some((1, 2)), "{}", weir.log());
    assert_eq!(weir.metric("weir_sandbox_enabled").await.unwrap(), 1.0);
    let (code, ready) = weir.readyz().await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(ready["sandbox"]["enabled"], true, "{ready}");
    assert_eq!(ready["sandbox"]["seccomp"], true, "{ready}");
    assert_eq!(ready["sandbox"]["landlock"], "full", "{ready}");
    assert!(weir.log().contains("sandbox applied"), "{}", weir.log());
    assert_eq!(chat(&weir, "hello").await, 200, "{}", weir.log());

    // `on` refuses to start where a layer is missing or a thread already
    // runs (outside Landlock's rules).
    let on = Weir::start_with(weir_bin(), &config(&up, None, ""), &["--sandbox", "on"])
        .await
        .unwrap();
    assert_eq!(status(&on), Some((1, 2)), "{}", on.log());
    assert_eq!(chat(&on, "hello").await, 200);

    let off = Weir::start_with(weir_bin(), &config(&up, None, ""), &["--sandbox", "off"])
        .await
        .unwrap();
    assert_eq!(status(&off), Some((0, 0)));
    assert_eq!(off.metric("weir_sandbox_enabled").await.unwrap(), 0.0);
    assert_eq!(off.readyz().await.unwrap().1["sandbox"]["enabled"], false);
    assert_eq!(chat(&off, "hello").await, 200);
}

/// Starts a gateway (with `args`) on a config without filters, then
/// rewrites it to filter with a word list in a folder of its own; whether
/// the rewrite was applied.
async fn reload_with_words_elsewhere(sandbox: &str, args: &[&str]) -> (bool, Weir) {
    let up = Upstream::local("v1").await.unwrap();
    let words = tempfile::tempdir().unwrap();
    let file = words.path().join("words.txt");
    std::fs::write(&file, "forbidden\n").unwrap();
    let sandbox = sandbox.replace("WORDS", &words.path().display().to_string());
    let weir = Weir::start_with(weir_bin(), &config(&up, None, &sandbox), args)
        .await
        .unwrap();
    assert_eq!(generation(&weir).await, 1.0);
    assert_eq!(chat(&weir, "forbidden").await, 200);
    weir.write_config(&config(&up, Some(&file), &sandbox))
        .unwrap();
    // Applied (generation 2) or rejected (the counter): one of them comes.
    eventually(Duration::from_secs(20), || async {
        let rejected = weir
            .metric("weir_config_rejected_total")
            .await
            .unwrap_or(0.0);
        (generation(&weir).await == 2.0 || rejected >= 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("neither applied nor rejected:\n{}", weir.log()));
    let applied = generation(&weir).await == 2.0;
    let expected = if applied { 400 } else { 200 };
    assert_eq!(chat(&weir, "forbidden").await, expected, "{}", weir.log());
    (applied, weir)
}

#[tokio::test]
async fn a_reload_naming_a_file_outside_the_sandbox_is_refused() {
    let (applied, weir) = reload_with_words_elsewhere("", &[]).await;
    assert!(!applied, "read a file outside the sandbox:\n{}", weir.log());
    let log = weir.log();
    assert!(
        log.contains("config rejected") && log.contains("Permission denied"),
        "{log}"
    );
    assert_eq!(status(&weir), Some((1, 2)));

    // The folder listed in [server.sandbox] read: allowed.
    let (applied, weir) =
        reload_with_words_elsewhere("[server.sandbox]\nread = [\"WORDS\"]\n", &[]).await;
    assert!(applied, "{}", weir.log());

    // No sandbox: allowed (the refusal above was the sandbox's).
    let (applied, weir) = reload_with_words_elsewhere("", &["--sandbox", "off"]).await;
    assert!(applied, "{}", weir.log());
}

/// `THP_enabled` of `/proc/<pid>/status` (Linux 5.0 and later).
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// Transparent huge pages are off for the gateway (an idle one held two
/// thirds more memory with them), unless the allocator's own switch
/// `MIMALLOC_ALLOW_THP` is set, which then decides.
#[tokio::test]
async fn transparent_huge_pages_off_unless_the_allocator_is_told() {
    // Children inherit the flag: a test run with it already off (or a
    // kernel that does not report it) cannot tell the two cases apart.
    if thp_enabled(std::process::id()).as_deref() != Some("1") {
        eprintln!("skipped: THP already off for the tests, or not reported");
        return;
    }
    let up = Upstream::local("v1").await.unwrap();
    let by_default: &[(&str, &str)] = &[];
    for (env, expected) in [(by_default, "0"), (&[("MIMALLOC_ALLOW_THP", "1")], "1")] {
        let weir = Weir::start_with_env(weir_bin(), &config(&up, None, ""), env)
            .await
            .unwrap();
        assert_eq!(
            thp_enabled(weir.pid()).as_deref(),
            Some(expected),
            "{env:?}: {}",
            weir.log()
        );
        assert_eq!(chat(&weir, "hello").await, 200);
    }
}
