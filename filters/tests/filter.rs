//! The bundled sensitive-word filter: matching, folding, hold-back, verdicts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{filter, words};
use weir_filters::{Action, Filter, FilterError, FilterSpec, Match, Verdict};

fn spans(filter: &Filter, text: &str) -> Vec<(String, String)> {
    filter
        .scan(text)
        .unwrap()
        .matches
        .iter()
        .map(|m| {
            (
                text[m.start..m.end].to_owned(),
                filter.category(m.category).unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn finds_english_and_chinese_words() {
    let f = filter(
        &[
            ("badword", "abuse"),
            ("坏词", "abuse"),
            ("敏感内容", "politics"),
        ],
        Action::Mask('*'),
    );
    assert_eq!(
        spans(&f, "a badword, 一个坏词和敏感内容。"),
        [
            ("badword".into(), "abuse".into()),
            ("坏词".into(), "abuse".into()),
            ("敏感内容".into(), "politics".into())
        ]
    );
    assert!(spans(&f, "nothing here, 什么都没有").is_empty());
}

#[test]
fn folds_case_and_full_width() {
    let f = filter(
        &[("BadWord", "abuse"), ("ｑｑ号", "fraud"), ("Привет", "x")],
        Action::Mask('*'),
    );
    for text in ["BADWORD", "badword", "ｂａｄｗｏｒｄ", "ＢＡＤword"] {
        assert_eq!(
            spans(&f, text),
            [(text.to_owned(), "abuse".to_owned())],
            "{text}"
        );
    }
    assert_eq!(spans(&f, "加QQ号")[0].0, "QQ号");
    assert_eq!(spans(&f, "ПРИВЕТ мир")[0].0, "ПРИВЕТ");
    // full-width text masks char for char and stays valid UTF-8
    assert_eq!(
        f.check("说ＢＡＤword了").verdict,
        Verdict::Masked("说*******了".to_owned())
    );
    // the ideographic space folds to a space
    let f = filter(&[("bad word", "abuse")], Action::Mask('*'));
    assert_eq!(spans(&f, "BAD\u{3000}WORD")[0].0, "BAD\u{3000}WORD");
}

#[test]
fn leftmost_longest() {
    let f = filter(
        &[("ab", "x"), ("abcd", "y"), ("敏感", "x"), ("敏感词", "y")],
        Action::Mask('#'),
    );
    assert_eq!(
        spans(&f, "abcd 敏感词 ab"),
        [
            ("abcd".into(), "y".into()),
            ("敏感词".into(), "y".into()),
            ("ab".into(), "x".into())
        ]
    );
}

#[test]
fn holdback_marks_a_possible_word_start() {
    let f = filter(
        &[("badword", "abuse"), ("敏感内容", "politics")],
        Action::Mask('*'),
    );
    let hold = |text: &str| f.scan(text).unwrap().holdback_start;
    assert_eq!(hold("hello"), 5);
    assert_eq!(hold("hello ba"), 6);
    assert_eq!(hold("hello ＢＡＤ"), 6);
    assert_eq!(hold("这是敏感"), 6);
    assert_eq!(hold("这是敏"), 6);
    assert_eq!(hold("badword"), 7);
    assert_eq!(hold(""), 0);
}

#[test]
fn verdicts_follow_the_action() {
    let f = filter(&[("坏词", "abuse")], Action::Block);
    let outcome = f.check("这是坏词");
    assert_eq!(
        outcome.verdict,
        Verdict::Blocked {
            category: "abuse".into()
        }
    );
    assert_eq!(outcome.hits, ["abuse".into()] as [std::sync::Arc<str>; 1]);
    assert_eq!(f.check("这很好").verdict, Verdict::Pass);
    let f = filter(&[("坏词", "abuse")], Action::Mask('＊'));
    assert_eq!(
        f.apply("坏词!坏词").unwrap(),
        Verdict::Masked("＊＊!＊＊".into())
    );
}

#[test]
fn sessions_reuse_one_instance() {
    let f = filter(&[("word", "x")], Action::Mask('*'));
    let mut session = f.session();
    for i in 0..100 {
        let text = format!("{i} a word {}", "x".repeat(i * 37));
        assert_eq!(session.scan(&text).unwrap().matches.len(), 1);
    }
    let big = "word ".repeat(100_000);
    assert_eq!(session.scan(&big).unwrap().matches.len(), 100_000);
}

#[test]
fn concurrent_calls() {
    let f = filter(&[("word", "x"), ("词", "y")], Action::Mask('*'));
    std::thread::scope(|s| {
        for t in 0..8 {
            let f = &f;
            s.spawn(move || {
                for i in 0..200 {
                    let text = format!("{t}-{i} word 词");
                    let result = f.scan(&text).unwrap();
                    assert_eq!(result.matches.len(), 2);
                }
            });
        }
    });
}

#[test]
fn bad_specs_are_refused() {
    let empty = Filter::sensitive_words(FilterSpec::new("w", vec![])).unwrap_err();
    assert_eq!(empty.kind(), "spec");
    let tab = Filter::sensitive_words(FilterSpec::new("w", words(&[("a\tb", "x")]))).unwrap_err();
    assert!(matches!(tab, FilterError::Spec(_)));
}

#[test]
fn mask_helper_is_char_for_char() {
    let m = Match {
        start: 3,
        end: 9,
        category: 0,
    };
    assert_eq!(weir_filters::mask("你坏词好", &[m], '*'), "你**好");
}
