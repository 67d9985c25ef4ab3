//! Scan throughput of the Wasm sensitive-word filter (every default fold
//! on, and every fold off) against the native `aho-corasick` crate (ASCII
//! case folding only) on the same deterministic 1k-word mixed
//! Chinese/English dictionary and text, and the added cost of one request
//! (1 KiB body) and of one streamed answer (alone, and after a usage
//! reader's parse: re-read as bytes, or taken as events).
//!
//! `cargo bench -p weir-filters --bench scan`
#![allow(clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use aho_corasick::{AhoCorasick, MatchKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_filters::openai::filter_request;
use weir_filters::sse::SseParser;
use weir_filters::{Filter, FilterSpec, Folds, StreamFilter};

fn benches(c: &mut Criterion) {
    let dictionary = common::mixed_dictionary(1000, 1);
    // Every default fold on (ignorables, width, case, confusables,
    // traditional Chinese), and every fold off.
    let filter = Filter::sensitive_words(
        FilterSpec::new("bench", dictionary.clone()).with_folds(Folds::default()),
    )
    .expect("load the filter");
    let unfolded = Filter::sensitive_words(
        FilterSpec::new("bench-off", dictionary.clone()).with_folds(Folds::NONE),
    )
    .expect("load the filter without folds");
    // The same dictionary, natively: leftmost-longest, ASCII case folded.
    let native = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .ascii_case_insensitive(true)
        .build(dictionary.iter().map(|(word, _)| word))
        .expect("build the native automaton");

    let text = common::mixed_text(64 << 10, &dictionary, 10, 2);
    assert_eq!(
        native.find_iter(&text).count(),
        filter.scan(&text).expect("scan").matches.len(),
        "native and Wasm agree"
    );
    let mut group = c.benchmark_group("scan_64KiB");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("native_aho_corasick", |b| {
        b.iter(|| native.find_iter(black_box(&text)).count())
    });
    group.bench_function("wasm_session", |b| {
        let mut session = filter.session();
        b.iter(|| session.scan(black_box(&text)).map(|r| r.matches.len()))
    });
    group.bench_function("wasm_session_folds_off", |b| {
        let mut session = unfolded.session();
        b.iter(|| session.scan(black_box(&text)).map(|r| r.matches.len()))
    });
    group.bench_function("wasm_fresh_instance", |b| {
        b.iter(|| filter.scan(black_box(&text)).map(|r| r.matches.len()))
    });
    group.finish();

    let small = common::mixed_text(1 << 10, &dictionary, 10, 3);
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": small}],
    })
    .to_string();
    let mut group = c.benchmark_group("request_1KiB");
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("native_aho_corasick", |b| {
        b.iter(|| native.find_iter(black_box(&small)).count())
    });
    group.bench_function("wasm_fresh_instance", |b| {
        b.iter(|| filter.scan(black_box(&small)).map(|r| r.matches.len()))
    });
    group.bench_function("filter_request_json", |b| {
        b.iter(|| filter_request(&filter, black_box(body.as_bytes())).map(|o| o.hits.len()))
    });
    group.finish();

    // A 1 KiB answer streamed in 64 chat chunks.
    let mut stream = String::new();
    let chars: Vec<char> = small.chars().collect();
    for piece in chars.chunks(chars.len().div_ceil(64)) {
        stream.push_str(&common::chat_event(&piece.iter().collect::<String>()));
    }
    stream.push_str(&common::finish_event());
    stream.push_str("data: [DONE]\n\n");
    let events: Vec<&[u8]> = stream.as_bytes().chunks(200).collect();
    let mut group = c.benchmark_group("stream_1KiB_64_chunks");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("stream_filter", |b| {
        b.iter(|| {
            let mut filter = StreamFilter::new(&filter);
            let forwarded: usize = events.iter().map(|chunk| filter.push(chunk).len()).sum();
            forwarded + filter.finish().len()
        })
    });
    // After a usage reader's parse, the filter parses again or not.
    for (name, on_events) in [
        ("reader_then_filter_on_bytes", false),
        ("reader_then_filter_on_events", true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| reader_then_filter(&filter, black_box(&events), on_events))
        });
    }
    group.bench_function("sse_parse_only", |b| {
        b.iter(|| {
            weir_filters::sse::parse_all(black_box(stream.as_bytes()), 1 << 20)
                .0
                .len()
        })
    });
    group.finish();
}

/// An answer through a usage reader's parse and one filter, which re-reads
/// the reader's bytes (parsing the answer twice) or takes its events (once).
fn reader_then_filter(filter: &Filter, chunks: &[&[u8]], on_events: bool) -> usize {
    let mut reader = SseParser::default();
    let mut stream = StreamFilter::new(filter);
    let mut forwarded = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let piece = reader.read(chunk, i + 1 == chunks.len());
        forwarded += match on_events {
            true => stream.push_events(piece).into_bytes().len(),
            false => stream.push(&piece.into_bytes()).len(),
        };
    }
    match on_events {
        true => forwarded,
        false => forwarded + stream.finish().len(),
    }
}

criterion_group!(scan, benches);
criterion_main!(scan);
