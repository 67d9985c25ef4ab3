//! The filter ABI, version 1: export names, the configuration encoding and
//! the decoding of a scan's result record. `docs/filters-abi.md` is the
//! reference for guest authors; this module is the host's side of it.
//!
//! Everything a guest returns is untrusted: [`decode_result`] checks every
//! field and never panics, whatever the bytes.

use std::fmt::Write as _;

/// The ABI version a guest must report from `weir_abi_version`.
pub const ABI_VERSION: i32 = 1;
/// The guest's exported linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// `weir_abi_version() -> i32`.
pub const EXPORT_ABI_VERSION: &str = "weir_abi_version";
/// `weir_alloc(len: i32) -> i32`.
pub const EXPORT_ALLOC: &str = "weir_alloc";
/// `weir_init(ptr: i32, len: i32) -> i32`.
pub const EXPORT_INIT: &str = "weir_init";
/// `weir_scan(ptr: i32, len: i32) -> i64`.
pub const EXPORT_SCAN: &str = "weir_scan";

/// Size of the result record's header (`count`, `holdback_start`).
pub const HEADER_LEN: usize = 8;
/// Size of one match entry (`start`, `end`, `category`).
pub const ENTRY_LEN: usize = 12;

/// One dictionary match, as byte offsets into the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Match {
    /// Offset of the first byte of the match (a char boundary).
    pub start: usize,
    /// Offset one past the last byte of the match (a char boundary).
    pub end: usize,
    /// Index of the match's category in the filter's category list.
    pub category: u32,
}

/// The decoded, validated result of one `weir_scan`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Matches in increasing, non-overlapping order.
    pub matches: Vec<Match>,
    /// Offset from which the text's tail could still be the beginning of a
    /// dictionary word; the text's length when nothing needs holding.
    pub holdback_start: usize,
}

/// Encodes the `weir_init` configuration: option lines `!name=value`, then
/// `category_index<TAB>word` lines.
pub fn encode_config<'a>(
    options: &[String],
    words: impl IntoIterator<Item = (&'a str, u32)>,
) -> Vec<u8> {
    let mut config = String::new();
    for option in options {
        // Writing to a String cannot fail.
        let _ = writeln!(config, "!{option}");
    }
    for (word, category) in words {
        let _ = writeln!(config, "{category}\t{word}");
    }
    config.into_bytes()
}

/// Splits `weir_scan`'s return value into the record's `(ptr, len)`, or the
/// guest's negative status code.
pub fn split_scan_return(value: i64) -> Result<(u32, u32), i64> {
    if value < 0 {
        return Err(value);
    }
    Ok(((value >> 32) as u32, value as u32))
}

/// The largest record a valid scan of `text_len` bytes can produce (every
/// match covers at least one byte).
pub fn max_record_len(text_len: usize) -> usize {
    HEADER_LEN.saturating_add(text_len.saturating_mul(ENTRY_LEN))
}

/// Decodes and validates a result record for a scan of `text` by a filter
/// with `categories` categories. The error says what is wrong.
pub fn decode_result(record: &[u8], text: &str, categories: u32) -> Result<ScanResult, String> {
    if record.len() < HEADER_LEN {
        return Err(format!("record of {} bytes has no header", record.len()));
    }
    let count = read_u32(record, 0) as usize;
    let holdback_start = read_u32(record, 4) as usize;
    let entries = &record[HEADER_LEN..];
    if !entries.len().is_multiple_of(ENTRY_LEN) || entries.len() / ENTRY_LEN != count {
        return Err(format!(
            "record of {} bytes does not hold {count} matches",
            record.len()
        ));
    }
    check_offset(text, holdback_start, "holdback_start")?;
    let mut matches = Vec::with_capacity(count);
    let mut previous_end = 0;
    for entry in entries.chunks_exact(ENTRY_LEN) {
        let start = read_u32(entry, 0) as usize;
        let end = read_u32(entry, 4) as usize;
        let category = read_u32(entry, 8);
        if start >= end || start < previous_end {
            return Err(format!(
                "match {start}..{end} is empty, reversed or overlaps the previous one"
            ));
        }
        check_offset(text, start, "match start")?;
        check_offset(text, end, "match end")?;
        if category >= categories {
            return Err(format!(
                "category {category} out of range ({categories} categories)"
            ));
        }
        matches.push(Match {
            start,
            end,
            category,
        });
        previous_end = end;
    }
    Ok(ScanResult {
        matches,
        holdback_start,
    })
}

fn check_offset(text: &str, offset: usize, what: &str) -> Result<(), String> {
    if offset > text.len() {
        return Err(format!("{what} {offset} is past the end ({})", text.len()));
    }
    if !text.is_char_boundary(offset) {
        return Err(format!("{what} {offset} is inside a character"));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        word.copy_from_slice(src);
    }
    u32::from_le_bytes(word)
}

/// Encodes a result record (the guest's side; used by tests and fuzzing).
pub fn encode_result(result: &ScanResult) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + result.matches.len() * ENTRY_LEN);
    record.extend_from_slice(&(result.matches.len() as u32).to_le_bytes());
    record.extend_from_slice(&(result.holdback_start as u32).to_le_bytes());
    for m in &result.matches {
        for value in [m.start as u32, m.end as u32, m.category] {
            record.extend_from_slice(&value.to_le_bytes());
        }
    }
    record
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn round_trip() {
        let text = "ab你好cd";
        let result = ScanResult {
            matches: vec![
                Match {
                    start: 0,
                    end: 2,
                    category: 1,
                },
                Match {
                    start: 2,
                    end: 8,
                    category: 0,
                },
            ],
            holdback_start: 8,
        };
        assert_eq!(
            decode_result(&encode_result(&result), text, 2).unwrap(),
            result
        );
    }

    #[test]
    fn rejects_broken_records() {
        let text = "ab你好cd";
        let good = ScanResult {
            matches: vec![Match {
                start: 2,
                end: 5,
                category: 0,
            }],
            holdback_start: 10,
        };
        let record = encode_result(&good);
        assert!(decode_result(&record, text, 1).is_ok());
        assert!(decode_result(&record[..7], text, 1).is_err());
        assert!(decode_result(&record[..19], text, 1).is_err());
        // inside 你
        let mut inside = good.clone();
        inside.matches[0].end = 3;
        assert!(decode_result(&encode_result(&inside), text, 1).is_err());
        let mut past = good.clone();
        past.holdback_start = 11;
        assert!(decode_result(&encode_result(&past), text, 1).is_err());
        let mut category = good.clone();
        category.matches[0].category = 1;
        assert!(decode_result(&encode_result(&category), text, 1).is_err());
        let mut overlap = good.clone();
        overlap.matches.push(Match {
            start: 4,
            end: 8,
            category: 0,
        });
        assert!(decode_result(&encode_result(&overlap), text, 1).is_err());
        let mut empty = good;
        empty.matches[0].end = 2;
        assert!(decode_result(&encode_result(&empty), text, 1).is_err());
    }

    #[test]
    fn split_return() {
        assert_eq!(split_scan_return(-3), Err(-3));
        assert_eq!(split_scan_return((5 << 32) | 20), Ok((5, 20)));
        assert_eq!(split_scan_return(0xFFFF_FFFF), Ok((0, u32::MAX)));
    }
}
