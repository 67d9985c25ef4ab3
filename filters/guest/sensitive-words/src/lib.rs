//! Weir sensitive-word filter: a Wasm guest implementing the Weir filter
//! ABI v1 (see `docs/filters-abi.md` in the Weir repository).
//!
//! The dictionary is matched with Aho-Corasick (leftmost-longest) over a
//! *folded* copy of the text, in which each character of the original maps
//! to zero or one folded character ([`fold`]); matches are reported as byte
//! spans of the original text, and a span covers the hidden characters
//! inside a disguised word. The folds, each an option (`!name=value` lines
//! before the words; [`Options`]):
//!
//! - `ignorables`: `Default_Ignorable_Code_Point`s (zero-width spaces and
//!   joiners, soft hyphens, BOMs, variation selectors, ...) are dropped;
//! - `width`: NFKC compatibility and width folding (full-width forms,
//!   mathematical alphanumerics, circled letters, ...);
//! - `case`: lowercase;
//! - `confusables`: look-alikes to their UTS #39 skeleton (Cyrillic `е` to
//!   `e`, `0` to `o`);
//! - `traditional`: traditional Chinese characters to simplified ones;
//! - `separators` (off by default): whitespace and/or punctuation between
//!   two characters of a word are skipped, at most `max_gap` in a row.
//!
//! Words are folded alike when the dictionary loads. A text character is
//! only folded when its folded form occurs in some word (otherwise folding
//! it cannot change a match), so text that needs no folding is searched in
//! place. The tables come from Unicode data at build time (`build.rs`).
//!
//! All state lives in linear memory (a `thread_local!`, which on this
//! single-threaded target is a plain static), so the host may snapshot the
//! memory after `weir_init` and start every call from that snapshot.

#![deny(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};

mod tables {
    include!(concat!(env!("OUT_DIR"), "/tables.rs"));
}

/// The ABI version this guest implements.
const ABI_VERSION: i32 = 1;

/// `weir_init` error: the buffer is not the one handed out by `weir_alloc`.
const E_BUFFER: i32 = -1;
/// `weir_init`/`weir_scan` error: the bytes are not UTF-8.
const E_UTF8: i32 = -2;
/// `weir_init` error: a line is not `<category>\t<word>` (or the word is
/// only characters that fold away).
const E_LINE: i32 = -3;
/// `weir_init` error: the dictionary is empty.
const E_EMPTY: i32 = -4;
/// `weir_init` error: the automaton could not be built.
const E_BUILD: i32 = -5;
/// `weir_scan` error: `weir_init` has not succeeded.
const E_UNINIT: i32 = -6;
/// `weir_init` error: an option line is not `!name=value` with a known
/// name and value.
const E_OPTION: i32 = -7;

/// Dictionaries of at most this many bytes (after folding) are searched
/// with a DFA; larger ones with aho-corasick's own choice (a contiguous
/// NFA), so that memory stays bounded.
const DFA_MAX_WORD_BYTES: usize = 16 << 10;

/// Largest `max_gap`.
pub const MAX_GAP: u16 = 16;

/// A text character's fold: [`HIDDEN`] and [`SEPARATOR`] drop it, any
/// other value is the folded character.
const HIDDEN: u32 = u32::MAX;
/// A separator between word characters (dropped, counted against
/// `max_gap`).
const SEPARATOR: u32 = u32::MAX - 1;
/// An ASCII byte's separator mark in [`Folder::ascii`].
const ASCII_SEPARATOR: u8 = 0xFF;

/// Which folds apply. Defaults: all on but `separators`; `traditional`
/// on when some word has a Han character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Drop `Default_Ignorable_Code_Point`s.
    pub ignorables: bool,
    /// NFKC compatibility and width folding.
    pub width: bool,
    /// Lowercase.
    pub case: bool,
    /// UTS #39 confusable skeleton (one-character prototypes).
    pub confusables: bool,
    /// Traditional to simplified Chinese; `None`: when a word has Han.
    pub traditional: Option<bool>,
    /// Skip whitespace between word characters.
    pub whitespace: bool,
    /// Skip punctuation between word characters.
    pub punctuation: bool,
    /// Most separators in a row between two word characters.
    pub max_gap: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ignorables: true,
            width: true,
            case: true,
            confusables: true,
            traditional: None,
            whitespace: false,
            punctuation: false,
            max_gap: 2,
        }
    }
}

impl Options {
    /// Applies one `name=value` option line (without the `!`).
    fn set(&mut self, line: &str) -> Result<(), i32> {
        let (name, value) = line.split_once('=').ok_or(E_OPTION)?;
        let flag = || match value {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(E_OPTION),
        };
        match name {
            "ignorables" => self.ignorables = flag()?,
            "width" => self.width = flag()?,
            "case" => self.case = flag()?,
            "confusables" => self.confusables = flag()?,
            "traditional" => {
                self.traditional = match value {
                    "auto" => None,
                    _ => Some(flag()?),
                }
            }
            "separators" => {
                (self.whitespace, self.punctuation) = match value {
                    "none" => (false, false),
                    "whitespace" => (true, false),
                    "punctuation" => (false, true),
                    "whitespace+punctuation" => (true, true),
                    _ => return Err(E_OPTION),
                }
            }
            "max_gap" => {
                self.max_gap = value
                    .parse()
                    .ok()
                    .filter(|&n| n <= MAX_GAP)
                    .ok_or(E_OPTION)?;
            }
            _ => return Err(E_OPTION),
        }
        Ok(())
    }

    fn separators(&self) -> bool {
        self.whitespace || self.punctuation
    }
}

/// The folding of text characters for one dictionary.
pub struct Folder {
    options: Options,
    /// Traditional to simplified, as decided for this dictionary.
    traditional: bool,
    /// Each ASCII byte's fold: itself, another ASCII byte, or
    /// [`ASCII_SEPARATOR`].
    ascii: [u8; 128],
    /// One bit per code point: whether it has an entry in `map`.
    marks: Vec<u64>,
    /// Non-ASCII characters that fold, sorted: `(code point, fold)`.
    map: Vec<(u32, u32)>,
}

/// After a folded character whose encoding changed length, or after
/// dropped characters: where the folded and the original offsets stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shift {
    /// Folded offset.
    at: u32,
    /// Original minus folded offset at the end of the character before
    /// `at` (before any dropped characters).
    end: i32,
    /// Original minus folded offset of the character that starts at `at`
    /// (after the dropped ones).
    start: i32,
    /// Separators dropped at `at`.
    separators: u16,
}

/// Where folded offsets map back to original ones: sorted [`Shift`]s;
/// before the first, offsets are the same.
#[derive(Debug, Default)]
pub struct Shifts(Vec<Shift>);

impl Shifts {
    fn clear(&mut self) {
        self.0.clear();
    }

    fn last_delta(&self) -> i32 {
        self.0.last().map_or(0, |s| s.start)
    }

    /// A folded character of another length ends at `at`, `original` in
    /// the original.
    fn changed(&mut self, at: usize, original: usize) {
        let delta = original as i32 - at as i32;
        self.0.push(Shift {
            at: at as u32,
            end: delta,
            start: delta,
            separators: 0,
        });
    }

    /// A character ending at `original` was dropped at folded `at`.
    fn dropped(&mut self, at: usize, original: usize, separator: bool) {
        let delta = original as i32 - at as i32;
        let add = u16::from(separator);
        match self.0.last_mut() {
            Some(s) if s.at as usize == at => {
                s.start = delta;
                s.separators = s.separators.saturating_add(add);
            }
            _ => {
                let end = self.last_delta();
                self.0.push(Shift {
                    at: at as u32,
                    end,
                    start: delta,
                    separators: add,
                });
            }
        }
    }

    fn last_at_or_before(&self, at: usize) -> Option<&Shift> {
        let i = self.0.partition_point(|s| s.at as usize <= at);
        i.checked_sub(1).map(|i| &self.0[i])
    }

    /// The original offset where the character at folded `at` starts.
    pub fn start(&self, at: usize) -> usize {
        let delta = self.last_at_or_before(at).map_or(0, |s| s.start);
        (at as i64 + i64::from(delta)) as usize
    }

    /// The original offset where the character before folded `at` ends.
    pub fn end(&self, at: usize) -> usize {
        let delta = self
            .last_at_or_before(at)
            .map_or(0, |s| if s.at as usize == at { s.end } else { s.start });
        (at as i64 + i64::from(delta)) as usize
    }

    /// Whether no run of separators strictly inside folded `start..end`
    /// is longer than `max_gap`.
    fn gaps_within(&self, start: usize, end: usize, max_gap: u16) -> bool {
        let from = self.0.partition_point(|s| s.at as usize <= start);
        self.0[from..]
            .iter()
            .take_while(|s| (s.at as usize) < end)
            .all(|s| s.separators <= max_gap)
    }
}

fn lookup(table: &[(u32, u32)], c: char) -> char {
    match table.binary_search_by_key(&(c as u32), |&(from, _)| from) {
        Ok(i) => char::from_u32(table[i].1).unwrap_or(c),
        Err(_) => c,
    }
}

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let cp = c as u32;
    let i = ranges.partition_point(|&(start, _)| start <= cp);
    i > 0 && ranges[i - 1].1 >= cp
}

fn lower(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else {
        lookup(tables::LOWER, c)
    }
}

/// Whether `c` is a Han ideograph (the CJK Unified Ideographs blocks and
/// the compatibility ideographs).
fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F)
}

/// Whether `c` is a `Default_Ignorable_Code_Point`.
pub fn is_ignorable(c: char) -> bool {
    in_ranges(tables::IGNORABLE, c)
}

/// The fold of one character under `options` with `traditional` decided:
/// the folds in turn (case, width, case, confusables, case, traditional)
/// until nothing changes. Dropping is not decided here.
pub fn fold(options: &Options, traditional: bool, c: char) -> char {
    let mut x = c;
    for _ in 0..4 {
        let before = x;
        if options.case {
            x = lower(x);
        }
        if options.width {
            x = lookup(tables::COMPAT, x);
            if options.case {
                x = lower(x);
            }
        }
        if options.confusables {
            x = lookup(tables::CONFUSABLE, x);
            if options.case {
                x = lower(x);
            }
        }
        if traditional {
            x = lookup(tables::T2S, x);
        }
        if x == before {
            break;
        }
    }
    x
}

impl Folder {
    /// The folder of a dictionary: `words` are folded in place (dropped
    /// characters removed); text characters fold only when their fold is
    /// in some word. `None` when a word folds to nothing.
    pub fn new(options: Options, words: &mut [String]) -> Option<Self> {
        let traditional = options
            .traditional
            .unwrap_or_else(|| words.iter().any(|w| w.chars().any(is_han)));
        for word in words.iter_mut() {
            *word = word
                .chars()
                .filter(|&c| !(options.ignorables && is_ignorable(c)))
                .map(|c| fold(&options, traditional, c))
                .collect();
            if word.is_empty() {
                return None;
            }
        }
        let in_words: BTreeSet<char> = words.iter().flat_map(|w| w.chars()).collect();
        let separator = |c: char| {
            !in_words.contains(&c)
                && ((options.whitespace && c.is_whitespace())
                    || (options.punctuation && in_ranges(tables::PUNCTUATION, c)))
        };
        let mut ascii = [0u8; 128];
        for (b, slot) in ascii.iter_mut().enumerate() {
            let c = char::from(b as u8);
            let f = fold(&options, traditional, c);
            *slot = if separator(c) {
                ASCII_SEPARATOR
            } else if f != c && f.is_ascii() && in_words.contains(&f) {
                f as u8
            } else {
                b as u8
            };
        }
        let mut map: Vec<(u32, u32)> = Vec::new();
        if options.ignorables {
            for &(start, end) in tables::IGNORABLE {
                for cp in start..=end {
                    if char::from_u32(cp).is_some_and(|c| !in_words.contains(&c)) {
                        map.push((cp, HIDDEN));
                    }
                }
            }
        }
        let mut candidates: Vec<u32> = Vec::new();
        let mut take = |table: &[(u32, u32)]| candidates.extend(table.iter().map(|&(c, _)| c));
        if options.case {
            take(tables::LOWER);
        }
        if options.width {
            take(tables::COMPAT);
        }
        if options.confusables {
            take(tables::CONFUSABLE);
        }
        if traditional {
            take(tables::T2S);
        }
        for c in candidates.into_iter().filter_map(char::from_u32) {
            if c.is_ascii() {
                continue;
            }
            let f = fold(&options, traditional, c);
            if f != c && in_words.contains(&f) {
                map.push((c as u32, f as u32));
            }
        }
        if options.separators() {
            let mut add = |c: char| {
                if !c.is_ascii() && separator(c) {
                    map.push((c as u32, SEPARATOR));
                }
            };
            if options.punctuation {
                for &(start, end) in tables::PUNCTUATION {
                    (start..=end).filter_map(char::from_u32).for_each(&mut add);
                }
            }
            if options.whitespace {
                (0x80..0x3001).filter_map(char::from_u32).for_each(&mut add);
            }
        }
        // One entry per code point: dropping wins over folding.
        map.sort_by_key(|&(c, fold)| (c, std::cmp::Reverse(fold)));
        map.dedup_by_key(|&mut (c, _)| c);
        let mut marks = vec![0u64; 0x110000 / 64];
        for &(c, _) in &map {
            marks[(c / 64) as usize] |= 1 << (c % 64);
        }
        Some(Self {
            options,
            traditional,
            ascii,
            marks,
            map,
        })
    }

    /// Whether traditional characters fold to simplified ones.
    pub fn traditional(&self) -> bool {
        self.traditional
    }

    /// The fold of non-ASCII `cp`, when it has one.
    #[inline(always)]
    fn mapped(&self, cp: u32) -> Option<u32> {
        let word = *self.marks.get((cp / 64) as usize)?;
        if word & (1 << (cp % 64)) == 0 {
            return None;
        }
        self.map
            .binary_search_by_key(&cp, |&(c, _)| c)
            .ok()
            .map(|i| self.map[i].1)
    }

    /// Folds `text` into `out` if any character folds, recording in
    /// `shifts` how offsets map back. Returns whether it did; if not,
    /// search `text` itself.
    pub fn normalise(&self, text: &str, out: &mut Vec<u8>, shifts: &mut Shifts) -> bool {
        shifts.clear();
        let bytes = text.as_bytes();
        let mut at = 0;
        while let Some(&byte) = bytes.get(at) {
            if byte < 0x80 {
                if self.ascii[usize::from(byte)] != byte {
                    break;
                }
                at += 1;
                continue;
            }
            let (cp, width) = decode(bytes, at);
            if self.mapped(cp).is_some() {
                break;
            }
            at += width;
        }
        if at >= bytes.len() {
            return false;
        }
        out.clear();
        out.reserve(text.len());
        out.extend_from_slice(&bytes[..at]);
        while let Some(&byte) = bytes.get(at) {
            if byte < 0x80 {
                match self.ascii[usize::from(byte)] {
                    ASCII_SEPARATOR => shifts.dropped(out.len(), at + 1, true),
                    folded => out.push(folded),
                }
                at += 1;
                continue;
            }
            let (cp, width) = decode(bytes, at);
            let end = at + width;
            match self.mapped(cp) {
                None => out.extend_from_slice(&bytes[at..end]),
                Some(HIDDEN) => shifts.dropped(out.len(), end, false),
                Some(SEPARATOR) => shifts.dropped(out.len(), end, true),
                Some(f) => {
                    let c = char::from_u32(f).unwrap_or(char::REPLACEMENT_CHARACTER);
                    let mut buffer = [0; 4];
                    let encoded = c.encode_utf8(&mut buffer).as_bytes();
                    out.extend_from_slice(encoded);
                    if encoded.len() != width {
                        shifts.changed(out.len(), end);
                    }
                }
            }
            at = end;
        }
        true
    }
}

/// The code point and width of the UTF-8 character at `at` (valid UTF-8).
#[inline(always)]
fn decode(bytes: &[u8], at: usize) -> (u32, usize) {
    let b0 = u32::from(bytes[at]);
    let cont = |i: usize| u32::from(bytes.get(at + i).copied().unwrap_or(0x80) & 0x3F);
    match b0 {
        0xF0.. => (
            ((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        ),
        0xE0.. => (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3),
        0xC0.. => (((b0 & 0x1F) << 6) | cont(1), 2),
        _ => (b0, 1),
    }
}

struct Dictionary {
    automaton: AhoCorasick,
    folder: Folder,
    /// Category index of each pattern, by pattern id.
    categories: Vec<u32>,
    /// Sorted hashes of every proper prefix (on a char boundary) of every
    /// folded word. A collision only makes a stream hold back a little more.
    prefixes: Vec<u64>,
    /// Length in bytes of the longest proper prefix.
    longest_prefix: usize,
}

struct State {
    dictionary: Option<Dictionary>,
    /// The buffer `weir_alloc` hands out; the host writes into it.
    input: Vec<u8>,
    /// Folded copy of the text being scanned, when it needs one.
    normalised: Vec<u8>,
    /// How the folded copy's offsets map back.
    shifts: Shifts,
    /// The result record of the last `weir_scan`.
    result: Vec<u8>,
}

impl State {
    const fn new() -> Self {
        Self {
            dictionary: None,
            input: Vec::new(),
            normalised: Vec::new(),
            shifts: Shifts(Vec::new()),
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

/// Loads the configuration: option lines `"!<name>=<value>\n"`, then
/// dictionary lines `"<category_index>\t<word>\n"` (UTF-8). Returns 0 or a
/// negative error code.
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
        dictionary.scan(text, normalised, shifts, result);
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

/// One match: original byte offsets and the word's category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Start, in bytes of the original text.
    pub start: usize,
    /// End, in bytes of the original text.
    pub end: usize,
    /// Category index.
    pub category: u32,
}

impl Dictionary {
    fn parse(config: &str) -> Result<Self, i32> {
        let mut options = Options::default();
        let mut words = Vec::new();
        let mut categories = Vec::new();
        for line in config.split('\n').filter(|line| !line.is_empty()) {
            if let Some(option) = line.strip_prefix('!') {
                if !words.is_empty() {
                    return Err(E_OPTION);
                }
                options.set(option)?;
                continue;
            }
            let (category, word) = line.split_once('\t').ok_or(E_LINE)?;
            let category: u32 = category.parse().map_err(|_| E_LINE)?;
            if word.is_empty() {
                return Err(E_LINE);
            }
            words.push(word.to_owned());
            categories.push(category);
        }
        if words.is_empty() {
            return Err(E_EMPTY);
        }
        let folder = Folder::new(options, &mut words).ok_or(E_LINE)?;
        let mut prefixes = Vec::new();
        let mut longest_prefix = 0;
        for word in &words {
            for (end, _) in word.char_indices().skip(1) {
                prefixes.push(fnv1a(&word.as_bytes()[..end]));
                longest_prefix = longest_prefix.max(end);
            }
        }
        prefixes.sort_unstable();
        prefixes.dedup();
        // A DFA (one table lookup per byte) while it stays small: about
        // states x byte classes x 4 bytes, states at most the words' bytes.
        let bytes: usize = words.iter().map(String::len).sum();
        let kind = (bytes <= DFA_MAX_WORD_BYTES).then_some(AhoCorasickKind::DFA);
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(kind)
            .build(&words)
            .map_err(|_| E_BUILD)?;
        Ok(Self {
            automaton,
            folder,
            categories,
            prefixes,
            longest_prefix,
        })
    }

    /// The matches in `text` and where a stream must hold back from.
    fn find(
        &self,
        text: &str,
        normalised: &mut Vec<u8>,
        shifts: &mut Shifts,
    ) -> (Vec<Found>, usize) {
        let mut found = Vec::new();
        let holdback = self.each_match(text, normalised, shifts, |f| found.push(f));
        (found, holdback)
    }

    /// Calls `each` for every match of `text` in order; returns the
    /// hold-back start (original offset).
    fn each_match(
        &self,
        text: &str,
        normalised: &mut Vec<u8>,
        shifts: &mut Shifts,
        mut each: impl FnMut(Found),
    ) -> usize {
        let folded = self.folder.normalise(text, normalised, shifts);
        let haystack = if folded {
            normalised.as_slice()
        } else {
            text.as_bytes()
        };
        let category = |id: usize| self.categories.get(id).copied().unwrap_or(0);
        let options = &self.folder.options;
        if folded && options.separators() {
            // A match whose separator runs are too long is no match: look
            // again from its next character.
            let mut at = 0;
            while let Some(m) = self
                .automaton
                .find(Input::new(haystack).span(at..haystack.len()))
            {
                if shifts.gaps_within(m.start(), m.end(), options.max_gap) {
                    each(Found {
                        start: shifts.start(m.start()),
                        end: shifts.end(m.end()),
                        category: category(m.pattern().as_usize()),
                    });
                    at = m.end();
                } else {
                    at = m.start() + 1;
                    while at < haystack.len() && is_continuation(haystack[at]) {
                        at += 1;
                    }
                }
            }
        } else {
            for m in self.automaton.find_iter(haystack) {
                let (start, end) = if folded {
                    (shifts.start(m.start()), shifts.end(m.end()))
                } else {
                    (m.start(), m.end())
                };
                each(Found {
                    start,
                    end,
                    category: category(m.pattern().as_usize()),
                });
            }
        }
        let holdback = self.holdback(haystack);
        if folded {
            shifts.start(holdback)
        } else {
            holdback
        }
    }

    /// Writes the result record for `text` into `result`.
    fn scan(
        &self,
        text: &str,
        normalised: &mut Vec<u8>,
        shifts: &mut Shifts,
        result: &mut Vec<u8>,
    ) {
        result.clear();
        result.extend_from_slice(&[0; 8]);
        let mut count: u32 = 0;
        let holdback = self.each_match(text, normalised, shifts, |f| {
            for value in [f.start as u32, f.end as u32, f.category] {
                result.extend_from_slice(&value.to_le_bytes());
            }
            count += 1;
        });
        result[0..4].copy_from_slice(&count.to_le_bytes());
        result[4..8].copy_from_slice(&(holdback as u32).to_le_bytes());
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

/// The matches of `words` (with `options` lines, e.g. `"separators=whitespace"`)
/// in `text`, and the hold-back start: the guest's whole scan, natively, for
/// tests and fuzzing. `Err` is a `weir_init` error code.
pub fn find(options: &[&str], words: &[&str], text: &str) -> Result<(Vec<Found>, usize), i32> {
    let mut config = String::new();
    for o in options {
        config.push('!');
        config.push_str(o);
        config.push('\n');
    }
    for w in words {
        config.push_str("0\t");
        config.push_str(w);
        config.push('\n');
    }
    let dictionary = Dictionary::parse(&config)?;
    Ok(dictionary.find(text, &mut Vec::new(), &mut Shifts::default()))
}

#[cfg(test)]
mod tests;
