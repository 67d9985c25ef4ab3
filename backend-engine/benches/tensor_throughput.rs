//! Tensor inference throughput on the shipped `mlp`: requests of one row at
//! concurrency 1, 8 and 32 through the engine with dynamic batching on and
//! off, against raw in-process ONNX Runtime runs on batches of 1, 8 and 32
//! rows (the limit batching can approach). Throughput is in rows/s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_engine::tensor::{NamedTensor, TensorData};

const CONCURRENCY: [usize; 3] = [1, 8, 32];

fn row(i: usize) -> NamedTensor {
    let data: Vec<f32> = (0..16)
        .map(|j| ((i * 16 + j) % 7) as f32 * 0.25 - 0.75)
        .collect();
    NamedTensor::new("INPUT0", vec![1, 16], TensorData::Fp32(data)).unwrap()
}

fn engine_throughput(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("mlp_engine");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (label, extra) in [
        ("batching_on", &[][..]),
        ("batching_off", &["--no-batching"][..]),
    ] {
        let engine = common::engine(&["mlp"], extra);
        let model = engine.resolve("mlp", None).unwrap();
        for &n in &CONCURRENCY {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        // n clients, each sending `iters` requests back to back.
                        let clients = (0..n).map(|i| {
                            let model = model.clone();
                            tokio::spawn(async move {
                                for k in 0..iters as usize {
                                    model.infer(vec![row(i + k)]).await.unwrap();
                                }
                            })
                        });
                        for c in futures::future::join_all(clients).await {
                            c.unwrap();
                        }
                        start.elapsed()
                    })
                });
            });
        }
    }
    group.finish();
}

fn raw_session(c: &mut Criterion) {
    // Built after the engines above so the ONNX Runtime environment exists.
    let _engine = common::engine(&["mlp"], &[]);
    let runtime =
        weir_engine::runtime::Runtime::new(weir_engine::runtime::DeviceRequest::Cpu, 1).unwrap();
    let onnx = std::fs::read(common::crate_dir().join("models/repo/mlp/1/model.onnx")).unwrap();
    let mut session = runtime.session(&onnx).unwrap();
    let outputs = vec![weir_engine::repository::model_config::TensorSpec {
        name: "OUTPUT0".into(),
        datatype: weir_engine::tensor::DataType::Fp32,
        shape: vec![-1, 4],
    }];
    let mut group = c.benchmark_group("mlp_raw_ort");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for &n in &CONCURRENCY {
        let data: Vec<f32> = (0..n)
            .flat_map(|i| match row(i).data {
                TensorData::Fp32(v) => v,
                _ => unreachable!(),
            })
            .collect();
        let input = NamedTensor::new("INPUT0", vec![n as i64, 16], TensorData::Fp32(data)).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("batch", n), &n, |b, _| {
            b.iter(|| {
                weir_engine::runtime::run(&mut session, std::slice::from_ref(&input), &outputs)
                    .unwrap()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, engine_throughput, raw_session);
criterion_main!(benches);
