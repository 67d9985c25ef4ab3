//! What each fold of the bundled sensitive-word module costs in false
//! positives on ordinary text: the matches it adds over the corpus in
//! `backend-engine/models/corpus` (classical Chinese and English, about
//! 55 KB, none of it disguised), compared with every fold off, for three
//! dictionaries: the demo one, the benchmark's 1k random words, and 200
//! real words of the corpus itself (its 100 most frequent English words of
//! five letters or more and its 100 most frequent Chinese character pairs),
//! whose folds-off matches are all literal. Every added match on this text
//! is one the fold made up (or, for `case`, a capitalised occurrence).
//!
//! `cargo run --release -p weir-filters --example fold_cost`
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use weir_filters::{Filter, FilterSpec, Folds, Separators, Traditional};

fn corpus() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backend-engine/models/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the corpus folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// The corpus's most frequent English words (5+ letters) and Chinese
/// character pairs, 100 of each.
fn corpus_words(texts: &[String]) -> Vec<(String, String)> {
    let mut english: HashMap<String, usize> = HashMap::new();
    let mut chinese: HashMap<String, usize> = HashMap::new();
    for text in texts {
        for w in text.split(|c: char| !c.is_ascii_alphabetic()) {
            if w.len() >= 5 {
                *english.entry(w.to_ascii_lowercase()).or_default() += 1;
            }
        }
        let han: Vec<char> = text.chars().collect();
        for pair in han.windows(2) {
            if pair.iter().all(|&c| ('\u{4E00}'..='\u{9FFF}').contains(&c)) {
                *chinese.entry(pair.iter().collect()).or_default() += 1;
            }
        }
    }
    let top = |m: HashMap<String, usize>| {
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(100)
            .map(|(w, _)| (w, "corpus".to_owned()))
            .collect::<Vec<_>>()
    };
    let mut words = top(english);
    words.extend(top(chinese));
    words
}

fn matches(filter: &Filter, texts: &[String]) -> usize {
    texts
        .iter()
        .flat_map(|t| t.lines())
        .map(|line| filter.scan(line).expect("scan").matches.len())
        .sum()
}

fn main() {
    let texts = corpus();
    let bytes: usize = texts.iter().map(String::len).sum();
    let only = |f: fn(&mut Folds)| {
        let mut folds = Folds::NONE;
        f(&mut folds);
        folds
    };
    let configs: Vec<(&str, Folds)> = vec![
        ("all off", Folds::NONE),
        ("ignorables", only(|f| f.ignorables = true)),
        ("width", only(|f| f.width = true)),
        ("case", only(|f| f.case = true)),
        ("confusables", only(|f| f.confusables = true)),
        ("traditional", only(|f| f.traditional = Traditional::On)),
        (
            "separators=whitespace, max_gap=2",
            only(|f| {
                f.separators = Separators::Whitespace;
                f.max_gap = 2;
            }),
        ),
        (
            "separators=whitespace+punctuation, max_gap=2",
            only(|f| {
                f.separators = Separators::WhitespaceAndPunctuation;
                f.max_gap = 2;
            }),
        ),
        ("defaults", Folds::default()),
        (
            "defaults + separators=whitespace+punctuation",
            Folds {
                separators: Separators::WhitespaceAndPunctuation,
                ..Folds::default()
            },
        ),
    ];
    let dictionaries = [
        (
            "demo (坏词, 敏感词, secret)",
            common::words(&[("坏词", "a"), ("敏感词", "a"), ("secret", "a")]),
        ),
        (
            "1k random (the benchmark's)",
            common::mixed_dictionary(1000, 1),
        ),
        ("200 corpus words", corpus_words(&texts)),
    ];
    println!(
        "corpus: {} files, {bytes} bytes, scanned line by line\n",
        texts.len()
    );
    for (name, words) in &dictionaries {
        println!("dictionary: {name}");
        println!("| folds | matches | added over all off |");
        println!("|---|---|---|");
        let mut base = 0;
        for (label, folds) in &configs {
            let filter =
                Filter::sensitive_words(FilterSpec::new("cost", words.clone()).with_folds(*folds))
                    .expect("load");
            let n = matches(&filter, &texts);
            if *label == "all off" {
                base = n;
            }
            println!("| {label} | {n} | {:+} |", n as i64 - base as i64);
        }
        println!();
    }
}
