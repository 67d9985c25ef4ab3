//! What a filter is asked to do: [`FilterSpec`] and its parts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::FilterError;
use crate::engine::MAX_MEMORY_LIMIT;

/// What happens to content in which a dictionary word matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse the content, naming the word's category (never the word).
    Block,
    /// Replace every matched character with this one, character for
    /// character, so the text stays valid UTF-8 of the same length in chars.
    Mask(char),
}

/// What happens to content when the filter itself fails (trap, fuel,
/// memory, garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The content passes unfiltered; the failure is reported.
    FailOpen,
    /// The content is refused (HTTP 503, or the stream ends with an error).
    FailClosed,
}

/// Traditional-to-simplified Chinese folding ([`Folds::traditional`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Traditional {
    /// On when some dictionary word has a Han character.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Which characters between two characters of a word are skipped
/// ([`Folds::separators`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Separators {
    /// None: a word's characters must be adjacent (but for hidden ones).
    #[default]
    None,
    /// Whitespace.
    Whitespace,
    /// Punctuation (Unicode general category P*).
    Punctuation,
    /// Both.
    WhitespaceAndPunctuation,
}

impl Separators {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Whitespace => "whitespace",
            Self::Punctuation => "punctuation",
            Self::WhitespaceAndPunctuation => "whitespace+punctuation",
        }
    }
}

/// Most separators in a row between two characters of a word.
pub const MAX_GAP: u16 = 16;

/// Hidden (default-ignorable) characters between two characters of a word
/// that a stream's hold-back makes room for; more may still split a word
/// across two chunks unseen.
pub const HOLDBACK_HIDDEN_PER_GAP: usize = 8;

/// How the bundled `sensitive-words` module folds text (and its words)
/// before matching, so that disguised words are found: each character maps
/// to zero or one folded character, and a match masks exactly the original
/// characters of the word, hidden ones between them included. The
/// defaults are all on but `separators`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folds {
    /// Drop `Default_Ignorable_Code_Point`s (zero-width spaces and joiners,
    /// soft hyphens, BOMs, variation selectors, ...).
    pub ignorables: bool,
    /// NFKC compatibility and width folding (full-width forms,
    /// mathematical alphanumerics, circled letters, ...).
    pub width: bool,
    /// Case folding.
    pub case: bool,
    /// Look-alikes to their UTS #39 confusable skeleton (Cyrillic `е` to
    /// `e`, `0` to `o`, ...).
    pub confusables: bool,
    /// Traditional Chinese characters to simplified ones.
    pub traditional: Traditional,
    /// Separators skipped between a word's characters.
    pub separators: Separators,
    /// Most separators in a row (0-[`MAX_GAP`]).
    pub max_gap: u16,
}

impl Default for Folds {
    fn default() -> Self {
        Self {
            ignorables: true,
            width: true,
            case: true,
            confusables: true,
            traditional: Traditional::Auto,
            separators: Separators::None,
            max_gap: 2,
        }
    }
}

impl Folds {
    /// No folding at all: words match byte for byte.
    pub const NONE: Self = Self {
        ignorables: false,
        width: false,
        case: false,
        confusables: false,
        traditional: Traditional::Off,
        separators: Separators::None,
        max_gap: 0,
    };

    /// The option lines of the `weir_init` configuration.
    fn lines(&self) -> Vec<String> {
        let flag = |on: bool| if on { "on" } else { "off" };
        vec![
            format!("ignorables={}", flag(self.ignorables)),
            format!("width={}", flag(self.width)),
            format!("case={}", flag(self.case)),
            format!("confusables={}", flag(self.confusables)),
            format!(
                "traditional={}",
                match self.traditional {
                    Traditional::Auto => "auto",
                    Traditional::On => "on",
                    Traditional::Off => "off",
                }
            ),
            format!("separators={}", self.separators.as_str()),
            format!("max_gap={}", self.max_gap),
        ]
    }

    /// Bytes a stream may hold back for a word of `chars` characters: each
    /// character (up to 4 bytes) and, after each, a run of separators and
    /// hidden characters.
    fn holdback(&self, chars: usize) -> usize {
        let gap = if self.separators == Separators::None {
            0
        } else {
            usize::from(self.max_gap)
        };
        let hidden = if self.ignorables {
            HOLDBACK_HIDDEN_PER_GAP
        } else {
            0
        };
        chars.saturating_mul(4 + 4 * (gap + hidden))
    }
}

/// CPU budget of filter calls, in wasmtime fuel (about one unit per Wasm
/// instruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuelBudget {
    /// Budget of the one `weir_init` call at load time.
    pub init: u64,
    /// Fixed part of the budget of one scan.
    pub base: u64,
    /// Budget added per byte of scanned text.
    pub per_byte: u64,
}

impl FuelBudget {
    /// The budget of one scan of `len` bytes.
    pub fn for_scan(&self, len: usize) -> u64 {
        self.base
            .saturating_add(self.per_byte.saturating_mul(len as u64))
    }
}

impl Default for FuelBudget {
    /// About 10x what the bundled sensitive-word filter was measured to
    /// need: `weir_init` of 20k words took under 10^9, a scan under 200 per
    /// byte (mixed Chinese/English text, 1k words).
    fn default() -> Self {
        Self {
            init: 10_000_000_000,
            base: 5_000_000,
            per_byte: 2_000,
        }
    }
}

/// Everything needed to load one filter.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    /// The filter's name (metric label `filter`).
    pub name: String,
    /// The dictionary: `(word, category)` pairs.
    pub words: Vec<(String, String)>,
    /// What to do on a match.
    pub action: Action,
    /// What to do when the filter fails.
    pub policy: Policy,
    /// CPU budget.
    pub fuel: FuelBudget,
    /// Cap on the filter's linear memory, in bytes.
    pub memory_limit: usize,
    /// Folding options sent to the module (the bundled `sensitive-words`
    /// takes them); `None` sends none (a module of one's own; the bundled
    /// one then folds with [`Folds::default`]).
    pub folds: Option<Folds>,
}

/// Default memory cap of a filter instance. The initialised memory of the
/// bundled filter is about 6 MiB for 1k words and 11 MiB for 2k (searched
/// with a DFA up to 16 KiB of folded words), 6 MiB for 3k words (a
/// contiguous NFA beyond) and 24-33 MiB for 20k words (the automaton's
/// construction peak).
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

impl FilterSpec {
    /// A spec with the defaults: mask with `*`, fail closed, the default
    /// fuel budget and a 64 MiB memory cap.
    pub fn new(name: impl Into<String>, words: Vec<(String, String)>) -> Self {
        Self {
            name: name.into(),
            words,
            action: Action::Mask('*'),
            policy: Policy::FailClosed,
            fuel: FuelBudget::default(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            folds: None,
        }
    }

    /// Sets the folding options (for the bundled `sensitive-words` module).
    pub fn with_folds(mut self, folds: Folds) -> Self {
        self.folds = Some(folds);
        self
    }

    /// Sets the action.
    pub fn with_action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// Sets the failure policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the fuel budget.
    pub fn with_fuel(mut self, fuel: FuelBudget) -> Self {
        self.fuel = fuel;
        self
    }

    /// Sets the memory cap in bytes.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Checks the spec, reporting every problem at once, and derives the
    /// category table and the `weir_init` configuration.
    pub(crate) fn prepare(&self) -> Result<Prepared, FilterError> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("name: must not be empty".to_owned());
        }
        if self.words.is_empty() {
            problems.push("words: must not be empty".to_owned());
        }
        if self.memory_limit > MAX_MEMORY_LIMIT {
            problems.push(format!(
                "memory_limit: {} is above the maximum {MAX_MEMORY_LIMIT}",
                self.memory_limit
            ));
        }
        if let Some(f) = &self.folds
            && f.max_gap > MAX_GAP
        {
            problems.push(format!("folds.max_gap: {} is above {MAX_GAP}", f.max_gap));
        }
        if self.fuel.init == 0 || self.fuel.base == 0 {
            problems.push("fuel: init and base must be > 0".to_owned());
        }
        if let Action::Mask(c) = self.action
            && c.is_control()
        {
            problems.push(format!(
                "action: mask character {c:?} is a control character"
            ));
        }
        let mut index: BTreeMap<&str, u32> = BTreeMap::new();
        let mut categories: Vec<Arc<str>> = Vec::new();
        let mut lines = Vec::with_capacity(self.words.len());
        let mut longest_chars = 0;
        for (i, (word, category)) in self.words.iter().enumerate() {
            if word.trim().is_empty() || word.contains(['\n', '\t', '\r']) {
                problems.push(format!(
                    "words[{i}]: must be non-blank without tabs or line breaks"
                ));
                continue;
            }
            if category.trim().is_empty() {
                problems.push(format!("words[{i}].category: must not be empty"));
                continue;
            }
            let next = categories.len() as u32;
            let id = *index.entry(category.as_str()).or_insert_with(|| {
                categories.push(Arc::from(category.as_str()));
                next
            });
            longest_chars = longest_chars.max(word.chars().count());
            lines.push((word.as_str(), id));
        }
        if !problems.is_empty() {
            return Err(FilterError::Spec(problems.join("; ")));
        }
        let probe = lines
            .iter()
            .take(16)
            .map(|(word, _)| *word)
            .collect::<Vec<_>>()
            .join(" ");
        let options = self.folds.map(|f| f.lines()).unwrap_or_default();
        Ok(Prepared {
            config: crate::abi::encode_config(&options, lines),
            categories,
            // A character of text may be up to 4 bytes whatever the word's
            // own encoding (full-width forms fold to ASCII, for one), and
            // hidden characters and separators may sit between two.
            max_holdback: self.folds.unwrap_or_default().holdback(longest_chars),
            probe,
        })
    }
}

/// A checked spec, ready for loading.
pub(crate) struct Prepared {
    pub(crate) config: Vec<u8>,
    pub(crate) categories: Vec<Arc<str>>,
    pub(crate) max_holdback: usize,
    /// Text scanned once by the init instance and once by a restored one at
    /// load time; the results must agree.
    pub(crate) probe: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn words(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(w, c)| (w.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn categories_numbered_by_first_use() {
        let spec = FilterSpec::new("f", words(&[("a", "x"), ("b", "y"), ("c", "x")]));
        let prepared = spec.prepare().unwrap();
        assert_eq!(prepared.categories.len(), 2);
        assert_eq!(prepared.config, b"0\ta\n1\tb\n0\tc\n");
    }

    #[test]
    fn reports_every_problem() {
        let spec =
            FilterSpec::new("", words(&[("a\tb", "x"), ("ok", "")])).with_memory_limit(usize::MAX);
        let error = spec.prepare().err().unwrap();
        assert_eq!(error.kind(), "spec");
        let message = error.to_string();
        for part in ["name", "memory_limit", "words[0]", "words[1].category"] {
            assert!(message.contains(part), "{message}");
        }
    }
}
