//! Disguised dictionary words through the real Wasm module: each fold
//! masks exactly the disguised word (hidden characters inside it included)
//! and leaves everything else byte for byte, in whole texts and in streams
//! delivered one byte per chunk; with every fold off, text without a
//! dictionary word never matches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{chat_event, finish_event, pieces, run_stream, seen, words};
use proptest::prelude::*;
use weir_filters::{Filter, FilterSpec, Folds, Separators};

const DEMO: &[(&str, &str)] = &[("坏词", "abuse"), ("敏感词", "abuse"), ("secret", "leak")];

fn load(folds: Folds) -> Filter {
    Filter::sensitive_words(FilterSpec::new("folds", words(DEMO)).with_folds(folds)).unwrap()
}

fn separators() -> Folds {
    Folds {
        separators: Separators::WhitespaceAndPunctuation,
        max_gap: 2,
        ..Folds::default()
    }
}

/// `text` masked by `filter`, with `*` per character.
fn masked(filter: &Filter, text: &str) -> String {
    let result = filter.scan(text).unwrap();
    weir_filters::mask(text, &result.matches, '*')
}

/// Every disguise of the issue, with the text around it.
const DISGUISES: &[(&str, &str)] = &[
    ("a 坏\u{200b}词 b", "a *** b"),
    ("a se\u{200d}cret b", "a ******* b"),
    ("a sec\u{ad}ret b", "a ******* b"),
    ("a \u{feff}secret b", "a \u{feff}****** b"),
    ("a s\u{435}cret b", "a ****** b"),
    ("a \u{455}ecret b", "a ****** b"),
    ("a 𝐬𝐞𝐜𝐫𝐞𝐭 b", "a ****** b"),
    ("a 壞詞 b", "a ** b"),
    ("a 敏感詞 b", "a *** b"),
    ("a ＳＥＣＲＥＴ b", "a ****** b"),
];

/// Separator disguises (with `separators` on).
const SEPARATED: &[(&str, &str)] = &[
    ("a 坏 词 b", "a *** b"),
    ("a 坏*词 b", "a *** b"),
    ("a 坏-词 b", "a *** b"),
    ("a 坏。词 b", "a *** b"),
    ("a 坏   词 b", "a 坏   词 b"),
];

#[test]
fn every_disguise_is_masked_in_a_whole_text() {
    let filter = load(Folds::default());
    for (text, want) in DISGUISES {
        assert_eq!(masked(&filter, text), *want, "{text:?}");
    }
    let filter = load(separators());
    for (text, want) in DISGUISES.iter().chain(SEPARATED) {
        assert_eq!(masked(&filter, text), *want, "{text:?}");
    }
}

#[test]
fn each_fold_can_be_turned_off() {
    for (folds, text) in [
        (
            Folds {
                ignorables: false,
                ..Folds::default()
            },
            "坏\u{200b}词",
        ),
        (
            Folds {
                confusables: false,
                ..Folds::default()
            },
            "s\u{435}cret",
        ),
        (
            Folds {
                traditional: weir_filters::Traditional::Off,
                ..Folds::default()
            },
            "壞詞",
        ),
        (
            Folds {
                case: false,
                ..Folds::default()
            },
            "SECRET",
        ),
        (Folds::default(), "坏 词"),
    ] {
        let filter = load(folds);
        assert_eq!(masked(&filter, text), text, "{folds:?} {text:?}");
    }
}

fn stream_of(contents: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for c in contents {
        s.push_str(&chat_event(c));
    }
    s.push_str(&finish_event());
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

#[test]
fn every_disguise_is_masked_in_a_stream_one_byte_per_chunk() {
    let filter = load(separators());
    for (text, want) in DISGUISES.iter().chain(SEPARATED) {
        // The disguise split between two events at every character, and
        // the whole stream delivered one byte per chunk.
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for &(at, _) in &chars {
            let input = stream_of(&[&text[..at], &text[at..]]);
            let out: Vec<u8> = run_stream(&filter, &pieces(&input, 1)).concat();
            let seen = seen(&out);
            assert!(seen.done && seen.error.is_none(), "{text:?}");
            assert_eq!(
                seen.text.get(&0).map(String::as_str),
                Some(*want),
                "{text:?} split at {at}"
            );
        }
    }
}

#[test]
fn the_hold_back_stays_bounded() {
    // The demo dictionary's worst case: its longest word, 6 characters,
    // each followed by separators and hidden characters.
    let filter = load(separators());
    assert_eq!(filter.max_holdback(), 6 * (4 + 4 * (2 + 8)));
    let plain = load(Folds::NONE);
    assert_eq!(plain.max_holdback(), 6 * 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With every fold off, a text that holds no dictionary word byte for
    /// byte never matches, however its characters look alike.
    #[test]
    fn folds_off_never_invent_a_match(text in "[a-zA-Z0-9 坏词敏感壞詞\u{200b}\u{435}ｓ*。-]{0,40}") {
        let filter = plain_filter();
        let result = filter.scan(&text).unwrap();
        let literal = DEMO.iter().any(|(w, _)| text.contains(w));
        prop_assert_eq!(!result.matches.is_empty(), literal, "{:?}", text);
    }
}

fn plain_filter() -> &'static Filter {
    static FILTER: std::sync::OnceLock<Filter> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| load(Folds::NONE))
}
