//! Helpers shared by the integration tests and the bench.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use weir_filters::sse::SseParser;
use weir_filters::{Action, Filter, FilterSpec, Policy};

/// `(word, category)` pairs from string slices.
pub fn words(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(w, c)| ((*w).to_owned(), (*c).to_owned()))
        .collect()
}

/// The bundled sensitive-word filter with `pairs`.
pub fn filter(pairs: &[(&str, &str)], action: Action) -> Filter {
    Filter::sensitive_words(FilterSpec::new("words", words(pairs)).with_action(action))
        .expect("load the sensitive-word filter")
}

/// A filter on a hand-written module, with small budgets so misbehaviour
/// is cut short fast.
pub fn wat_filter(wat: &str, policy: Policy) -> Result<Filter, weir_filters::FilterError> {
    let spec = FilterSpec::new("wat", words(&[("word", "test")]))
        .with_policy(policy)
        .with_fuel(weir_filters::FuelBudget {
            init: 1_000_000,
            base: 200_000,
            per_byte: 100,
        })
        .with_memory_limit(4 << 20);
    Filter::load(wat.as_bytes(), spec)
}

#[allow(unused_imports, reason = "not every test binary uses it")]
pub use weir_test_support::wasm::module_misbehaving_on_bang;

/// One chat-completion chunk event carrying `content`.
pub fn chat_event(content: &str) -> String {
    let data = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    });
    format!("data: {data}\n\n")
}

/// The final chat-completion chunk (empty delta, `finish_reason: stop`).
pub fn finish_event() -> String {
    let data = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    format!("data: {data}\n\n")
}

/// What a client sees in an output stream.
#[derive(Debug, Default)]
pub struct Seen {
    /// Concatenated `delta.content` / `text` per choice index.
    pub text: std::collections::BTreeMap<u64, String>,
    /// Number of data events.
    pub events: usize,
    /// Whether `[DONE]` was seen.
    pub done: bool,
    /// The data of an `event: error`, if any.
    pub error: Option<serde_json::Value>,
}

/// Parses an output stream as a client would.
pub fn seen(output: &[u8]) -> Seen {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    parser.push(output, &mut events).unwrap();
    events.extend(parser.finish());
    let mut seen = Seen::default();
    for event in events {
        let Some(data) = event.data else { continue };
        seen.events += 1;
        if event.event.as_deref() == Some("error") {
            seen.error = Some(serde_json::from_str(&data).unwrap());
            continue;
        }
        if data == "[DONE]" {
            seen.done = true;
            continue;
        }
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
            continue;
        };
        for (i, choice) in value["choices"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = choice["index"].as_u64().unwrap_or(i as u64);
            let text = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .unwrap_or_default();
            seen.text.entry(index).or_default().push_str(text);
        }
    }
    seen
}

/// Feeds `chunks` through a stream filter; returns the output chunks.
pub fn run_stream(filter: &Filter, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut stream = weir_filters::StreamFilter::new(filter);
    let mut out: Vec<Vec<u8>> = chunks.iter().map(|c| stream.push(c).to_vec()).collect();
    out.push(stream.finish().to_vec());
    out
}

/// Splits `bytes` into pieces of `size` bytes.
pub fn pieces(bytes: &[u8], size: usize) -> Vec<&[u8]> {
    bytes.chunks(size).collect()
}

/// A deterministic mixed Chinese/English dictionary of `n` words.
pub fn mixed_dictionary(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let categories = ["politics", "abuse", "fraud", "adult"];
    let mut seen = std::collections::BTreeSet::new();
    let mut dictionary = Vec::with_capacity(n);
    while dictionary.len() < n {
        let word: String = if dictionary.len() % 2 == 0 {
            (0..rng.usize(2..=4))
                .map(|_| char::from_u32(rng.u32(0x4E00..0x9FA5)).unwrap())
                .collect()
        } else {
            (0..rng.usize(4..=10))
                .map(|_| char::from(rng.u8(b'a'..=b'z')))
                .collect()
        };
        if seen.insert(word.clone()) {
            let category = categories[rng.usize(..categories.len())];
            dictionary.push((word, category.to_owned()));
        }
    }
    dictionary
}

/// Deterministic mixed text of about `len` bytes: Chinese characters,
/// English words and, about every `every` tokens, a dictionary word.
pub fn mixed_text(len: usize, dictionary: &[(String, String)], every: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut text = String::with_capacity(len + 64);
    while text.len() < len {
        match rng.usize(..every.max(3)) {
            0 => text.push_str(&dictionary[rng.usize(..dictionary.len())].0),
            1 => {
                for _ in 0..rng.usize(1..8) {
                    text.push(char::from_u32(rng.u32(0x4E00..0x9FA5)).unwrap());
                }
            }
            _ => {
                for _ in 0..rng.usize(2..9) {
                    text.push(char::from(rng.u8(b'a'..=b'z')));
                }
                text.push(if rng.bool() { ' ' } else { '，' });
            }
        }
    }
    text
}
