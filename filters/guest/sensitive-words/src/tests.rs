//! Each fold, with the original offsets of its matches checked.

use super::*;

const DEMO: &[&str] = &["坏词", "敏感词", "secret"];

/// The matched original texts.
fn matched(options: &[&str], words: &[&str], text: &str) -> Vec<String> {
    let (found, _) = find(options, words, text).unwrap();
    found
        .iter()
        .map(|f| text[f.start..f.end].to_owned())
        .collect()
}

/// `text` with every match replaced by `*` per character.
fn masked(options: &[&str], words: &[&str], text: &str) -> String {
    let (found, _) = find(options, words, text).unwrap();
    let mut out = String::new();
    let mut at = 0;
    for f in found {
        out.push_str(&text[at..f.start]);
        out.extend(text[f.start..f.end].chars().map(|_| '*'));
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

#[test]
fn plain_words_match_in_place() {
    assert_eq!(matched(&[], DEMO, "a secret 坏词 x"), ["secret", "坏词"]);
    assert_eq!(masked(&[], DEMO, "说敏感词吧"), "说***吧");
}

#[test]
fn ignorables_inside_a_word_are_masked_with_it() {
    for text in [
        "坏\u{200b}词",
        "se\u{200d}cret",
        "sec\u{00ad}ret",
        "s\u{feff}ecret",
        "坏\u{200b}\u{200c}\u{2060}词",
    ] {
        assert_eq!(matched(&[], DEMO, text), [text], "{text:?}");
    }
    // Around the word, they stay: only the characters between are taken.
    let text = "x\u{200b}secret\u{200b}y";
    assert_eq!(matched(&[], DEMO, text), ["secret"]);
    assert_eq!(masked(&[], DEMO, text), "x\u{200b}******\u{200b}y");
    // Off: no match.
    assert!(matched(&["ignorables=off"], DEMO, "坏\u{200b}词").is_empty());
}

#[test]
fn width_and_compatibility_forms_fold() {
    for text in ["ｓｅｃｒｅｔ", "𝐬𝐞𝐜𝐫𝐞𝐭", "ⓢⓔⓒⓡⓔⓣ", "ＳＥＣＲＥＴ"]
    {
        assert_eq!(matched(&[], DEMO, text), [text], "{text:?}");
    }
    // Mathematical letters are confusables too: both folds off to miss them.
    assert_eq!(matched(&["width=off"], DEMO, "𝐬𝐞𝐜𝐫𝐞𝐭"), ["𝐬𝐞𝐜𝐫𝐞𝐭"]);
    assert!(matched(&["width=off", "confusables=off"], DEMO, "𝐬𝐞𝐜𝐫𝐞𝐭").is_empty());
    assert!(matched(&["width=off", "confusables=off"], DEMO, "ｓｅｃｒｅｔ").is_empty());
    // The offsets are the original's: 4-byte letters, masked one for one.
    assert_eq!(masked(&[], DEMO, "a𝐬𝐞𝐜𝐫𝐞𝐭b"), "a******b");
}

#[test]
fn case_folds() {
    assert_eq!(matched(&[], DEMO, "SeCrEt"), ["SeCrEt"]);
    assert!(matched(&["case=off"], DEMO, "SECRET").is_empty());
    assert_eq!(matched(&[], &["straße"], "STRAßE"), ["STRAßE"]);
}

#[test]
fn look_alike_letters_fold_to_their_skeleton() {
    // Cyrillic е and ѕ, Greek ο, a digit zero.
    for text in [
        "s\u{0435}cret",
        "\u{0455}ecret",
        "\u{0455}\u{0435}cr\u{0435}t",
    ] {
        assert_eq!(matched(&[], DEMO, text), [text], "{text:?}");
    }
    assert_eq!(
        matched(&[], &["google"], "g\u{03bf}0gle"),
        ["g\u{03bf}0gle"]
    );
    assert!(matched(&["confusables=off"], DEMO, "s\u{0435}cret").is_empty());
}

#[test]
fn traditional_characters_fold_to_simplified_ones() {
    assert_eq!(matched(&[], DEMO, "這是壞詞"), ["壞詞"]);
    assert_eq!(matched(&[], DEMO, "敏感詞"), ["敏感詞"]);
    // A traditional word in the dictionary matches simplified text too.
    assert_eq!(matched(&[], &["壞詞"], "坏词"), ["坏词"]);
    assert!(matched(&["traditional=off"], DEMO, "壞詞").is_empty());
    // auto: a dictionary without Han does not fold it.
    let (words, _) = (["secret"], ());
    let mut folded: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    assert!(
        !Folder::new(Options::default(), &mut folded)
            .unwrap()
            .traditional()
    );
}

#[test]
fn separators_between_word_characters_when_asked() {
    let on = ["separators=whitespace+punctuation", "max_gap=2"];
    for text in ["坏 词", "坏*词", "坏-词", "坏。词", "坏 * 词"[..].trim()] {
        let want = if text.chars().count() - 2 <= 2 {
            vec![text.to_owned()]
        } else {
            vec![]
        };
        assert_eq!(matched(&on, DEMO, text), want, "{text:?}");
    }
    // Off by default.
    assert!(matched(&[], DEMO, "坏 词").is_empty());
    // Over max_gap: no match; the masked span is exactly the word's.
    assert!(matched(&on, DEMO, "坏   词").is_empty());
    assert_eq!(masked(&on, DEMO, "说 坏-词 了"), "说 *** 了");
    // Only whitespace.
    let ws = ["separators=whitespace"];
    assert_eq!(matched(&ws, DEMO, "s e c r e t"), ["s e c r e t"]);
    assert!(matched(&ws, DEMO, "坏*词").is_empty());
    // A separator that is part of a word is a word character.
    assert_eq!(matched(&on, &["a-b"], "x a-b y"), ["a-b"]);
    // A too-long gap does not hide a later good match.
    assert_eq!(matched(&on, DEMO, "坏    坏 词"), ["坏 词"]);
}

#[test]
fn disguises_combine() {
    let on = ["separators=whitespace+punctuation"];
    let text = "ＳＥ\u{200b}с\u{00ad}ret 壞 *詞";
    assert_eq!(
        matched(&on, DEMO, text),
        ["ＳＥ\u{200b}с\u{00ad}ret", "壞 *詞"]
    );
}

#[test]
fn holdback_covers_a_word_split_by_hidden_characters() {
    // A stream chunk ending inside a disguised word holds from its start.
    for (text, from) in [
        ("abc 坏\u{200b}", 4),
        ("abc se\u{200b}", 4),
        ("abc ｓｅ", 4),
        ("abc 壞", 4),
        ("abc", 3),
    ] {
        let (_, holdback) = find(&[], DEMO, text).unwrap();
        assert_eq!(holdback, from, "{text:?}");
    }
    let (_, holdback) = find(&["separators=whitespace"], DEMO, "abc 坏 ").unwrap();
    assert_eq!(holdback, 4);
}

#[test]
fn options_are_checked() {
    for bad in [
        "case=maybe",
        "nosuch=on",
        "max_gap=99",
        "separators=commas",
        "width",
    ] {
        assert_eq!(find(&[bad], DEMO, "x").err(), Some(E_OPTION), "{bad}");
    }
    // A word of ignorables only folds to nothing.
    assert_eq!(find(&[], &["\u{200b}"], "x").err(), Some(E_LINE));
}

#[test]
fn folds_off_match_exactly() {
    let off = [
        "ignorables=off",
        "width=off",
        "case=off",
        "confusables=off",
        "traditional=off",
    ];
    assert_eq!(
        matched(&off, DEMO, "secret SECRET 壞詞 坏词"),
        ["secret", "坏词"]
    );
}

/// Random texts: every match is on character boundaries, in order, and
/// the matched original folds to a dictionary word.
#[test]
fn random_texts_give_well_formed_matches() {
    let alphabet: Vec<char> = "se crtSECRT坏词壞詞敏感\u{200b}\u{00ad}ｓ𝐞е*。-"
        .chars()
        .collect();
    let config = "!separators=whitespace+punctuation\n0\t坏词\n0\t敏感词\n0\tsecret\n";
    let dictionary = Dictionary::parse(config).unwrap();
    let (mut normalised, mut shifts) = (Vec::new(), Shifts::default());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        let text: String = (0..len)
            .map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()])
            .collect();
        let (found, holdback) = dictionary.find(&text, &mut normalised, &mut shifts);
        assert!(holdback <= text.len() && text.is_char_boundary(holdback));
        let mut last = 0;
        for f in &found {
            assert!(
                f.start >= last && f.start < f.end && f.end <= text.len(),
                "{text:?}"
            );
            assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
            last = f.end;
            // The span, scanned alone, matches whole.
            let span = &text[f.start..f.end];
            let (alone, _) = dictionary.find(span, &mut Vec::new(), &mut Shifts::default());
            assert!(
                alone
                    .first()
                    .is_some_and(|m| m.start == 0 && m.end == span.len()),
                "{span:?} in {text:?}: {alone:?}"
            );
        }
    }
}
