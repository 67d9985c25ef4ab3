//! Misbehaving modules: each failure has its kind, comes quickly, follows
//! the policy, and leaves nothing behind; and no call sees another's state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{filter, module_misbehaving_on_bang as on_bang, run_stream, seen, wat_filter};
use weir_filters::openai::filter_request;
use weir_filters::{Action, Filter, FilterError, Policy, Verdict};

const LOOP: &str = "(loop $l (br $l))";
const GROW_TRAP: &str =
    "(loop $l (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable)) (br $l))";
const GROW_IGNORING_FAILURE: &str = "(loop $l (drop (memory.grow (i32.const 16))) (br $l))";
const TRAP: &str = "unreachable";
const STACK_OVERFLOW: &str = "(drop (call $deep (i32.const 0)))";
const OUT_OF_BOUNDS_RECORD: &str = "(return (i64.const 0x7FFF000000000008))";
const OUT_OF_RANGE_MATCH: &str = "(i32.store (i32.const 0) (i32.const 1))
      (i32.store (i32.const 4) (local.get $len))
      (i32.store (i32.const 8) (i32.const 0))
      (i32.store (i32.const 12) (i32.add (local.get $len) (i32.const 5)))
      (i32.store (i32.const 16) (i32.const 0))
      (return (i64.const 20))";
const NEGATIVE: &str = "(return (i64.const -7))";

fn cases() -> Vec<(&'static str, &'static str)> {
    vec![
        (LOOP, "out_of_fuel"),
        (GROW_TRAP, "memory_limit"),
        (GROW_IGNORING_FAILURE, "memory_limit"),
        (TRAP, "trap"),
        (STACK_OVERFLOW, "trap"),
        (OUT_OF_BOUNDS_RECORD, "garbage"),
        (OUT_OF_RANGE_MATCH, "garbage"),
        (NEGATIVE, "guest_error"),
    ]
}

#[test]
fn each_misbehaviour_has_its_error_kind_quickly() {
    for (body, kind) in cases() {
        let f = wat_filter(&on_bang(body), Policy::FailClosed).unwrap();
        // well-behaved input works
        assert_eq!(f.scan("fine").unwrap().holdback_start, 4);
        let started = Instant::now();
        let error = f.scan("!boom").unwrap_err();
        assert_eq!(error.kind(), kind, "{body}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{body} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn bad_modules_are_rejected_at_load() {
    let valid = on_bang(TRAP);
    let wrong_version = valid.replace(
        r#"(func (export "weir_abi_version") (result i32) (i32.const 1))"#,
        r#"(func (export "weir_abi_version") (result i32) (i32.const 2))"#,
    );
    let with_import = valid.replace(
        "(module",
        r#"(module (import "env" "log" (func $log (param i32)))"#,
    );
    let missing_scan = valid.replace(r#"(export "weir_scan")"#, "");
    let wrong_signature = valid.replace(
        r#"(func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))"#,
        r#"(func (export "weir_alloc") (param i64) (result i32) (i32.const 1024))"#,
    );
    let init_rejects = valid.replace(
        r#"(param i32 i32) (result i32) (i32.const 0))"#,
        r#"(param i32 i32) (result i32) (i32.const -3))"#,
    );
    let init_loops = valid.replace(
        r#"(param i32 i32) (result i32) (i32.const 0))"#,
        r#"(param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0))"#,
    );
    let big_memory = valid.replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 200)"#,
    );
    let cases: [(&str, &[u8], &str); 9] = [
        (
            "wrong ABI version",
            wrong_version.as_bytes(),
            "invalid_module",
        ),
        ("an import", with_import.as_bytes(), "invalid_module"),
        (
            "missing weir_scan",
            missing_scan.as_bytes(),
            "invalid_module",
        ),
        (
            "wrong signature",
            wrong_signature.as_bytes(),
            "invalid_module",
        ),
        ("not wasm", b"\0asm\x01\0\0\0garbage", "invalid_module"),
        ("init refuses", init_rejects.as_bytes(), "init_rejected"),
        ("init loops", init_loops.as_bytes(), "out_of_fuel"),
        (
            "memory above the cap",
            big_memory.as_bytes(),
            "memory_limit",
        ),
        ("empty", b"", "invalid_module"),
    ];
    for (what, module, kind) in cases {
        let started = Instant::now();
        let error = wat_filter(
            std::str::from_utf8(module).unwrap_or("\u{0}"),
            Policy::FailOpen,
        )
        .err()
        .unwrap_or_else(|| panic!("{what}: loaded"));
        assert_eq!(error.kind(), kind, "{what}: {error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
    let import = wat_filter(&with_import, Policy::FailOpen).unwrap_err();
    assert!(import.to_string().contains("env::log"), "{import}");
}

#[test]
fn state_outside_linear_memory_is_refused() {
    // A module whose scan result depends on a mutable global set by init:
    // a restored instance cannot reproduce it.
    let wat = r#"(module
      (memory (export "memory") 1)
      (global $ready (mut i32) (i32.const 0))
      (func (export "weir_abi_version") (result i32) (i32.const 1))
      (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "weir_init") (param i32 i32) (result i32) (global.set $ready (i32.const 1)) (i32.const 0))
      (func (export "weir_scan") (param $ptr i32) (param $len i32) (result i64)
        (i32.store (i32.const 0) (i32.const 0))
        (i32.store (i32.const 4) (select (local.get $len) (i32.const 0) (global.get $ready)))
        (i64.const 8)))"#;
    let error = wat_filter(wat, Policy::FailOpen).unwrap_err();
    assert_eq!(error.kind(), "invalid_module", "{error}");
}

#[test]
fn policies_decide_the_verdict() {
    for (body, kind) in cases() {
        let open = wat_filter(&on_bang(body), Policy::FailOpen).unwrap();
        let outcome = open.check("!text");
        assert_eq!(outcome.verdict, Verdict::Pass);
        assert_eq!(outcome.error.as_ref().map(FilterError::kind), Some(kind));

        let closed = wat_filter(&on_bang(body), Policy::FailClosed).unwrap();
        let outcome = closed.check("!text");
        assert_eq!(outcome.verdict, Verdict::Unavailable);
        assert_eq!(outcome.error.as_ref().map(FilterError::kind), Some(kind));

        let body_json = br#"{"messages":[{"role":"user","content":"!text"}]}"#;
        assert_eq!(
            filter_request(&open, body_json).unwrap().verdict,
            Verdict::Pass
        );
        assert_eq!(
            filter_request(&closed, body_json).unwrap().verdict,
            Verdict::Unavailable
        );
    }
}

#[test]
fn policies_in_streams() {
    let input = [
        common::chat_event("fine "),
        common::chat_event("!then it traps"),
        common::chat_event(" and goes on"),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let open = wat_filter(&on_bang(TRAP), Policy::FailOpen).unwrap();
    let out = run_stream(&open, &[input.as_bytes()]).concat();
    let s = seen(&out);
    assert_eq!(s.text[&0], "fine !then it traps and goes on");
    assert!(s.done && s.error.is_none());

    let closed = wat_filter(&on_bang(TRAP), Policy::FailClosed).unwrap();
    let mut stream = weir_filters::StreamFilter::new(&closed);
    let mut out = stream.push(input.as_bytes()).to_vec();
    out.extend_from_slice(&stream.finish());
    let s = seen(&out);
    assert_eq!(s.text[&0], "fine ");
    assert!(!s.done);
    assert_eq!(s.error.unwrap()["error"]["code"], "filter_unavailable");
    assert_eq!(
        stream.report().error.as_ref().map(FilterError::kind),
        Some("trap")
    );
    assert!(stream.report().unavailable);
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn ten_thousand_failures_do_not_grow_memory() {
    let filters: Vec<(Filter, &str)> = cases()
        .into_iter()
        .map(|(body, kind)| (wat_filter(&on_bang(body), Policy::FailOpen).unwrap(), kind))
        .collect();
    let good = filter(&[("坏词", "abuse")], Action::Mask('*'));
    let call = |i: usize| {
        let (f, kind) = &filters[i % filters.len()];
        let outcome = f.check("!misbehave");
        assert_eq!(outcome.error.as_ref().map(FilterError::kind), Some(*kind));
        assert_eq!(outcome.verdict, Verdict::Pass);
    };
    for i in 0..1000 {
        call(i);
    }
    let before = rss_bytes();
    for i in 0..10_000 {
        call(i);
    }
    let after = rss_bytes();
    // and the good filter keeps working
    assert_eq!(
        good.check("这是坏词").verdict,
        Verdict::Masked("这是**".to_owned())
    );
    let growth = after.saturating_sub(before);
    assert!(
        growth < 16 << 20,
        "RSS grew by {growth} bytes ({before} -> {after})"
    );
}

/// A guest that reports (as `holdback_start`: the text's length, else 0)
/// whether its memory is as `weir_init` left it, then dirties it: a baked
/// word in page 1 is bumped, one in page 3 overwritten, a zero word in page
/// 2 set, and the memory grown by a page.
const STATEFUL: &str = r#"(module
  (memory (export "memory") 4)
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_init") (param i32 i32) (result i32)
    (i32.store (i32.const 70000) (i32.const 7))
    (i32.store (i32.const 200000) (i32.const 7))
    (i32.const 0))
  (func (export "weir_scan") (param $ptr i32) (param $len i32) (result i64)
    (local $fresh i32)
    (local.set $fresh
      (i32.and
        (i32.and (i32.eq (i32.load (i32.const 70000)) (i32.const 7))
                 (i32.eq (i32.load (i32.const 200000)) (i32.const 7)))
        (i32.and (i32.eqz (i32.load (i32.const 140000)))
                 (i32.eq (memory.size) (i32.const 4)))))
    (i32.store (i32.const 70000) (i32.add (i32.load (i32.const 70000)) (i32.const 1)))
    (i32.store (i32.const 200000) (i32.const 99))
    (i32.store (i32.const 140000) (i32.const 1))
    (drop (memory.grow (i32.const 1)))
    (i32.store (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (select (local.get $len) (i32.const 0) (local.get $fresh)))
    (i64.const 8)))"#;

#[test]
fn no_state_survives_from_one_call_to_the_next() {
    let f = wat_filter(STATEFUL, Policy::FailClosed).unwrap();
    // One session is one instance: the second call sees the first's writes
    // (so the guest does detect them).
    let mut session = f.session();
    assert_eq!(session.scan("fresh").unwrap().holdback_start, 5);
    assert_eq!(session.scan("again").unwrap().holdback_start, 0);
    drop(session);
    // Every call gets memory exactly as `weir_init` left it, also when its
    // pool slot was just dirtied and reset by another call.
    for i in 0..200 {
        assert_eq!(f.scan("fresh").unwrap().holdback_start, 5, "call {i}");
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            let f = &f;
            s.spawn(move || {
                for i in 0..100 {
                    let mut session = f.session();
                    assert_eq!(
                        session.scan("fresh").unwrap().holdback_start,
                        5,
                        "thread {t}, call {i}"
                    );
                    assert_eq!(session.scan("again").unwrap().holdback_start, 0);
                }
            });
        }
    });
}
