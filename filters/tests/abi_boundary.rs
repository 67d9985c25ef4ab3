//! The `abi_result` fuzz target's property over random inputs with a fixed
//! seed: decoding a guest's result record never panics, and what it accepts
//! is safe to mask with.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use weir_filters::abi::{Match, ScanResult, decode_result, encode_result};

fn check(record: &[u8], text: &str, categories: u32) -> bool {
    let Ok(result) = decode_result(record, text, categories) else {
        return false;
    };
    assert!(result.holdback_start <= text.len() && text.is_char_boundary(result.holdback_start));
    let mut previous_end = 0;
    for m in &result.matches {
        assert!(previous_end <= m.start && m.start < m.end && m.end <= text.len());
        assert!(text.is_char_boundary(m.start) && text.is_char_boundary(m.end));
        assert!(m.category < categories);
        previous_end = m.end;
    }
    assert_eq!(encode_result(&result), record);
    let masked = weir_filters::mask(text, &result.matches, '*');
    assert_eq!(masked.chars().count(), text.chars().count());
    true
}

fn random_text(rng: &mut fastrand::Rng) -> String {
    const PIECES: &[&str] = &["a", "B", " ", "你", "好", "ｂ", "😀", "é"];
    (0..rng.usize(0..12))
        .map(|_| PIECES[rng.usize(..PIECES.len())])
        .collect()
}

#[test]
fn random_records_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0xAB1);
    for _ in 0..50_000 {
        let text = random_text(&mut rng);
        let len = rng.usize(0..64);
        let record: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        check(&record, &text, rng.u32(0..4));
    }
}

#[test]
fn mutated_valid_records_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0xAB2);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let text = random_text(&mut rng);
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut matches = Vec::new();
        let mut i = 0;
        while i + 1 < boundaries.len() {
            if rng.bool() {
                let end = rng.usize(i + 1..boundaries.len());
                matches.push(Match {
                    start: boundaries[i],
                    end: boundaries[end],
                    category: rng.u32(0..3),
                });
                i = end;
            } else {
                i += 1;
            }
        }
        let result = ScanResult {
            matches,
            holdback_start: boundaries[rng.usize(..boundaries.len())],
        };
        let mut record = encode_result(&result);
        assert!(check(&record, &text, 3), "a valid record is accepted");
        // flip a few bits or cut the record
        for _ in 0..rng.usize(1..4) {
            if record.is_empty() {
                break;
            }
            let at = rng.usize(..record.len());
            match rng.u8(0..3) {
                0 => record[at] ^= 1 << rng.u8(0..8),
                1 => record[at] = rng.u8(..),
                _ => record.truncate(at),
            }
        }
        accepted += usize::from(check(&record, &text, 3));
    }
    assert!(accepted > 0);
}
