//! Arm selection and backend selection, per pick.
//!
//! `cargo bench -p weir-gateway --bench select`

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer, discovery};
use std::sync::Arc;

use weir_gateway::balance::{self, Load};
use weir_gateway::routing::ArmTable;

fn arms(c: &mut Criterion) {
    let two = ArmTable::new([("v1", 90), ("v2", 10)]);
    let five = ArmTable::new([("a", 40), ("b", 30), ("c", 15), ("d", 10), ("e", 5)]);
    let mut g = c.benchmark_group("arm");
    g.bench_function("weighted/2", |b| {
        b.iter(|| black_box(two.select(None, None)))
    });
    g.bench_function("weighted/5", |b| {
        b.iter(|| black_box(five.select(None, None)))
    });
    g.bench_function("sticky/2", |b| {
        b.iter(|| black_box(two.select(None, Some(black_box(b"user-4711")))))
    });
    g.bench_function("sticky/5", |b| {
        b.iter(|| black_box(five.select(None, Some(black_box(b"user-4711")))))
    });
    g.bench_function("header/2", |b| {
        b.iter(|| black_box(two.select(Some(black_box(b"v2")), Some(b"user-4711"))))
    });
    g.finish();
}

fn backends(c: &mut Criterion) {
    let set: BTreeSet<Backend> = (0..4u16)
        .filter_map(|i| {
            Backend::new_with_weight(&format!("127.0.0.1:{}", 9001 + i), 1 + i as usize).ok()
        })
        .collect();
    let lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery::Static::new(set)));
    let rt = tokio::runtime::Builder::new_current_thread().build();
    if let Ok(rt) = rt {
        let _ = rt.block_on(lb.update());
    }
    c.bench_function("backend/weighted_rr/4", |b| {
        b.iter(|| black_box(lb.select_with(b"", 256, |_, healthy| healthy)))
    });
}

/// Least request over 4 backends (weights 1-4): the power of two choices
/// on the load estimates, then the same with the in-flight bookkeeping of
/// one request (start, answer, end) that every pick brings.
fn least_request(c: &mut Criterion) {
    let loads: Vec<Arc<Load>> = (0..4).map(|_| Arc::new(Load::default())).collect();
    let weights = [1.0, 2.0, 3.0, 4.0];
    let cumulative = [1, 3, 6, 10];
    // Some history and some requests in flight.
    let _held: Vec<_> = loads.iter().map(|l| l.start(balance::now_ns())).collect();
    for l in &loads {
        let mut f = l.start(balance::now_ns());
        f.answered(balance::now_ns() + 1_000_000, true);
    }
    c.bench_function("backend/least_request/4", |b| {
        b.iter(|| {
            let now = balance::now_ns();
            black_box(balance::pick(
                &cumulative,
                |i| loads[i].cost(now) / weights[i],
                |_| true,
            ))
        })
    });
    c.bench_function("backend/least_request+in_flight/4", |b| {
        b.iter(|| {
            let now = balance::now_ns();
            let i = balance::pick(&cumulative, |i| loads[i].cost(now) / weights[i], |_| true)
                .unwrap_or(0);
            let mut f = loads[i].start(now);
            f.answered(balance::now_ns(), true);
            black_box(f)
        })
    });
}

criterion_group!(benches, arms, backends, least_request);
criterion_main!(benches);
