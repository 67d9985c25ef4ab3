//! Weir sensitive-word filter: a Wasm guest implementing the Weir filter
//! ABI v1 (see `docs/filters-abi.md` in the Weir repository).
//!
//! The dictionary is matched with Aho-Corasick (leftmost-longest) over the
//! text with these foldings: ASCII to lowercase, full-width ASCII
//! (U+FF01..U+FF5E) and the ideographic space (U+3000) to their half-width
//! forms, and other characters to lowercase where Unicode maps them to a
//! single character. Words are folded alike. Matches are reported as byte
//! spans of the original text.
//!
//! Text that needs no folding (lowercase, CJK) is searched in place; else
//! a folded copy is made, with a map back to the original offsets. A full-width form or U+3000 is only folded when its half-width
//! form occurs in some word (otherwise folding it cannot change a match).
//!
//! All state lives in linear memory (a `thread_local!`, which on this
//! single-threaded target is a plain static), so the host may snapshot the
//! memory after `weir_init` and start every call from that snapshot.

#![deny(unsafe_code)]

use std::cell::RefCell;

use aho_corasick::{AhoCorasick, MatchKind};

/// The ABI version this guest implements.
const ABI_VERSION: i32 = 1;

/// `weir_init` error: the buffer is not the one handed out by `weir_alloc`.
const E_BUFFER: i32 = -1;
/// `weir_init`/`weir_scan` error: the bytes are not UTF-8.
const E_UTF8: i32 = -2;
/// `weir_init` error: a line is not `<category>\t<word>`.
const E_LINE: i32 = -3;
/// `weir_init` error: the dictionary is empty.
const E_EMPTY: i32 = -4;
/// `weir_init` error: the automaton could not be built.
const E_BUILD: i32 = -5;
/// `weir_scan` error: `weir_init` has not succeeded.
const E_UNINIT: i32 = -6;

struct Dictionary {
    automaton: AhoCorasick,
    /// Category index of each pattern, by pattern id.
    categories: Vec<u32>,
    /// Sorted hashes of every proper prefix (on a char boundary) of every
    /// folded word. A collision only makes a stream hold back a little more.
    prefixes: Vec<u64>,
    /// Length in bytes of the longest proper prefix.
    longest_prefix: usize,
    /// ASCII characters occurring in some folded word.
    used_ascii: [bool; 128],
}

struct State {
    dictionary: Option<Dictionary>,
    /// The buffer `weir_alloc` hands out; the host writes into it.
    input: Vec<u8>,
    /// Folded copy of the text being scanned, when it needs one.
    normalised: Vec<u8>,
    /// After each character whose normalised form has another length:
    /// `(normalised offset after it, original minus normalised offset)`.
    /// Offsets between entries shift alike; before the first, not at all.
    shifts: Vec<(u32, i32)>,
    /// The result record of the last `weir_scan`.
    result: Vec<u8>,
}

impl State {
    const fn new() -> Self {
        Self {
            dictionary: None,
            input: Vec::new(),
            normalised: Vec::new(),
            shifts: Vec::new(),
            result: Vec::new(),
        }
    }
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State::new()) };
}

/// Returns the ABI version (1).
#[expect(unsafe_code, reason = "an ABI export needs an unmangled symbol name")]
#[unsafe(no_mangle)]
pub extern "C" fn weir_abi_version() -> i32 {
    ABI_VERSION
}

/// Returns a guest buffer of `len` bytes for the host to write into, or 0.
/// The buffer stays valid until the next `weir_alloc`.
#[expect(unsafe_code, reason = "an ABI export needs an unmangled symbol name")]
#[unsafe(no_mangle)]
pub extern "C" fn weir_alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    STATE.with_borrow_mut(|state| {
        state.input.clear();
        state.input.resize(len, 0);
        // A real (non-dangling) address even for an empty buffer.
        state.input.reserve(1);
        state.input.as_mut_ptr() as usize as i32
    })
}

/// Loads the dictionary: UTF-8 lines `"<category_index>\t<word>\n"`.
/// Returns 0 or a negative error code.
#[expect(unsafe_code, reason = "an ABI export needs an unmangled symbol name")]
#[unsafe(no_mangle)]
pub extern "C" fn weir_init(ptr: i32, len: i32) -> i32 {
    STATE.with_borrow_mut(|state| {
        let Some(config) = input_slice(&state.input, ptr, len) else {
            return E_BUFFER;
        };
        let Ok(config) = std::str::from_utf8(config) else {
            return E_UTF8;
        };
        match Dictionary::parse(config) {
            Ok(dictionary) => {
                state.dictionary = Some(dictionary);
                // The config buffer is no longer needed: give its memory back.
                state.input = Vec::new();
                0
            }
            Err(code) => code,
        }
    })
}

/// Scans the text in the `weir_alloc` buffer. Returns a negative error code,
/// or `(ptr << 32) | len` of the result record:
/// `u32 count, u32 holdback_start, count × (u32 start, u32 end, u32 category)`,
/// all little-endian, offsets in bytes of the original text.
#[expect(unsafe_code, reason = "an ABI export needs an unmangled symbol name")]
#[unsafe(no_mangle)]
pub extern "C" fn weir_scan(ptr: i32, len: i32) -> i64 {
    STATE.with_borrow_mut(|state| {
        let State {
            dictionary,
            input,
            normalised,
            shifts,
            result,
        } = state;
        let Some(dictionary) = dictionary.as_ref() else {
            return i64::from(E_UNINIT);
        };
        let Some(text) = input_slice(input, ptr, len) else {
            return i64::from(E_BUFFER);
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return i64::from(E_UTF8);
        };
        let haystack = if dictionary.normalise(text, normalised, shifts) {
            normalised.as_slice()
        } else {
            text.as_bytes()
        };
        dictionary.scan(haystack, shifts, result);
        let address = result.as_ptr() as usize as u32;
        (i64::from(address) << 32) | result.len() as i64
    })
}

/// The first `len` bytes of the `weir_alloc` buffer, if `ptr` is its address.
fn input_slice(input: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let len = usize::try_from(len).ok()?;
    if ptr as u32 as usize != input.as_ptr() as usize {
        return None;
    }
    input.get(..len)
}

impl Dictionary {
    fn parse(config: &str) -> Result<Self, i32> {
        let mut words = Vec::new();
        let mut categories = Vec::new();
        for line in config.split('\n').filter(|line| !line.is_empty()) {
            let (category, word) = line.split_once('\t').ok_or(E_LINE)?;
            let category: u32 = category.parse().map_err(|_| E_LINE)?;
            if word.is_empty() {
                return Err(E_LINE);
            }
            words.push(word.chars().map(fold).collect::<String>());
            categories.push(category);
        }
        if words.is_empty() {
            return Err(E_EMPTY);
        }
        let mut used_ascii = [false; 128];
        let mut prefixes = Vec::new();
        let mut longest_prefix = 0;
        for word in &words {
            for byte in word.bytes().filter(u8::is_ascii) {
                used_ascii[usize::from(byte)] = true;
            }
            for (end, _) in word.char_indices().skip(1) {
                prefixes.push(fnv1a(&word.as_bytes()[..end]));
                longest_prefix = longest_prefix.max(end);
            }
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&words)
            .map_err(|_| E_BUILD)?;
        Ok(Self {
            automaton,
            categories,
            prefixes,
            longest_prefix,
            used_ascii,
        })
    }

    /// Writes the result record for `haystack` (the text, or its folded copy
    /// described by `shifts`) into `result`.
    fn scan(&self, haystack: &[u8], shifts: &[(u32, i32)], result: &mut Vec<u8>) {
        let original = |at: usize| original(shifts, at);
        result.clear();
        result.extend_from_slice(&[0; 8]);
        let mut count: u32 = 0;
        for found in self.automaton.find_iter(haystack) {
            let category = self
                .categories
                .get(found.pattern().as_usize())
                .copied()
                .unwrap_or(0);
            for value in [original(found.start()), original(found.end()), category] {
                result.extend_from_slice(&value.to_le_bytes());
            }
            count += 1;
        }
        let holdback = original(self.holdback(haystack));
        result[0..4].copy_from_slice(&count.to_le_bytes());
        result[4..8].copy_from_slice(&holdback.to_le_bytes());
    }

    /// Start of the longest suffix of `haystack` that is a proper prefix of
    /// some word; `haystack.len()` when there is none.
    fn holdback(&self, haystack: &[u8]) -> usize {
        let end = haystack.len();
        (end - self.longest_prefix.min(end)..end)
            .filter(|&start| !is_continuation(haystack[start]))
            .find(|&start| {
                self.prefixes
                    .binary_search(&fnv1a(&haystack[start..]))
                    .is_ok()
            })
            .unwrap_or(end)
    }

    /// The folding of a text character: [`fold`], except that full-width
    /// forms and U+3000 stay when their half-width form is in no word.
    fn fold_text(&self, c: char) -> char {
        let folded = fold(c);
        match c as u32 {
            0x3000 | 0xFF01..=0xFF5E if !self.used_ascii[(folded as usize) & 0x7F] => c,
            _ => folded,
        }
    }

    /// The next character of `text` at `at` that folds to something else:
    /// `Ok(at)`, or `Err(width)` of the unchanged character there.
    #[inline(always)]
    fn classify(&self, text: &str, at: usize) -> Result<usize, usize> {
        let bytes = text.as_bytes();
        let byte = bytes[at];
        if byte < 0x80 {
            return if byte.is_ascii_uppercase() {
                Ok(at)
            } else {
                Err(1)
            };
        }
        // U+3001..U+9FFF (CJK punctuation, kana, ideographs): no case.
        if (0xE3..=0xE9).contains(&byte)
            && !(byte == 0xE3
                && bytes.get(at + 1) == Some(&0x80)
                && bytes.get(at + 2) == Some(&0x80))
        {
            return Err(3);
        }
        // Full-width ASCII U+FF01..U+FF5E is EF BC 81..EF BD 9E.
        if let (0xEF, Some(&b1 @ (0xBC | 0xBD)), Some(&b2)) =
            (byte, bytes.get(at + 1), bytes.get(at + 2))
        {
            let half = 0x20 + (((u32::from(b1) & 0x03) << 6) | (u32::from(b2) & 0x3F));
            if (0x21..=0x7E).contains(&half) {
                let used = self.used_ascii[usize::from((half as u8).to_ascii_lowercase())];
                return if used { Ok(at) } else { Err(3) };
            }
        }
        let width = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            _ => 2,
        };
        match text.get(at..at + width).and_then(|s| s.chars().next()) {
            Some(c) if self.fold_text(c) != c => Ok(at),
            _ => Err(width),
        }
    }

    /// Folds `text` into `out` if any character changes, recording in
    /// `shifts` where characters changed length (see [`State::shifts`]).
    /// Returns whether it did; if not, search `text` itself.
    fn normalise(&self, text: &str, out: &mut Vec<u8>, shifts: &mut Vec<(u32, i32)>) -> bool {
        shifts.clear();
        let bytes = text.as_bytes();
        let mut at = 0;
        while let Some(&byte) = bytes.get(at) {
            if byte < 0x80 {
                if byte.is_ascii_uppercase() {
                    break;
                }
                at += 1;
                continue;
            }
            match self.classify(text, at) {
                Ok(_) => break,
                Err(width) => at += width,
            }
        }
        if at >= bytes.len() {
            return false;
        }
        out.clear();
        out.reserve(text.len());
        out.extend_from_slice(&bytes[..at]);
        while at < bytes.len() {
            if bytes[at] < 0x80 {
                let run = bytes[at..]
                    .iter()
                    .position(|&b| b >= 0x80)
                    .unwrap_or(bytes.len() - at);
                out.extend(bytes[at..at + run].iter().map(u8::to_ascii_lowercase));
                at += run;
                continue;
            }
            let width = match self.classify(text, at) {
                Err(width) => {
                    out.extend_from_slice(&bytes[at..(at + width).min(bytes.len())]);
                    at += width;
                    continue;
                }
                Ok(_) => match bytes[at] {
                    0xF0.. => 4,
                    0xE0.. => 3,
                    _ => 2,
                },
            };
            let Some(c) = text.get(at..at + width).and_then(|s| s.chars().next()) else {
                break;
            };
            let mut buffer = [0; 4];
            let encoded = self.fold_text(c).encode_utf8(&mut buffer).as_bytes();
            out.extend_from_slice(encoded);
            at += width;
            if encoded.len() != width {
                shifts.push((out.len() as u32, at as i32 - out.len() as i32));
            }
        }
        true
    }
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// The original offset of folded offset `at` (a character boundary).
fn original(shifts: &[(u32, i32)], at: usize) -> u32 {
    let before = shifts.partition_point(|&(position, _)| position as usize <= at);
    let shift = before.checked_sub(1).map_or(0, |i| shifts[i].1);
    (at as i64 + i64::from(shift)) as u32
}

/// The folding of one character (words are folded with it).
fn fold(c: char) -> char {
    match c as u32 {
        0..0x80 => c.to_ascii_lowercase(),
        0x3000 => ' ',
        0xFF01..=0xFF5E => {
            char::from_u32(c as u32 - 0xFEE0).map_or(c, |half| half.to_ascii_lowercase())
        }
        // CJK, kana, Hangul, Yi...: no case, skip the table lookup.
        0x2E80..=0xA63F | 0xAC00..=0xD7A3 => c,
        _ => {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(single), None) => single,
                _ => c,
            }
        }
    }
}
