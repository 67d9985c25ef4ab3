//! The sensitive-word module's folding layer (compiled natively from
//! `guest/sensitive-words`) on arbitrary options, words and text: no panic,
//! matches in order, within the text, on character boundaries, the hold-back
//! on a boundary, and each matched span, scanned alone, matches from its
//! start to its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sensitive_words::find;

const OPTIONS: &[&str] = &[
    "ignorables=off",
    "width=off",
    "case=off",
    "confusables=off",
    "traditional=on",
    "separators=whitespace+punctuation",
    "max_gap=1",
    "traditional=off",
];

fuzz_target!(|data: &[u8]| {
    let Some((&bits, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let (head, text) = rest.split_once('\0').unwrap_or((rest, ""));
    let words: Vec<&str> = head
        .split('\n')
        .filter(|w| !w.is_empty() && !w.contains(['\t', '\r']))
        .take(32)
        .collect();
    if words.is_empty() {
        return;
    }
    let options: Vec<&str> = OPTIONS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, o)| *o)
        .collect();
    let Ok((found, holdback)) = find(&options, &words, text) else {
        return;
    };
    assert!(holdback <= text.len() && text.is_char_boundary(holdback));
    let mut last = 0;
    for f in &found {
        assert!(last <= f.start && f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        last = f.end;
        let span = &text[f.start..f.end];
        let (alone, _) = find(&options, &words, span).expect("the same dictionary loads");
        assert!(
            alone
                .first()
                .is_some_and(|m| m.start == 0 && m.end == span.len()),
            "{span:?} matched in context but not alone: {alone:?}"
        );
    }
});
