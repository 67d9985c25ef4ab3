//! The host's decoding of a guest's result record: arbitrary record bytes
//! against arbitrary text never panic, and whatever is accepted is safe to
//! use (in bounds, ordered, on character boundaries, known category), so
//! masking it keeps the text valid UTF-8 with the same number of chars.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_filters::abi::{decode_result, encode_result};

fuzz_target!(|input: (Vec<u8>, String, u8)| {
    let (record, text, categories) = input;
    let categories = u32::from(categories % 8);
    let Ok(result) = decode_result(&record, &text, categories) else {
        return;
    };
    assert!(result.holdback_start <= text.len());
    assert!(text.is_char_boundary(result.holdback_start));
    let mut previous_end = 0;
    for m in &result.matches {
        assert!(previous_end <= m.start && m.start < m.end && m.end <= text.len());
        assert!(text.is_char_boundary(m.start) && text.is_char_boundary(m.end));
        assert!(m.category < categories);
        previous_end = m.end;
    }
    assert_eq!(
        encode_result(&result),
        record,
        "accepted records round-trip"
    );
    let masked = weir_filters::mask(&text, &result.matches, '*');
    assert_eq!(masked.chars().count(), text.chars().count());
});
