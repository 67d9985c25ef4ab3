//! Generation on the shipped `tiny-lm` v1: output tokens/s with 1, 8 and 32
//! concurrent streams (iteration-level batching shares each decoding step),
//! and time to first token with 1 and 32 requests arriving together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_engine::lm::sampling::SamplingParams;
use weir_engine::lm::scheduler::GenEvent;
use weir_engine::model::ModelVersion;

const TOKENS: usize = 64;

async fn generate(model: &ModelVersion, max_tokens: usize, seed: u64) {
    let params = SamplingParams {
        max_tokens,
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        stop: Vec::new(),
    };
    let mut rx = model
        .generate(
            "The Fox and the ",
            params,
            weir_engine::model::GenOptions::default(),
        )
        .unwrap();
    while let Some(event) = rx.events.recv().await {
        match event {
            GenEvent::Finished { .. } => return,
            GenEvent::Failed(m) => panic!("{m}"),
            GenEvent::Text(_) => {}
        }
    }
    panic!("stream ended early");
}

fn tokens_per_second(c: &mut Criterion) {
    let rt = common::runtime();
    let engine = common::engine(&["tiny-lm:1"], &[]);
    let model = engine.resolve("tiny-lm", None).unwrap();
    let mut group = c.benchmark_group("tiny_lm_tokens");
    group
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for streams in [1usize, 8, 32] {
        group.throughput(Throughput::Elements((streams * TOKENS) as u64));
        group.bench_with_input(
            BenchmarkId::new("streams", streams),
            &streams,
            |b, &streams| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for it in 0..iters {
                            let all = (0..streams)
                                .map(|s| generate(&model, TOKENS, it * 1000 + s as u64));
                            futures::future::join_all(all).await;
                        }
                        start.elapsed()
                    })
                });
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("tiny_lm_ttft");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for together in [1usize, 32] {
        group.bench_with_input(
            BenchmarkId::new("arriving_together", together),
            &together,
            |b, &n| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for it in 0..iters {
                            let all = (0..n).map(|s| generate(&model, 1, it + s as u64));
                            futures::future::join_all(all).await;
                        }
                        start.elapsed()
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, tokens_per_second);
criterion_main!(benches);
