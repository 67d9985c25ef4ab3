//! Swapping a filter for one with another dictionary while calls are in
//! flight: prepare (load) off the call path, publish with one store; calls
//! never fail and see the new words right after the swap. A bad module is
//! refused and the old filter stays in force.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use common::words;
use weir_filters::{Action, Filter, FilterSpec, Verdict};
use weir_test_support::eventually_sync;

fn load(pairs: &[(&str, &str)]) -> Filter {
    Filter::sensitive_words(FilterSpec::new("words", words(pairs)).with_action(Action::Mask('*')))
        .unwrap()
}

#[test]
fn dictionary_swap_under_load() {
    let current = Arc::new(ArcSwap::from_pointee(load(&[("旧词", "old")])));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (current, stop, calls) = (current.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = current.load().check("旧词 and 新词");
                    assert!(outcome.error.is_none(), "{:?}", outcome.error);
                    let Verdict::Masked(text) = outcome.verdict else {
                        panic!("no word masked")
                    };
                    // exactly one of the two words is masked, never neither
                    assert!(text == "** and 新词" || text == "旧词 and **", "{text}");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let calls_reach = |n: usize| {
        eventually_sync(Duration::from_secs(30), || {
            (calls.load(Ordering::Relaxed) >= n).then_some(())
        })
        .unwrap();
    };
    calls_reach(200);
    // a bad module is refused; the old filter keeps serving
    let bad = Filter::load(
        b"(module)",
        FilterSpec::new("words", words(&[("新词", "new")])),
    );
    assert_eq!(bad.unwrap_err().kind(), "invalid_module");
    assert_eq!(
        current.load().check("旧词").verdict,
        Verdict::Masked("**".into())
    );

    let next = load(&[("新词", "new")]);
    current.store(Arc::new(next));
    assert_eq!(
        current.load().check("旧词 and 新词").verdict,
        Verdict::Masked("旧词 and **".into())
    );
    let swapped_at = calls.load(Ordering::Relaxed);
    calls_reach(swapped_at + 200);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
}
