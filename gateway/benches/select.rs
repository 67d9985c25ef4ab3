//! Arm selection and backend selection, per pick.
//!
//! `cargo bench -p weir-gateway --bench select`

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer, discovery};
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

criterion_group!(benches, arms, backends);
criterion_main!(benches);
